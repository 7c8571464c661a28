"""Lazy public names for a package: each loads its module on first use, so importing the package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str], modules: tuple[str, ...] = ()) -> tuple[
        Callable[[str], Any], Callable[[], list[str]]]:  # fmt: skip
    """Return ``(__getattr__, __dir__)`` for ``package``.

    ``names`` maps a public name to the module (relative to ``package``) that defines it; ``modules`` are
    sub-modules reachable as attributes (``colab_helpers.pruning``), imported on first access.
    """

    def __getattr__(name: str) -> Any:
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{module}", package), name)

    def __dir__() -> list[str]:
        return sorted({*names, *modules})

    return __getattr__, __dir__
