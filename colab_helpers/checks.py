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


def field_help(text: str) -> dict[str, str]:
    """The ``metadata`` of a config dataclass field that documents it: ``field(default=..., metadata=field_help(...))``."""
    return {"help": text}
