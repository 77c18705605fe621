"""The one exception type charloom raises for a user's mistake.

The CLI prints its message on one line and exits non-zero; anything else escaping is a bug.
"""


class CharloomError(Exception):
    """Bad input from the user: a missing file, an unknown column, an option out of range.

    The message names what the user gave (file, field or flag) and stands on one line.
    """


class ConfigError(CharloomError, ValueError):
    """An option that is unknown, of the wrong type, or out of range."""


class CharloomWarning(UserWarning):
    """Something the user should know that does not stop the work (characters read as <unk>, a cache entry read
    again). The CLI says each in one line, as it says errors."""
