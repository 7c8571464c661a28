"""Input checks every stage shares: is a value a finite real number, and a config field's help text.

Imports nothing of the package: any stage may use it (like :mod:`colab_helpers.errors`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_finite_number(value: Any) -> bool:
    """True for a finite real number (int, float, numpy scalar); False for bools, text, None, NaN and infinity."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """True for an integer (int, numpy integer); False for bools, floats (even whole ones), text and None."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(value: Any, name: str, *, least: int = 1, fix: str = "") -> int:
    """Return ``value`` as an int when it is an integer >= ``least``; else ValueError naming ``name``, the value as
    given and its type, then ``fix`` (what to pass instead): ``seq_len must be an integer >= 2, got 1 (int); ...``."""
    if not is_integer(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r} ({type(value).__name__})"
                         + (f"; {fix}" if fix else ""))  # fmt: skip
    return int(value)


def field_help(text: str) -> dict[str, str]:
    """The ``metadata`` of a config dataclass field that documents it: ``field(default=..., metadata=field_help(...))``."""
    return {"help": text}
