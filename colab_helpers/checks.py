"""Input checks every stage shares: finite numbers, integers and positive values (errors that name the value and the
fix), and a config field's help text.

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


def _refuse(name: str, wanted: str, value: Any, fix: str) -> ValueError:
    """The error of every check here: ``{name} must be {wanted}, got {value!r} ({type}); {fix}``."""
    return ValueError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})" + (f"; {fix}" if fix else ""))


def check_integer(value: Any, name: str, *, least: int = 1, fix: str = "") -> int:
    """Return ``value`` as an int when it is an integer >= ``least``; else ValueError naming ``name``, the value as
    given and its type, then ``fix`` (what to pass instead): ``seq_len must be an integer >= 2, got 1 (int); ...``."""
    if not is_integer(value) or value < least:
        raise _refuse(name, f"an integer >= {least}", value, fix)
    return int(value)


def check_positive_integer(value: Any, name: str, *, fix: str = "", optional: bool = False) -> int | None:
    """Return ``value`` as an int when it is an integer >= 1 (or None when ``optional``); else ValueError
    ``batch_size must be a positive integer, got 0 (int); e.g. batch_size=4`` (``... or None`` when optional)."""
    if optional and value is None:
        return None
    if not is_integer(value) or value < 1:
        raise _refuse(name, "a positive integer" + (" or None" if optional else ""), value, fix)
    return int(value)


def check_positive_number(value: Any, name: str, *, fix: str = "") -> float:
    """Return ``value`` when it is a finite real number > 0 (not a bool, text, NaN or infinity); else ValueError
    ``memory_gb must be a positive number, not NaN or infinity, got nan (float); e.g. memory_gb=15``."""
    if not (is_finite_number(value) and value > 0):
        raise _refuse(name, "a positive number, not NaN or infinity", value, fix)
    return value


def check_number(value: Any, name: str, *, low: float = 0.0, high: float | None = None, low_inclusive: bool = False,
                 high_inclusive: bool = False, fix: str = "") -> float:  # fmt: skip
    """Return ``value`` when it is a finite real number within the bounds (``> low`` by default; ``in [low, high)``
    with ``high`` and ``low_inclusive``), a numpy or other real scalar as a Python float; else ValueError naming the
    value as given: ``dropout must be a finite number in [0, 1), got 1.0; e.g. dropout=0.05``."""
    if high is None:
        bounds = f"{'>=' if low_inclusive else '>'} {low:g}"
    else:
        bounds = f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    tail = f"; {fix}" if fix else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (write the number without quotes)" if isinstance(value, str) else ""
        raise ValueError(f"{name} must be a number {bounds}, got {type(value).__name__} {value!r}{hint}{tail}")
    above = value >= low if low_inclusive else value > low
    below = high is None or (value <= high if high_inclusive else value < high)
    if not (math.isfinite(value) and above and below):
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}{tail}")
    return value if type(value) in (int, float) else float(value)


def check_choice(value: Any, choices: tuple[Any, ...], name: str, *, fix: str = "") -> Any:
    """Return ``value`` when it is one of ``choices``; else ValueError
    ``dtype must be one of ('auto', 'bf16'), got 'fp8'; 'auto' picks per device``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}" + (f"; {fix}" if fix else ""))
    return value


def field_help(text: str) -> dict[str, str]:
    """The ``metadata`` of a config dataclass field that documents it: ``field(default=..., metadata=field_help(...))``."""
    return {"help": text}
