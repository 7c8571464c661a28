"""YAML run configs and hyperparameter sweeps: load, merge with dotted keys, expand a sweep into run configs.

A config is any YAML mapping; every key is kept and tracked (add a hyperparameter to the file, not to the code).
A sweep names the dotted keys to vary::

    name: lr_sweep
    search: grid              # grid: every combination; random: num_runs seeded draws
    parameters:
      training.learning_rate: {values: [1.0e-4, 3.0e-4]}
      pruning.level: {values: [0.1, 0.3, 0.5]}
      # random search only: {distribution: log_uniform | uniform | int_uniform, min: ..., max: ...}
    num_runs: 8               # random only
    seed: 0

    configs = expand(load_config("base.yaml"), load_sweep("sweep.yaml"), validate={"model.name": MODELS})

YAML is read with a ``yaml.SafeLoader`` that also reads ``1e-4`` as a number (plain YAML 1.1 makes it a string)
and rejects a key written twice in one mapping.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import logging
import math
import os
import random
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checks import is_finite_number
from ..errors import ColabHelpersWarning

logger = logging.getLogger(__name__)

SEARCHES: tuple[str, ...] = ("grid", "random")  # how a sweep explores (importance strategies: pruning)
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "log_uniform", "int_uniform")
SWEEP_KEYS: tuple[str, ...] = (
    "name", "sweep_name", "parameters", "search", "num_runs", "seed", "description"
)

_MISSING = object()  # a key absent from a config
Validator = Callable[[dict[str, Any]], Any] | Mapping[str, Iterable[Any]]


# --- YAML ------------------------------------------------------------------------------------------------


def _loader() -> type:
    """Return a SafeLoader subclass: ``1e-4`` is a float, and a key repeated in one mapping is an error."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in this mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def _load_yaml(path: str | os.PathLike[str]) -> Any:
    """Return the data of the YAML file ``path``; ``ValueError`` naming the file, line and problem if malformed."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no YAML file at {str(path)!r}; check the path (relative to {os.getcwd()!r})")
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown line"
        problem = exc.problem or exc.context or "invalid YAML"
        hint = "" if "appears twice" in problem else (
            "; fix the syntax there (indent with spaces, quote values that contain ': ' or ' #')"
        )
        raise ValueError(f"{path}: invalid YAML at {where}: {problem}{hint}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}; fix the syntax of the file") from None


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Return a run config as a new dict, from a YAML file path or a mapping (deep-copied). Any key is allowed."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    data = _load_yaml(source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: a config must be a YAML mapping (key: value lines), got a {type(data).__name__}"
        )
    return data


# --- dotted keys -------------------------------------------------------------------------------------------


def get_dotted(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Return ``config["a"]["b"]`` for ``key="a.b"`` (a literal ``"a.b"`` key wins), or ``default``."""
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if any(not part for part in parts):
        raise ValueError(f"key {key!r} has an empty part; write dotted keys like 'training.learning_rate'")
    node = config
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ValueError(
                f"cannot set {key!r}: {where!r} is {child!r}, not a mapping; override {where!r} itself "
                f"or make it a mapping in the base config"
            )
        node = child
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(node.get(last), dict):
        node[last] = merge(node[last], value)
    else:
        node[last] = copy.deepcopy(value)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a new config: ``base`` with ``overrides`` applied (dotted keys reach into nested mappings).

    Nested mappings merge key by key; any other value replaces the one in ``base``. Neither input is changed.
    """
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ValueError(f"config keys must be strings, got {key!r}; quote it in the YAML file")
        _set_dotted(result, key, value)
    return result


# --- sweeps ------------------------------------------------------------------------------------------------


def _near(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _normalize_parameter(key: Any, spec: Any, search: str) -> dict[str, Any]:
    """Return ``{"values": [...]}`` or ``{"distribution": d, "min": a, "max": b}``; ``ValueError`` naming the fix."""
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ValueError(f"sweep parameter names must be dotted keys like 'training.learning_rate', got {key!r}")
    fix = f"write `{key}: {{values: [a, b]}}` or `{key}: {{distribution: uniform, min: a, max: b}}`"
    if isinstance(spec, list):  # shorthand: `key: [a, b]`
        spec = {"values": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"sweep parameter {key!r} is {spec!r}, neither a values list nor a range; {fix}")
    if "values" in spec and "distribution" in spec:
        raise ValueError(f"sweep parameter {key!r} has both 'values' and 'distribution'; keep one")
    if "values" in spec:
        extra = sorted(set(spec) - {"values"})
        if extra:
            raise ValueError(f"sweep parameter {key!r}: unexpected key(s) {extra} next to 'values'; {fix}")
        values = spec["values"]
        if not isinstance(values, list):
            raise ValueError(f"sweep parameter {key!r}: values must be a list, got {values!r}; write [{values!r}]")
        if not values:
            raise ValueError(f"sweep parameter {key!r} has an empty values list, so the sweep has no runs; "
                             "list at least one value or remove the parameter")
        return {"values": copy.deepcopy(values)}
    if "distribution" not in spec:
        raise ValueError(f"sweep parameter {key!r} is {dict(spec)!r}, neither a values list nor a range; {fix}")
    distribution = spec["distribution"]
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"sweep parameter {key!r}: unknown distribution {distribution!r}{_near(distribution, DISTRIBUTIONS)}; "
            f"use one of {list(DISTRIBUTIONS)}"
        )
    extra = sorted(set(spec) - {"distribution", "min", "max"})
    if extra:
        raise ValueError(f"sweep parameter {key!r}: unexpected key(s) {extra}; a range has distribution, min, max")
    low, high = spec.get("min"), spec.get("max")
    if not is_finite_number(low) or not is_finite_number(high):
        raise ValueError(
            f"sweep parameter {key!r}: min and max must be finite numbers, got min={low!r}, max={high!r}; "
            f"e.g. {{distribution: {distribution}, min: 0.0001, max: 0.01}}"
        )
    if low >= high:
        raise ValueError(f"sweep parameter {key!r}: min must be < max, got min={low!r}, max={high!r}; swap them")
    if distribution == "log_uniform" and low <= 0:
        raise ValueError(
            f"sweep parameter {key!r}: log_uniform needs min > 0, got min={low!r}; use a small positive min "
            "such as 1e-6, or distribution: uniform"
        )
    if distribution == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
        raise ValueError(
            f"sweep parameter {key!r}: int_uniform needs integer min and max, got min={low!r}, max={high!r}"
        )
    if search == "grid":
        raise ValueError(
            f"sweep parameter {key!r} is a {distribution} range, which a grid cannot enumerate; "
            f"use search: random (with num_runs) or give it a values list"
        )
    return {"distribution": distribution, "min": low, "max": high}


@dataclass
class SweepConfig:
    """A hyperparameter sweep: which dotted keys vary, how (grid or random) and how many runs.

    ``parameters`` maps a dotted key to ``{values: [...]}`` (or a bare list) or, for random search, to
    ``{distribution: uniform | log_uniform | int_uniform, min, max}`` (``int_uniform`` includes ``max``).
    """

    parameters: dict[str, Any]
    search: str = "grid"  # grid: every combination; random: num_runs seeded draws
    num_runs: int | None = None  # random only (required there); ignored by grid
    seed: int = 0  # random draws are reproducible from it
    name: str = "sweep"  # recorded in the `sweep` column of runs.csv
    description: str = ""

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ValueError(
                f"search must be one of {list(SEARCHES)}, got {self.search!r}{_near(self.search, SEARCHES)}"
            )
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"sweep name must be a non-empty string, got {self.name!r}; e.g. name: lr_sweep")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.num_runs is not None and (
            isinstance(self.num_runs, bool) or not isinstance(self.num_runs, int) or self.num_runs <= 0
        ):
            raise ValueError(f"num_runs must be an integer > 0, got {self.num_runs!r}; e.g. num_runs: 10")
        if self.search == "random" and self.num_runs is None:
            raise ValueError("search 'random' needs num_runs (an integer > 0); add e.g. num_runs: 10")
        if not isinstance(self.parameters, Mapping) or not self.parameters:
            raise ValueError(
                f"parameters must be a non-empty mapping of dotted keys, got {self.parameters!r}; "
                "e.g. parameters: {training.learning_rate: {values: [1.0e-4, 3.0e-4]}}"
            )
        self.parameters = {
            key: _normalize_parameter(key, spec, self.search) for key, spec in self.parameters.items()
        }

    @property
    def size(self) -> int:
        """How many run configs ``expand`` returns at most (grid: the product of the list lengths)."""
        if self.search == "grid":
            return math.prod(len(spec["values"]) for spec in self.parameters.values())
        return int(self.num_runs or 0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sweep") -> SweepConfig:
        """Return a ``SweepConfig`` from a mapping (``sweep_name`` is accepted for ``name``)."""
        unknown = [key for key in data if key not in SWEEP_KEYS]
        if unknown:
            raise ValueError(
                f"{source}: unknown key {unknown[0]!r}{_near(unknown[0], SWEEP_KEYS)}; a sweep has "
                f"{', '.join(SWEEP_KEYS)}"
            )
        if "parameters" not in data:
            raise ValueError(
                f"{source}: a sweep needs 'parameters', e.g. parameters: {{pruning.level: {{values: [0.1, 0.3]}}}}"
            )
        return cls(
            parameters=data["parameters"],
            search=data.get("search", "grid"),
            num_runs=data.get("num_runs"),
            seed=data.get("seed", 0),
            name=data.get("name", data.get("sweep_name", "sweep")),
            description=data.get("description", "") or "",
        )


def load_sweep(source: str | os.PathLike[str] | Mapping[str, Any] | SweepConfig) -> SweepConfig:
    """Return a ``SweepConfig`` from a YAML file, a mapping, or a ``SweepConfig`` (returned as is)."""
    if isinstance(source, SweepConfig):
        return source
    if isinstance(source, Mapping):
        return SweepConfig.from_dict(source)
    data = _load_yaml(source)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a sweep must be a YAML mapping with 'parameters', got {type(data).__name__}")
    return SweepConfig.from_dict(data, source=str(source))


def _draw(spec: dict[str, Any], rng: random.Random) -> Any:
    if "values" in spec:
        return copy.deepcopy(rng.choice(spec["values"]))
    low, high = spec["min"], spec["max"]
    if spec["distribution"] == "int_uniform":
        return rng.randint(low, high)
    if spec["distribution"] == "log_uniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def _combinations(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Return the parameter assignments of ``sweep``: grid in a stable order (last key fastest), or random draws."""
    keys = list(sweep.parameters)
    if sweep.search == "grid":
        value_lists = [sweep.parameters[key]["values"] for key in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*value_lists)]
    rng = random.Random(sweep.seed)
    wanted = int(sweep.num_runs or 0)
    drawn: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(wanted * 50):  # distinct draws: a repeated config would only be skipped as already done
        combo = {key: _draw(sweep.parameters[key], rng) for key in keys}
        fingerprint = repr(sorted(combo.items()))
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        drawn.append(combo)
        if len(drawn) == wanted:
            break
    if len(drawn) < wanted:
        warnings.warn(
            f"sweep {sweep.name!r}: only {len(drawn)} distinct combinations could be drawn for num_runs={wanted}; "
            "running those (add values or use ranges for more)",
            ColabHelpersWarning,
            stacklevel=3,
        )
    return drawn


def _describe(combo: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in combo.items())


def _check_allowed(where: str, key: str, value: Any, allowed: Iterable[Any]) -> None:
    choices = list(allowed)
    if value is _MISSING or value in choices:
        return
    raise ValueError(
        f"{where}: {key}={value!r} is not allowed{_near(str(value), [str(c) for c in choices])}; "
        f"choose one of {choices}"
    )


def validate_configs(configs: Iterable[Mapping[str, Any]], validate: Validator | None) -> None:
    """Check every config before any run starts; ``ValueError`` naming the run, the key, the value and the choices.

    ``validate`` is a callable that raises ``ValueError`` (or returns False) for a bad config, or a mapping
    ``{dotted.key: allowed values}`` (a config without that key passes).
    """
    if validate is None:
        return
    for index, config in enumerate(configs):
        where = f"run config #{index}"
        if not callable(validate):
            for key, allowed in validate.items():
                _check_allowed(where, key, get_dotted(config, key, _MISSING), allowed)
            continue
        try:
            verdict = validate(dict(config))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        if verdict is False:
            raise ValueError(f"{where} was rejected by the validate hook; fix the base config or the sweep")



def expand(
    base: str | os.PathLike[str] | Mapping[str, Any],
    sweep: str | os.PathLike[str] | Mapping[str, Any] | SweepConfig,
    *,
    validate: Validator | None = None,
) -> list[dict[str, Any]]:
    """Return one full config per run of ``sweep`` applied to ``base`` (paths or already loaded).

    Grid: the cartesian product, in the order the parameters are written, the last one varying fastest.
    Random: ``num_runs`` distinct seeded draws (values lists sampled uniformly). ``validate`` (see
    ``validate_configs``) checks every config, and every listed value, before this returns.
    """
    base_config = load_config(base)
    sweep_config = load_sweep(sweep)
    if validate is not None and not callable(validate):
        for key, allowed in validate.items():  # listed values first: a random draw may miss a bad one
            spec = sweep_config.parameters.get(key)
            for value in (spec or {}).get("values", []):
                _check_allowed(f"sweep {sweep_config.name!r}, parameter {key!r}", key, value, allowed)
    configs = [merge(base_config, combo) for combo in _combinations(sweep_config)]
    validate_configs(configs, validate)
    logger.info("sweep %s: %d run configs", sweep_config.name, len(configs))
    return configs


def sweep_overrides(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Return the parameter assignments ``expand`` applies, one dict of dotted keys per run (for tables)."""
    return _combinations(sweep)


__all__ = [
    "DISTRIBUTIONS",
    "SEARCHES",
    "SweepConfig",
    "Validator",
    "expand",
    "get_dotted",
    "load_config",
    "load_sweep",
    "merge",
    "sweep_overrides",
    "validate_configs",
]
