"""The package's shape (docs/architecture.md): stages import one way, no private names cross modules, no old flat paths, modules and functions stay short, no sibling import cycles, a small front door, every sub-package lists its modules."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import colab_helpers

PACKAGE = Path(colab_helpers.__file__).parent
# Stages in import order: a stage imports only the stages before it (and the base modules).
LAYERS = ("runtime", "plots", "evaluation", "pruning", "models", "finetune", "experiments", "spelling", "deploy")
BASE = ("errors", "smoke", "checks", "lazy", "_version")  # import nothing of the stages; anyone may import them
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_LONG_FUNCTIONS = 5  # functions over MAX_FUNCTION_LINES, in the whole package
MAX_TOP_LEVEL_NAMES = 35


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


def test_no_module_is_over_the_line_limit() -> None:
    long = {m: p.read_text(encoding="utf-8").count("\n") for m, p in _modules().items()}
    over = {m: n for m, n in long.items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_few_functions_are_long() -> None:
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name} ({lines})")
    assert len(long) <= MAX_LONG_FUNCTIONS, f"{len(long)} functions over {MAX_FUNCTION_LINES} lines: {long}"


def _sibling_imports() -> dict[str, set[str]]:
    """module -> the modules of its own sub-package it imports (function-local imports included)."""
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        if path.name == "__init__.py":
            continue
        parent = module.rsplit(".", 1)[0]
        for target, names, _ in _imports(module, path):
            for full in (target, *(f"{target}.{name}" for name in names)):
                sibling = full in modules and modules[full].name != "__init__.py" and full.rsplit(".", 1)[0] == parent
                if sibling and full != module:
                    edges.setdefault(module, set()).add(full)
    return edges


def test_no_import_cycle_between_sibling_modules() -> None:
    edges = _sibling_imports()

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, ()))
        return False

    cycles = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if reaches(b, a)})
    assert not cycles, f"sibling modules importing each other: {cycles}"


def test_the_front_door_is_small_and_every_name_resolves() -> None:
    assert len(colab_helpers.__all__) <= MAX_TOP_LEVEL_NAMES, sorted(colab_helpers.__all__)
    for name in colab_helpers.__all__:
        assert getattr(colab_helpers, name) is not None
    for stage in (*LAYERS, "smoke"):
        package = getattr(colab_helpers, stage)
        missing = [name for name in getattr(package, "__all__", ()) if not hasattr(package, name)]
        assert not missing, f"colab_helpers.{stage} lists names it does not have: {missing}"


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
