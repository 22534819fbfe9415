"""Errors raised before training starts, so a bad command line never reaches `fit`."""


class ConfigError(ValueError):
    """An option has a value the runner cannot use; the message names the option and the choices."""


class DataNotFoundError(FileNotFoundError):
    """A dataset is absent (or failed its integrity check) and may not be downloaded."""


class DataFormatError(ValueError):
    """A dataset exists on disk but its layout or contents are not what its format requires."""
