"""minivit's own exceptions: errors the user can fix, shown by the `minivit` command as one
line without a traceback, exiting with the error's exit_status."""


class MinivitError(Exception):
    """An error the user can fix: the message names the problem and the fix."""
    exit_status = 2     # what the command was given cannot be used, as with argparse's mistakes


class RunFailed(MinivitError):
    """A run that could not go on: a failed write (a full disk, a read-only or deleted
    folder), a run folder in use by another process, a damaged metrics.jsonl, a step whose
    loss or gradients went NaN or Inf."""
    exit_status = 1
