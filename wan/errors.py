"""Errors meant for the person running the program: one line that says what is wrong and what to do."""


class UserFacingError(Exception):
    """Bad input, a missing file or an impossible setting. Command-line entry points print the message
    alone (no traceback) and exit non-zero."""


class MissingFileError(UserFacingError, FileNotFoundError):
    """A file the user named, or a checkpoint file, does not exist."""


class CheckpointError(UserFacingError):
    """A checkpoint does not match the model it is loaded into (missing, unexpected or misshapen keys)."""
