"""Errors that the CLI turns into one clear line instead of a traceback."""


class EmbslimError(Exception):
    """Base class of every error a user is meant to read."""


class DataError(EmbslimError):
    """Input data is missing, empty or malformed; the message names file, line and field."""


class ConfigError(EmbslimError):
    """An option or combination of options is not valid."""


class BudgetError(ConfigError):
    """A method cannot be built within the requested byte budget."""
