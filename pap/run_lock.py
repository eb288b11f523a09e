"""One run per checkpoint directory: an exclusive lock held by rank 0 for the run's life.

Two runs on one `checkpoint.dir` interleave their checkpoints, metrics and event logs
silently (one resumes from the other's checkpoint; lines are lost or doubled), and a
`torchrun` killed alone leaves its workers running and writing. The lock makes the
second run stop at start with one line naming the holder.

`<checkpoint.dir>/pap.lock` is locked with `flock`: the kernel releases it when the
holder exits however it exits (SIGKILL included), so a lock can never be left stale by
a dead process. The file also records who holds it (host, pid, start time); a run that
finds the record of a process that is gone says it takes over. Where the filesystem
does not support `flock`, the lock falls back to creating the file exclusively, and a
record left by a dead process on this host is taken over; one from another host cannot
be checked and is reported with how to remove it.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
from pathlib import Path
from typing import Optional

from pap.errors import PapError

LOCK_FILE = "pap.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(record: dict) -> str:
    return f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')}"


def _record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}


class RunLock:
    """The lock of one checkpoint directory; `acquire()` raises PapError when another run holds it."""

    def __init__(self, directory: str):
        self.path = Path(directory) / LOCK_FILE
        self._fd: Optional[int] = None
        self._exclusive = False  # held through the O_EXCL fallback (the file is ours to remove)
        self.took_over: Optional[str] = None
        """Set when the lock's previous holder had ended without releasing it (the holder's description)."""

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PapError(self._held_message(self._read())) from None
            return self._acquire_without_flock()
        previous = self._read(fd)
        if previous and previous.get("pid") and not (previous.get("host") == socket.gethostname()
                                                      and previous.get("pid") == os.getpid()):
            self.took_over = _describe(previous)
        self._write(fd)
        self._fd = fd
        return self

    def __del__(self):
        self.release()

    def release(self) -> None:
        """Give the lock up (also happens by itself when the process ends)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
            if self._exclusive:
                self.path.unlink(missing_ok=True)

    # ---- without flock (some network filesystems) -------------------------------------------
    def _acquire_without_flock(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            previous = self._read()
            same_host = previous.get("host") == socket.gethostname()
            if not previous.get("pid") or (same_host and not _alive(int(previous["pid"]))):
                self.took_over = _describe(previous)
                self.path.unlink(missing_ok=True)
                return self._acquire_without_flock()
            raise PapError(self._held_message(previous)
                           + ("" if same_host else f" (if that run is gone, delete {self.path})")) from None
        self._exclusive = True
        self._write(fd)
        self._fd = fd
        return self

    # ---- the record --------------------------------------------------------------------------
    def _read(self, fd: Optional[int] = None) -> dict:
        try:
            text = os.pread(fd, 4096, 0).decode() if fd is not None else self.path.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _write(self, fd: int) -> None:
        data = json.dumps(_record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def _held_message(self, holder: dict) -> str:
        who = _describe(holder) if holder.get("pid") else "another run"
        return (f"checkpoint.dir {self.path.parent} is in use by {who} ({self.path}); stop that run "
                f"(and any of its workers left running) or choose another checkpoint.dir")


class FileLock(RunLock):
    """The same lock for one shared file outside the run directory (`log.metrics_file` named
    by hand): `<file>.lock`, so that two runs never write, trim or empty one file together."""

    def __init__(self, file: str, key: str):
        super().__init__(os.path.dirname(os.path.abspath(file)))
        self.path = Path(f"{file}.lock")
        self.file = file
        self.key = key

    def _held_message(self, holder: dict) -> str:
        who = _describe(holder) if holder.get("pid") else "another run"
        return (f"{self.key} {self.file} is in use by {who} ({self.path}); give this run its own "
                f"{self.key} or stop the other run")
