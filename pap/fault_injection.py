"""Named points where a test can kill the process, to replay a crash at an exact moment.

    PAP_KILL_AT=checkpoint.before_rename:2 python -m pap.train ...

kills the process with SIGKILL the 2nd time it reaches `checkpoint.before_rename` (the
1st time without `:N`), as a node failure would, with no cleanup of any kind. Only the
process whose global rank is `PAP_KILL_RANK` (default 0) dies; under torchrun the other
ranks then fail at their next collective, as they would in a real crash. Without the
variable every point is a dictionary lookup. Points: `checkpoint.before_rename` (every
file of a save written, not yet visible), `checkpoint.before_tracker` (the save renamed
into place, the tracker file not yet updated), `events.after_write` (a pruning event
appended), `metrics.after_write` (a step's scalars appended).
`PAP_KILL_SIGNAL=SIGINT` sends that signal instead (a Ctrl-C at an exact moment).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_SPEC = os.environ.get("PAP_KILL_AT", "")
_NAME, _, _COUNT = _SPEC.partition(":")
_reached: Counter = Counter()


def point(name: str) -> None:
    """Die here if `PAP_KILL_AT` names this point and this is the occurrence it names."""
    if not _SPEC or name != _NAME:
        return
    if os.environ.get("RANK", "0") != os.environ.get("PAP_KILL_RANK", "0"):
        return
    _reached[name] += 1
    if _reached[name] == int(_COUNT or 1):
        number = getattr(signal, os.environ.get("PAP_KILL_SIGNAL", "SIGKILL"))
        handler = signal.getsignal(number)
        if callable(handler):
            # A signal with a Python handler (Ctrl-C's KeyboardInterrupt): run it here, at this
            # exact point. Sent with os.kill, Python would run it at the next bytecode, which
            # may be inside a garbage-collection finalizer that swallows the exception.
            handler(number, None)
        else:
            os.kill(os.getpid(), number)
