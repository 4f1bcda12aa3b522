"""Reading JSON that came from a file (config.json, safetensors metadata, annotation lists, metrics): the one helper
every reader of ila uses, so that any such text is read in time proportional to its length and every problem is one
line naming the file.

Python's `json` parses an integer of thousands of digits in quadratic time (or stops with a ValueError at its
4300-digit limit), turns `1e999` into infinity, and recurses once per nesting level. `loads` refuses, as a
`UserError`: nesting deeper than `MAX_DEPTH`, integers of more than `MAX_INT_DIGITS` digits, number literals
longer than `MAX_NUMBER_CHARS` and numbers that overflow a float (the literals `NaN`/`Infinity`, which Python
itself writes, are left to the reader's type checks); and text that is not JSON or not UTF-8.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

from ila.errors import UserError, printable

__all__ = ["InvalidJSON", "MAX_DEPTH", "MAX_INT_DIGITS", "loads"]

MAX_DEPTH = 64
MAX_INT_DIGITS = 30
MAX_NUMBER_CHARS = 64


class InvalidJSON(UserError):
    """The text is not JSON: `msg`, `lineno` and `colno` as `json.JSONDecodeError` gives them."""

    def __init__(self, message: str, msg: str, lineno: int, colno: int):
        super().__init__(message)
        self.msg, self.lineno, self.colno = msg, lineno, colno


class _Refused(Exception):
    """Raised by the number hooks inside `json.loads`; becomes a UserError naming the file."""


def _int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"a JSON integer of {digits} digits (at most {MAX_INT_DIGITS} are read)")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a JSON number written with {len(text)} characters (at most {MAX_NUMBER_CHARS} are read)")
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"a JSON number too large for a float ({text})")
    return value


def _too_deep(value: Any) -> bool:
    """Whether `value` nests lists/objects deeper than MAX_DEPTH (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def loads(text: str | bytes, where: Any, object_pairs_hook: Callable | None = None) -> Any:
    """The value of the JSON `text` read from `where` (a path or a description, for messages), within the limits
    of the module docstring. Raises `InvalidJSON` for text that is not JSON and `UserError` for everything else;
    a `UserError` raised by `object_pairs_hook` passes through as it is."""
    shown = printable(str(where))
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, object_pairs_hook=object_pairs_hook)
    except _Refused as e:
        raise UserError(f"{shown}: {e}") from None
    except json.JSONDecodeError as e:
        raise InvalidJSON(f"{shown} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", e.msg,
                          e.lineno, e.colno) from None
    except UnicodeDecodeError:
        raise UserError(f"{shown} is not UTF-8 text") from None
    except RecursionError:
        raise UserError(f"{shown}: JSON nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError, OverflowError) as e:   # e.g. bytes in an encoding json cannot detect
        raise UserError(f"{shown}: JSON that cannot be read ({type(e).__name__})") from None
    if isinstance(value, (dict, list)):
        opened = text.count("[") + text.count("{") if isinstance(text, str) else \
            text.count(b"[") + text.count(b"{")
        if opened > MAX_DEPTH and _too_deep(value):
            raise UserError(f"{shown}: JSON nested deeper than {MAX_DEPTH} levels")
    return value
