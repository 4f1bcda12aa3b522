"""The one exception type for mistakes a user can fix; the CLI prints it as a single line."""
from __future__ import annotations

import re


class UserError(Exception):
    """Bad input (path, file, config value): the message says what is wrong and what to do."""


_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")      # terminal escape sequences (CSI and two-byte)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(error: BaseException | str, limit: int = 200) -> str:
    """An exception's message (or any text) as one printable line: terminal escape codes and control characters
    removed, only the first line (PyTorch's messages run on for paragraphs), at most `limit` characters."""
    text = str(error) if not isinstance(error, BaseException) or str(error) else type(error).__name__
    text = _CONTROL.sub("?", _ESCAPES.sub("", text))
    lines = [s.strip() for s in text.replace("\t", " ").splitlines() if s.strip()]
    text = lines[0] if lines else (type(error).__name__ if isinstance(error, BaseException) else "")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def printable(text: str) -> str:
    """`text` with control characters (escape codes' ESC included) and line breaks shown as `?`, the rest kept: for
    error lines that quote file names or values a user typed, so the name stays recognisable but inert."""
    return _CONTROL.sub("?", str(text).replace("\n", "?").replace("\r", "?").replace("\t", " "))
