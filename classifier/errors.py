"""One exception for every kind of bad input the user can hand us.

Its message is a single line that names the file (and line) or setting at fault; the CLI prints it
to stderr and exits with status 2, the gateway turns it into an OpenAI-format 4xx.
"""


class InputError(Exception):
    """Bad user input: a file, a line in a file, a directory or a setting."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def exit_on_input_error(fn):
    """Decorator for CLI commands: an InputError becomes one line on stderr and exit status 2."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
