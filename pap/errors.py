"""The one exception type that entry points turn into a one-line error message."""


class PapError(Exception):
    """A problem with the user's input (config, data, checkpoint) that they can fix.

    The message must name the file and/or field at fault and say what would fix it;
    entry points print it as a single `error: ...` line and exit non-zero.
    """


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write: the path, the system's reason, and what to do."""
    path = f"{exc.filename}: " if exc.filename else ""
    hint = {28: "free space on that filesystem", 13: "choose a directory you can write to",
            30: "choose a writable filesystem", 27: "free space or raise the file-size limit (ulimit -f)",
            122: "free space within your disk quota"}.get(exc.errno, "check the path")
    return f"{path}{exc.strerror or exc}; {hint}"


def exit_status(command) -> int:
    """Run a command-line tool's `command()`; a PapError (or a failed read or write) becomes
    one `error:` line and status 2."""
    import sys

    try:
        command()
    except PapError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr, flush=True)
        return 2
    return 0
