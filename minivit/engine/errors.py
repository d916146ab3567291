"""minivit's own exceptions: errors the user can fix, each message naming the problem and
the fix. Each is also the built-in exception Python code expects, so
`except ValueError:` (or TypeError, ImportError) catches it; the `minivit` command shows
one as a single line without a traceback and exits with its exit_status."""


class MinivitError(Exception):
    """An error the user can fix: the message names the problem and the fix."""
    exit_status = 2     # what the command was given cannot be used, as with argparse's mistakes


class BadValue(MinivitError, ValueError):
    """A value (an option, a setting, a file's content) that cannot be used."""


class MissingPackage(MinivitError, ImportError):
    """An optional package a feature needs (CuPy, mpi4py) is not installed or fails to import."""


class NoDevice(MinivitError, RuntimeError):
    """CuPy imports, but no GPU can run its kernels here."""
