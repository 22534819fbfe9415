"""Errors raised before training starts, so a bad command line never reaches `fit`."""


class ConfigError(ValueError):
    """An option has a value the runner cannot use; the message names the option and the choices."""


def check_known_options(cfg: dict, names: list[str], where: str) -> None:
    """Refuse keys of an option group that are not among `names`, naming them and the valid ones."""
    unknown = sorted(set(cfg) - set(names))
    if unknown:
        raise ConfigError(f"{where} has no option(s) {unknown}; options: {names}")


class DataNotFoundError(FileNotFoundError):
    """A dataset is absent (or failed its integrity check) and may not be downloaded."""


class DataFormatError(ValueError):
    """A dataset exists on disk but its layout or contents are not what its format requires."""


# What a user can fix from the message alone: run.py prints these as one line, without a traceback.
USER_ERRORS = (ConfigError, DataNotFoundError, DataFormatError)
