"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

import re

WORD_LIMIT = 240  # a name, key or path longer than this is shortened in a message
MESSAGE_LIMIT = 2000
_LONG_WORD = re.compile(rf"\S{{{WORD_LIMIT + 1},}}")


def _shortened(word: str) -> str:
    return f"{word[:WORD_LIMIT // 2]}...[{len(word)} characters]...{word[-40:]}"


def one_line(text: str) -> str:
    """``text`` with line breaks escaped (a name holding a newline must not split the message) and overlong
    names (a 5 MB structure key) shortened: the line names what is at fault without echoing all of it."""
    text = _LONG_WORD.sub(lambda match: _shortened(match.group()), text.replace("\r", "\\r").replace("\n", "\\n"))
    if len(text) > MESSAGE_LIMIT:
        text = f"{text[:MESSAGE_LIMIT - 500]} ...[{len(text)} characters]... {text[-400:]}"
    return text


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
