"""The package's shape (docs/architecture.md): stages import one way, no private names cross modules, no old flat paths, long modules say why, every sub-package lists its modules."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import colab_helpers

PACKAGE = Path(colab_helpers.__file__).parent
# Stages in import order: a stage imports only the stages before it (and the base modules).
LAYERS = ("runtime", "plots", "evaluation", "pruning", "models", "finetune", "experiments", "spelling")
BASE = ("errors", "smoke", "checks", "_version")  # import nothing of the stages; anyone may import them
MAX_LINES = 400
LONG_MODULE_NOTE = "in one module because"  # the opening docstring of a longer module says why


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute target module, imported names, line) of every import in ``path``, lazy ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("colab_helpers"):
                found.append((target, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("colab_helpers")]
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_stages_import_one_way_down_the_pipeline() -> None:
    wrong = []
    for module, path in _modules().items():
        stage = _stage(module)
        if stage not in LAYERS:
            continue
        for target, names, line in _imports(module, path):
            targets = [target] if _stage(target) else [f"{target}.{name}" for name in names]
            for full in targets:
                other = _stage(full)
                if other in BASE or other == stage:
                    continue
                if other not in LAYERS or LAYERS.index(other) > LAYERS.index(stage):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({stage}) imports {full} ({other})")
    assert not wrong, "imports against the stage order " + " < ".join(LAYERS) + ":\n" + "\n".join(wrong)


def test_base_modules_import_no_stage() -> None:
    for name in BASE:
        path = PACKAGE / f"{name}.py"
        stages = {_stage(target) for target, _, _ in _imports(f"colab_helpers.{name}", path)}
        assert not stages & set(LAYERS), f"{name}.py imports {stages & set(LAYERS)}"


def test_no_private_name_is_imported_from_another_module() -> None:
    private = []
    for module, path in _modules().items():
        for target, names, line in _imports(module, path):
            hidden = [n for n in names if n.startswith("_") and not n.startswith("__")]
            hidden += [part for part in target.split(".") if part.startswith("_") and part not in ("__init__", "_version")]
            if hidden:
                private.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {hidden} from {target}")
    assert not private, "\n".join(private)


def test_long_modules_say_why_in_their_opening_docstring() -> None:
    unexplained = []
    for module, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and LONG_MODULE_NOTE not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{module} ({text.count(chr(10))} lines)")
    assert not unexplained, f"over {MAX_LINES} lines without '{LONG_MODULE_NOTE} ...' in the docstring: {unexplained}"


def test_every_sub_package_lists_its_modules() -> None:
    for stage in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8"))) or ""
        modules = sorted(p.stem for p in (PACKAGE / stage).glob("*.py") if p.stem != "__init__")
        missing = [name for name in modules if f":mod:`.{name}`" not in doc]
        assert not missing, f"colab_helpers/{stage}/__init__.py does not list {missing}"


def test_no_module_path_from_before_the_stage_layout_imports() -> None:
    """The layout was never released with its old flat modules: no compatibility layer answers for them."""
    for old in ("colab_helpers.pipeline", "colab_helpers.tracking", "colab_helpers.notebook_runner"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
