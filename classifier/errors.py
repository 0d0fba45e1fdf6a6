"""One exception for every kind of bad input the user can hand us.

Its message is a single line that names the file (and line) or setting at fault; the CLI prints it
to stderr and exits with status 2, the gateway turns it into an OpenAI-format 4xx.
"""


from pathlib import Path


class InputError(Exception):
    """Bad user input: a file, a line in a file, a directory or a setting."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def exit_on_input_error(fn):
    """Decorator for CLI commands: an InputError becomes one line on stderr and exit status 2; so does a file the
    operating system refuses (an output directory that cannot be created, a file without read permission): the
    path and the reason, not a traceback."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:
            if exc.filename is None:
                raise
            where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Before long work: `path` must be a directory, or a place where one can be made; else one line naming the
    option, the path and why (a file in the way, an ancestor that is not writable), instead of an error after
    minutes of encoding or training. Probes with a temporary directory that is removed again."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a directory")
    nearest = path if path.is_dir() else next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not nearest.is_dir():
        raise InputError(f"{option} {path}: {nearest} is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(dir=nearest).cleanup()
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write in {nearest} ({exc.strerror or exc})") from None
