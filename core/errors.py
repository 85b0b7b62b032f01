"""The one exception type polysteer raises for bad input; the CLI prints it as a single line."""


class PolysteerError(ValueError):
    """A problem with the user's input, with the fix in the message."""
