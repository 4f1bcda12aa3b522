"""The one exception type for mistakes a user can fix; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input (path, file, config value): the message says what is wrong and what to do."""
