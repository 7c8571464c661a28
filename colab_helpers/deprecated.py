"""Module paths from before the stage sub-packages keep importing for one release, with a DeprecationWarning.

``import colab_helpers.pipeline`` (and ``from colab_helpers.tracking import RunManager``) still work: a finder on
``sys.meta_path`` answers each old path with a stand-in module that forwards every name to the module's new home.
One table, no copied shim files; removed in 0.3. The moves are listed in CHANGELOG.md (0.2.0).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

REMOVED_IN = "0.3"

# old module path -> new module path
MOVED_MODULES: dict[str, str] = {
    "colab_helpers.catalog": "colab_helpers.models.registry",
    "colab_helpers.memory_estimate": "colab_helpers.models.memory_estimate",
    "colab_helpers.packaged_models": "colab_helpers.models.packaged",
    "colab_helpers.data": "colab_helpers.evaluation.data",
    "colab_helpers.latency": "colab_helpers.evaluation.latency",
    "colab_helpers.environment": "colab_helpers.runtime.environment",
    "colab_helpers.memory": "colab_helpers.runtime.memory",
    "colab_helpers.fallback": "colab_helpers.runtime.cuda_fallback",
    "colab_helpers.downloads": "colab_helpers.runtime.downloads",
    "colab_helpers.hub": "colab_helpers.runtime.hub",
    "colab_helpers.secrets": "colab_helpers.runtime.secrets",
    "colab_helpers.results": "colab_helpers.runtime.records",
    "colab_helpers.notebook_runner": "colab_helpers.runtime.notebooks",
    "colab_helpers.plotting": "colab_helpers.plots.live",
    "colab_helpers.figures": "colab_helpers.plots.pruning",
    "colab_helpers.sweep_plots": "colab_helpers.plots.sweeps",
    "colab_helpers.study": "colab_helpers.pruning.study",
    "colab_helpers.pipeline": "colab_helpers.experiments.pipeline",
    "colab_helpers.sweeps": "colab_helpers.experiments.sweep_config",
    "colab_helpers.tracking": "colab_helpers.experiments.tracking",
    "colab_helpers.cli": "colab_helpers.experiments.cli",
    "colab_helpers.tasks.spelling": "colab_helpers.spelling.data",
    "colab_helpers.tasks": "colab_helpers.spelling.data",
}

# old package -> new package: their submodules moved with them (colab_helpers.spelling_study.sweep -> ...)
MOVED_PACKAGES: dict[str, str] = {"colab_helpers.spelling_study": "colab_helpers.spelling"}


def new_path(old: str) -> str | None:
    """The module that replaced the old dotted path ``old``, or None when ``old`` did not move."""
    if old in MOVED_MODULES:
        return MOVED_MODULES[old]
    for package, target in MOVED_PACKAGES.items():
        if old == package or old.startswith(package + "."):
            return target + old[len(package):]
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answer an old module path with a stand-in that forwards to the new module (PEP 562 ``__getattr__``)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if new_path(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=_had_submodules(fullname))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = new_path(spec.name)
        assert new is not None
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (the old path goes in colab_helpers {REMOVED_IN})",
            DeprecationWarning,
            stacklevel=_caller_stacklevel(),
        )
        target = importlib.import_module(new)
        stand_in = types.ModuleType(spec.name, target.__doc__)
        stand_in.__getattr__ = lambda name: getattr(target, name)  # type: ignore[method-assign]
        stand_in.__dir__ = lambda: dir(target)  # type: ignore[method-assign]
        if _had_submodules(spec.name):
            stand_in.__path__ = []  # old submodule paths come back to this finder, never to the new files twice
        return stand_in

    def get_code(self, fullname: str) -> types.CodeType:
        """``python -m <old path>`` (e.g. ``colab_helpers.notebook_runner``): warn, then run the new module as main."""
        new = new_path(fullname)
        source = (f"import runpy, warnings\nwarnings.warn({fullname + ' moved to ' + str(new)!r}, DeprecationWarning)\n"
                  f"runpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n")
        return compile(source, f"<{fullname}, moved to {new}>", "exec")

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the stand-in forwards to a module that is already imported."""


def _had_submodules(old: str) -> bool:
    """True for an old path that was a package: other old paths lie below it (``colab_helpers.tasks``)."""
    return old in MOVED_PACKAGES or any(path.startswith(old + ".") for path in MOVED_MODULES)


def _caller_stacklevel() -> int:
    """How far up the stack the importing line is, past the import machinery and this module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib") or frame.f_code.co_filename == __file__):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: a stale folder of an old install (``spelling_study/`` holding
    only ``__pycache__``) would otherwise be imported as an empty namespace package. It answers old paths only."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
