"""Stopping a run cleanly on request: a signal or an exit file, agreed on by every rank.

A preempted or time-limited Slurm job gets a warning signal some minutes before it is
killed. torchrun's agent dies on signals it does not handle, so the launch scripts turn
the warning into a file in the shared experiment directory (`train.exit_file`); processes
started without torchrun may also be sent `train.exit_signal` directly. Either way only
some ranks notice, so the verdict is all-reduced before anyone acts on it: every rank
then saves the same checkpoint and leaves the loop at the same step.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional



class ExitRequest:
    """Watches for the exit signal and the exit file; the trainer agrees on the votes in its step all-reduce."""

    def __init__(self, exit_file: Optional[str], signal_name: Optional[str], is_rank0: bool):
        self.exit_file = exit_file
        self.is_rank0 = is_rank0
        self.signalled = False
        self.enabled = bool(exit_file or signal_name)
        # Python can only install handlers from the main thread (not the case under some test runners).
        if signal_name and threading.current_thread() is threading.main_thread():
            signal.signal(getattr(signal, signal_name), self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def local_vote(self) -> bool:
        """This rank's view, without communication: signalled, or (rank 0) the exit file exists.
        The trainer adds it to the step's loss all-reduce, so agreeing costs no collective of
        its own; `agreed(total)` reads the verdict from that sum."""
        if not self.enabled:
            return False
        return self.signalled or (self.is_rank0 and self.exit_file is not None and os.path.exists(self.exit_file))

    @staticmethod
    def agreed(votes: float) -> bool:
        """Every rank's verdict from the all-reduced sum of the local votes."""
        return votes > 0

    def acknowledge(self) -> None:
        """Remove the exit file (rank 0) so that the next start of the job trains on."""
        self.signalled = False
        if self.is_rank0 and self.exit_file and os.path.exists(self.exit_file):
            os.remove(self.exit_file)
