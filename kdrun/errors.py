"""Errors that are the user's to fix: reported as one paragraph, without a traceback."""


class UserError(Exception):
    """A problem with what the user asked for (names, values, paths), with the fix in the message."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)
