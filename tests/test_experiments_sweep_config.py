"""YAML configs, dotted merges and sweep expansion, with every bad input named and its fix given."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.experiments.sweep_config import SweepConfig, expand, get_dotted, load_config, load_sweep, merge, validate_configs

BASE: dict[str, Any] = {
    "model": {"name": "gpt2", "context_length": 128},
    "training": {"learning_rate": 0.0006, "batch_size": 8},
    "pruning": {"strategy": "entropy", "level": 0.3},
}
MODELS = ["distilgpt2", "gpt2", "opt-125m"]
STRATEGIES = ["random", "entropy", "gradient"]


def _ranged(**spec: Any) -> dict[str, Any]:
    """A random sweep over one ranged parameter ``a``."""
    return {"search": "random", "num_runs": 2, "parameters": {"a": spec}}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- configs -------------------------------------------------------------------------------------------


def test_load_config_reads_yaml_keeps_extra_keys_and_reads_1e_4_as_a_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "base.yaml", """
model:
  name: "gpt2"        # comments are fine
training:
  learning_rate: 1e-4
  warmup: 1.5E+2
  my_new_knob: [1, 2]
run:
  checkpoint: null
""")
    config = load_config(path)
    assert config["training"] == {"learning_rate": 1e-4, "warmup": 150.0, "my_new_knob": [1, 2]}
    assert config["run"] == {"checkpoint": None}
    assert load_config(_write(tmp_path, "empty.yaml", "")) == {}
    copied = load_config(BASE)
    copied["model"]["name"] = "changed"
    assert BASE["model"]["name"] == "gpt2"  # a dict is deep-copied


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("model:\n  name: gpt2\n bad_indent: 1\n", 3, "expected <block end>"),
        ("model: {name: gpt2\ntraining: 1\n", 2, ""),
        ("training:\n  lr: 1\n  lr: 2\n", 3, "key 'lr' appears twice"),
        ("a: 'unclosed\n", 2, ""),
    ],
)
def test_malformed_yaml_names_the_file_and_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    pattern = rf"bad\.yaml: invalid YAML at line {line}, column \d+: .*{problem}"
    with pytest.raises(ValueError, match=pattern) as info:
        load_config(path)
    assert "fix the syntax" in str(info.value) or "keep one" in str(info.value)


def test_config_must_be_a_mapping_and_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_config(_write(tmp_path, "list.yaml", "- a\n- b\n"))
    with pytest.raises(FileNotFoundError, match="no YAML file"):
        load_config(tmp_path / "missing.yaml")


def test_merge_with_dotted_keys_leaves_inputs_unchanged() -> None:
    merged = merge(BASE, {"training.learning_rate": 0.01, "lora.rank": 8, "model": {"name": "opt-125m"}})
    assert merged["training"] == {"learning_rate": 0.01, "batch_size": 8}
    assert merged["lora"] == {"rank": 8}
    assert merged["model"] == {"name": "opt-125m", "context_length": 128}  # nested mappings merge key by key
    assert BASE["training"]["learning_rate"] == 0.0006
    assert get_dotted(merged, "lora.rank") == 8 and get_dotted(merged, "lora.alpha", "none") == "none"
    with pytest.raises(ValueError, match="'model.name' is 'gpt2', not a mapping"):
        merge(BASE, {"model.name.size": 1})
    with pytest.raises(ValueError, match="empty part"):
        merge(BASE, {"training..lr": 1})


# --- sweeps --------------------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_in_a_stable_order() -> None:
    sweep = SweepConfig(
        name="grid",
        parameters={"pruning.strategy": {"values": ["random", "entropy"]}, "pruning.level": [0.1, 0.3, 0.5]},
    )
    configs = expand(BASE, sweep)
    assert sweep.size == len(configs) == 6
    pairs = [(c["pruning"]["strategy"], c["pruning"]["level"]) for c in configs]
    assert pairs == [(s, level) for s in ("random", "entropy") for level in (0.1, 0.3, 0.5)]
    assert all(c["model"] == BASE["model"] for c in configs)
    assert expand(BASE, sweep) == configs


def test_random_search_is_seeded_in_range_and_distinct() -> None:
    spec = {
        "search": "random",
        "num_runs": 20,
        "seed": 7,
        "parameters": {
            "training.learning_rate": {"distribution": "log_uniform", "min": 1e-5, "max": 1e-2},
            "training.dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
            "lora.rank": {"distribution": "int_uniform", "min": 2, "max": 4},
            "model.name": {"values": MODELS},
        },
    }
    configs = expand(BASE, spec)
    assert len(configs) == 20 and configs == expand(BASE, spec)
    assert configs != expand(BASE, {**spec, "seed": 8})
    for config in configs:
        assert 1e-5 <= config["training"]["learning_rate"] <= 1e-2
        assert 0.0 <= config["training"]["dropout"] <= 0.5
        assert config["lora"]["rank"] in (2, 3, 4)
        assert config["model"]["name"] in MODELS
    rates = sorted(math.log10(c["training"]["learning_rate"]) for c in configs)
    assert rates[0] < -4 and rates[-1] > -3  # log-uniform spreads over the decades
    assert len({repr(c) for c in configs}) == 20


def test_random_draws_from_a_small_space_warn_and_stay_distinct() -> None:
    spec = {"search": "random", "num_runs": 5, "parameters": {"model.name": {"values": ["gpt2", "opt-125m"]}}}
    with pytest.warns(ColabHelpersWarning, match="only 2 distinct combinations"):
        configs = expand(BASE, spec)
    assert sorted(c["model"]["name"] for c in configs) == ["gpt2", "opt-125m"]


def test_sweep_yaml_in_the_format_users_know(tmp_path: Path) -> None:
    path = _write(tmp_path, "sweep.yaml", """
sweep_name: "learning_rate_sweep"
parameters:
  initialization.init_std:
    values: [0.01, 0.02]
  initialization.init_mean:
    values: [0.0]
search: "grid"
num_runs: 3   # ignored by grid
""")
    sweep = load_sweep(path)
    assert sweep.name == "learning_rate_sweep" and sweep.size == 2
    assert [c["initialization"] for c in expand(BASE, path)] == [
        {"init_std": 0.01, "init_mean": 0.0},
        {"init_std": 0.02, "init_mean": 0.0},
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"parameters": {"lr": 0.1}}, r"'lr' is 0\.1, neither a values list nor a range; write `lr: \{values"),
        ({"parameters": {"lr": {"min": 1, "max": 2}}}, "neither a values list nor a range"),
        ({"parameters": {"lr": {"values": []}}}, "empty values list.*list at least one value"),
        ({"parameters": {"lr": {"values": 0.1}}}, r"values must be a list, got 0\.1; write \[0\.1\]"),
        ({"parameters": {"lr": {"values": [1], "distribution": "uniform"}}}, "both 'values' and 'distribution'"),
        ({"parameters": {}}, "parameters must be a non-empty mapping"),
        ({"search": "random", "num_runs": 0, "parameters": {"a": [1]}}, "num_runs must be an integer > 0, got 0"),
        ({"search": "random", "num_runs": -2, "parameters": {"a": [1]}}, "num_runs must be an integer > 0, got -2"),
        ({"search": "random", "num_runs": True, "parameters": {"a": [1]}}, "num_runs must be an integer > 0"),
        ({"search": "random", "parameters": {"a": [1]}}, "needs num_runs"),
        ({"search": "gird", "parameters": {"a": [1]}}, "search must be one of.*got 'gird'.*did you mean 'grid'"),
        (_ranged(distribution="loguniform", min=1, max=2), "distribution 'loguniform'.*did you mean 'log_uniform'"),
        (_ranged(distribution="uniform", min=2, max=1), "min must be < max, got min=2, max=1"),
        (_ranged(distribution="uniform", min=1, max=1), "min must be < max"),
        (_ranged(distribution="log_uniform", min=0, max=1), "log_uniform needs min > 0, got min=0"),
        (_ranged(distribution="int_uniform", min=1, max=2.5), "int_uniform needs integer min and max"),
        (_ranged(distribution="uniform", min="x", max=1), "min and max must be finite numbers"),
        (
            {"parameters": {"a": {"distribution": "uniform", "min": 0, "max": 1}}},
            "a grid cannot enumerate; use search: random",
        ),
        ({"parameters": {"a": [1]}, "serch": "grid"}, "unknown key 'serch'.*did you mean 'search'"),
        ({"parameters": {"a": [1]}, "strategy": "grid"}, "unknown key 'strategy'"),  # the search is `search:` only
        ({"parameters": {"a": [1]}, "method": "random"}, "unknown key 'method'"),
        ({"search": "grid"}, "a sweep needs 'parameters'"),
        ({"parameters": {"a": [1]}, "name": ""}, "sweep name must be a non-empty string"),
    ],
)
def test_bad_sweeps_name_the_value_and_the_fix(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_sweep(spec)


def test_validate_rejects_unknown_names_before_any_run() -> None:
    allowed = {"model.name": MODELS, "pruning.strategy": STRATEGIES}
    sweep = {"parameters": {"pruning.strategy": {"values": ["random", "entorpy"]}}}
    with pytest.raises(ValueError, match=r"'entorpy' is not allowed \(did you mean 'entropy'\?\)"):
        expand(BASE, sweep, validate=allowed)
    with pytest.raises(ValueError, match=r"run config #0: model.name='gpt-2' is not allowed.*choose one of"):
        expand(merge(BASE, {"model.name": "gpt-2"}), {"parameters": {"pruning.level": [0.1]}}, validate=allowed)
    random_sweep = {  # a bad listed value is caught even when no draw picks it
        "search": "random", "num_runs": 1, "seed": 0,
        "parameters": {"model.name": {"values": ["gpt2", "gpt2", "gpt2", "gpt2", "gpt3"]}},
    }
    with pytest.raises(ValueError, match="'gpt3' is not allowed"):
        expand(BASE, random_sweep, validate=allowed)
    assert len(expand(BASE, {"parameters": {"pruning.strategy": STRATEGIES}}, validate=allowed)) == 3


def test_validate_accepts_a_callable() -> None:
    def check(config: dict[str, Any]) -> None:
        if config["pruning"]["level"] >= 1:
            raise ValueError(f"pruning.level must be in [0, 1), got {config['pruning']['level']}")

    with pytest.raises(ValueError, match=r"run config #1: pruning.level must be in \[0, 1\), got 1.5"):
        expand(BASE, {"parameters": {"pruning.level": [0.5, 1.5]}}, validate=check)
    with pytest.raises(ValueError, match="rejected by the validate hook"):
        validate_configs([BASE], lambda config: False)
    validate_configs([BASE], lambda config: True)


def test_html_report_is_one_escaped_page_with_tables_and_figures(tmp_path: Path) -> None:
    import pandas as pd

    from colab_helpers.plots.report import html_report, table_html, write_html_report

    frame = pd.DataFrame({"run": ["a"], "loss": [1.5]}, index=["row0"])
    page = html_report("A <b> title", {"Table": frame, "Indexed": table_html(frame, index=True),
                                          "Both": [b"\x89PNG", "<p>raw</p>"], "Empty": pd.DataFrame()},
                       intro="2 runs & 1 failed.")  # fmt: skip
    assert page.startswith("<!doctype html>") and "<h1>A &lt;b&gt; title</h1>" in page and "2 runs &amp; 1 failed." in page
    assert page.count("<h2>") == 4 and "row0" in page.split("<h2>Indexed</h2>")[1] and "row0" not in page.split("<h2>")[1]
    assert 'alt="Both" src="data:image/png;base64,iVBORw==' in page and "<p>raw</p>" in page and "(none)" in page
    with pytest.raises(TypeError, match="DataFrames, figures or HTML"):
        html_report("t", {"bad": 3})
    path = write_html_report(tmp_path / "r.html", "t", {"Table": frame})
    assert "<h1>t</h1>" in path.read_text(encoding="utf-8") and list(tmp_path.iterdir()) == [path]  # no temp file left
