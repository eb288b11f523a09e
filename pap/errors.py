"""The one exception type that entry points turn into a one-line error message."""


class PapError(Exception):
    """A problem with the user's input (config, data, checkpoint) that they can fix.

    The message must name the file and/or field at fault and say what would fix it;
    entry points print it as a single `error: ...` line and exit non-zero.
    """


def exit_status(command) -> int:
    """Run a command-line tool's `command()`; a PapError becomes one `error:` line and status 2."""
    import sys

    try:
        command()
    except PapError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
