"""The errors of the machinery around the engine: the engine's (engine/errors.py) and a
run that could not go on (RunFailed). Every one is a MinivitError, shown by the `minivit`
command as one line without a traceback, exiting with the error's exit_status."""

from .engine.errors import BadValue, MinivitError, MissingPackage, NoDevice

__all__ = ["MinivitError", "BadValue", "MissingPackage", "NoDevice", "RunFailed"]


class RunFailed(MinivitError, RuntimeError):
    """A run that could not go on: a failed write (a full disk, a read-only or deleted
    folder), a run folder in use by another process, a damaged metrics.jsonl, a step whose
    loss or gradients went NaN or Inf."""
    exit_status = 1
