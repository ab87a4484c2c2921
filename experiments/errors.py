"""The one exception type that the command line turns into a single error line."""


class UserError(Exception):
    """Bad input the user can fix: unknown config or flag value, missing data, broken checkpoint."""
