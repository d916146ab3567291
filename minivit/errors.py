class MinivitError(Exception):
    """An error the user can fix: the message names the problem and the fix."""
