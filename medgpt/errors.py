"""User errors: bad input or config. They print as one clear message (no traceback) and exit non-zero."""
import functools
import sys


class UserError(Exception):
    """Something the user can fix; the message says what, where and how."""


class DataError(UserError):
    """A data file or record that cannot be used; names the file, the line and the fix."""

    def __init__(self, path, line, problem: str, fix: str):
        self.path, self.line, self.problem, self.fix = path, line, problem, fix
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}. Fix: {fix}")


def command(main):
    """Decorates a CLI entry point: a UserError prints as `error: <message>` on stderr (no traceback), returns 2."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run
