"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


def one_line(text: str) -> str:
    """``text`` with line breaks escaped: a name holding a newline must not split the message."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class RFDeployError(Exception):
    """A user-facing error: bad input, a mismatch between files, a missing optional dependency.

    The message is a single line that names the file or layer at fault (line breaks in names are escaped).
    """

    def __init__(self, message: str):
        super().__init__(one_line(str(message)))


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (at most ``limit`` characters), or its type's name
    where the message is empty: what a one-line error quotes of a failure inside torch or a user's model."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
