"""The failures a user can fix: a command reports them as one clear line, never a traceback."""


class UserError(Exception):
    """Bad input or an unusable environment; the message says what, where and what was expected."""
