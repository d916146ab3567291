"""minivit's own exception: an error the user can fix, shown as one line without a
traceback by the `minivit` command (exit status 1)."""


class MinivitError(Exception):
    """An error the user can fix: the message names the problem and the fix."""
