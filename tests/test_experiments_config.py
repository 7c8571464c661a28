"""ExperimentConfig checks every field when it is built: wrong types and values fail before any work, by name; the
pruning is one spec (HeadPruning or Compression), built from flat keys in config files."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from colab_helpers.experiments.config import CONFIG_KEYS, Compression, ExperimentConfig, HeadPruning

# key -> (bad value, what the error must say): every flat key has at least one row (checked below); the pruning's
# keys are given flat (as YAML files, sweeps and the command line do), the others as fields too
BAD: list[tuple[str, Any, str]] = [
    ("model", None, "model must be a string, got None (NoneType); e.g. model='auto'"),
    ("model", "  ", "model must be a non-empty name"),
    ("model", "gpt2-medum", "unknown model 'gpt2-medum' (did you mean 'gpt2-medium'?): not a catalog name, an existing "
                            "local path or a hub id 'owner/name'; pass a catalog name"),
    ("dataset", 3, "dataset must be a string, got 3 (int)"),
    ("pruning", "heads", "pruning must be HeadPruning(...) or Compression(...), got 'heads' (str)"),
    ("strategy", ["random"], "strategy must be a string, got ['random'] (list)"),
    ("strategy", "attention", "strategy must be one of"),
    ("pruning_level", "0.3", "pruning_level must be a finite number, got '0.3' (str) (a number in quotes is text"),
    ("pruning_level", math.nan, "pruning_level must be a finite number, got nan (float)"),
    ("pruning_level", True, "pruning_level must be a finite number, got True (bool)"),
    ("pruning_level", 1.0, "pruning_level must be in [0, 1), got 1.0"),
    ("scope", None, "scope must be a string, got None"),
    ("scope", "head", "scope must be one of"),
    ("remove_heads", "no", "remove_heads must be True or False, got 'no' (str)"),
    ("remove_heads", 0, "remove_heads must be True or False, got 0 (int)"),
    ("prompt", 5, "prompt must be a string, got 5 (int)"),
    ("max_new_tokens", 30.0, "max_new_tokens must be an integer, got 30.0 (float) (write 30 for a whole number)"),
    ("max_new_tokens", 0, "max_new_tokens must be a positive integer, got 0"),
    ("fine_tuning_steps", 2.5, "fine_tuning_steps must be an integer or None, got 2.5 (float); e.g. fine_tuning_steps=200"),
    ("fine_tuning_steps", True, "fine_tuning_steps must be an integer or None, got True (bool)"),
    ("fine_tuning_steps", "200", "fine_tuning_steps must be an integer or None, got '200' (str)"),
    ("fine_tuning_steps", -1, "fine_tuning_steps must be >= 0"),
    ("fine_tuning_epochs", "one", "fine_tuning_epochs must be a finite number or None, got 'one' (str)"),
    ("fine_tuning_epochs", math.inf, "fine_tuning_epochs must be a finite number or None, got inf"),
    ("fine_tuning_epochs", 0, "fine_tuning_epochs must be > 0, got 0"),
    ("fine_tuning_minutes", "ten", "fine_tuning_minutes must be a finite number or None, got 'ten' (str)"),
    ("fine_tuning_minutes", -3, "fine_tuning_minutes must be > 0, got -3; e.g. 10, or None for no time budget"),
    ("learning_rate", "fast", "learning_rate must be a finite number, got 'fast' (str); e.g. learning_rate=0.001"),
    ("learning_rate", math.nan, "learning_rate must be a finite number, got nan"),
    ("learning_rate", 0.0, "learning_rate must be > 0, got 0.0"),
    ("lora_r", 8.0, "lora_r must be an integer, got 8.0 (float)"),
    ("lora_r", 0, "lora_r must be a positive integer, got 0"),
    ("lora_alpha", "32", "lora_alpha must be a finite number, got '32' (str)"),
    ("lora_alpha", -1, "lora_alpha must be > 0, got -1; e.g. lora_alpha=32"),
    ("micro_batch_size", None, "micro_batch_size must be an integer, got None"),
    ("seq_len", 128.5, "seq_len must be an integer, got 128.5 (float)"),
    ("eval_tokens", "8192", "eval_tokens must be an integer, got '8192' (str)"),
    ("eval_stride", 64.0, "eval_stride must be an integer or None, got 64.0 (float)"),
    ("eval_stride", 256, "eval_stride must be an integer in [1, seq_len=128] or None, got 256"),
    ("importance_batches", False, "importance_batches must be an integer, got False (bool)"),
    ("latency_rounds", -2, "latency_rounds must be a positive integer, got -2"),
    ("seed", 1.5, "seed must be an integer, got 1.5 (float); e.g. seed=0"),
    ("seed", True, "seed must be an integer, got True (bool)"),
    ("seed", -1, "seed must be an integer >= 0, got -1"),
    ("control", "yes", "control must be True or False, got 'yes' (str)"),
    ("dtype", None, "dtype must be a string, got None"),
    ("dtype", "float8", "dtype must be 'auto', 'bf16', 'fp16' or 'fp32', got 'float8'"),
    ("load_in_4bit", 1, "load_in_4bit must be True or False, got 1 (int)"),
    ("save_model", "false", "save_model must be True or False, got 'false' (str)"),
    ("target_params", 0, "target_params must be the share of parameters to keep, in (0, 1], got 0; e.g. "
                         "target_params=0.75"),
    ("target_params", 1.5, "target_params must be the share of parameters to keep, in (0, 1], got 1.5"),
    ("target_params", "x", "target_params must be a finite number or None, got 'x' (str); e.g. target_params=0.75"),
    ("target_params", "0.7", "got '0.7' (str) (a number in quotes is text: drop the quotes)"),
    ("target_params", True, "target_params must be a finite number or None, got True (bool)"),
    ("target_params", math.nan, "target_params must be a finite number or None, got nan (float)"),
    ("axes", [], "axes must be a non-empty list of distinct names from ['heads', 'mlp', 'layers'], got [] (it is empty); "
                 "e.g. axes=['heads', 'mlp']"),
    ("axes", "heads", "axes must be a list of names, got 'heads' (str) (one name is a list of one: ['heads']"),
    ("axes", ["heads", "mlp", "heads"], "got ['heads', 'mlp', 'heads'] ('heads' appears twice)"),
    ("axes", ["heads", "neurons"], "got ['heads', 'neurons'] ('neurons' is not an axis)"),
    ("axes", [1], "axes must be a list of names, got [1] (list)"),
    ("axes", None, "axes must be a list of names, got None (NoneType)"),
    ("recovery_method", "kd", "recovery_method must be 'lora' (LoRA on the LM loss) or 'distill' (from the unpruned "
                              "model), got 'kd'; e.g. recovery_method='distill'"),
    ("recovery_method", None, "recovery_method must be a string, got None"),
    ("distill_temperature", 0, "distill_temperature must be > 0, got 0; e.g. distill_temperature=2.0"),
    ("distill_temperature", "2", "distill_temperature must be a finite number, got '2' (str)"),
    ("distill_alpha", 1.5, "distill_alpha must be in [0, 1], got 1.5; e.g. distill_alpha=0.5"),
    ("distill_alpha", math.inf, "distill_alpha must be a finite number, got inf"),
    ("distill_top_k", 0, "distill_top_k must be a positive integer or None, got 0; e.g. distill_top_k=64"),
    ("distill_top_k", 8.5, "distill_top_k must be an integer or None, got 8.5"),
    ("fine_tuning_method", "qlora", "fine_tuning_method must be one of ('lora', 'full'), got 'qlora'; e.g. "
                                    "fine_tuning_method='lora' (an adapter) or 'full' (every weight)"),
    ("fine_tuning_method", None, "fine_tuning_method must be a string, got None"),
    ("recovery_text", "web", "recovery_text must be one of ('dataset', 'generated', 'mix'), got 'web'; e.g. "
                             "recovery_text='mix'"),
    ("recovery_text", ["mix"], "recovery_text must be a string, got ['mix'] (list)"),
    ("recovery_samples", 0, "recovery_samples must be a positive integer, got 0; e.g. recovery_samples=96"),
    ("recovery_samples", 8.5, "recovery_samples must be an integer or None, got 8.5 (float)"),
    ("ability", "yes", "ability must be True or False, got 'yes' (str); e.g. ability=True"),
    ("ability", None, "ability must be True or False, got None"),
    ("ability_tasks", "hellaswag,nope", "ability_tasks='hellaswag,nope': unknown task 'nope'; choose a preset"),
    ("ability_tasks", "offlne", "or ability_tasks=None for other-domain perplexity only"),
    ("ability_tasks", ["capitals"], "ability_tasks must be a string or None, got ['capitals'] (list); e.g. "
                                    "ability_tasks='offline'"),
    ("ability_limit", 0, "ability_limit must be a positive integer, got 0; e.g. ability_limit=100 items per task"),
    ("ability_limit", None, "ability_limit must be an integer, got None"),
]


FLAT = {"strategy", "pruning_level", "scope", "remove_heads", "target_params", "axes"}


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_a_bad_field_is_a_value_error_naming_it_the_value_and_its_type(name: str, value: Any, message: str) -> None:
    target = {"target_params": 0.7} if name == "axes" else {}  # axes are read with a target only
    if name not in FLAT:
        with pytest.raises(ValueError, match=re.escape(message)):
            ExperimentConfig(**{name: value})
    if name != "pruning":
        with pytest.raises(ValueError, match=re.escape(message)):  # the YAML / sweep form says the same
            ExperimentConfig.from_dict({name: value, "notes": "kept", **target})


def test_every_key_has_a_bad_value_in_the_table() -> None:
    assert {*CONFIG_KEYS, "pruning"} == {name for name, _, _ in BAD}
    assert {f.name for f in dataclasses.fields(ExperimentConfig)} == set(CONFIG_KEYS) - FLAT | {"pruning"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (lambda: HeadPruning(level=1.0), "level must be in [0, 1), got 1.0; e.g. level=0.3"),
        (lambda: HeadPruning(level="0.3"), "level must be a finite number, got '0.3' (str) (a number in quotes"),
        (lambda: HeadPruning(remove="no"), "remove must be True or False, got 'no' (str); e.g. remove=True"),
        (lambda: HeadPruning(strategy="attention"), "strategy must be one of"),
        (lambda: HeadPruning(scope="head"), "scope must be one of"),
        (lambda: Compression(0), "target_params must be the share of parameters to keep, in (0, 1], got 0"),
        (lambda: Compression(None), "target_params must be a finite number, got None (NoneType)"),
        (lambda: Compression(0.5, axes=["neurons"]), "('neurons' is not an axis)"),
    ],
)
def test_the_pruning_specs_check_their_fields_by_their_own_names(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        spec()


def test_flat_keys_build_the_pruning_spec_and_to_dict_writes_them_back() -> None:
    config, _ = ExperimentConfig.from_dict({"strategy": "random", "pruning_level": 0.5, "scope": "layer"})
    assert config.pruning == HeadPruning(strategy="random", level=0.5, scope="layer")
    compressed, _ = ExperimentConfig.from_dict({"target_params": 0.7, "axes": ["mlp"], "pruning_level": 0.5})
    assert compressed.pruning == Compression(0.7, axes=("mlp",))  # the head keys are unused with a target
    assert ExperimentConfig.from_dict({"target_params": None, "axes": None})[0].pruning == HeadPruning()
    values = compressed.to_dict()
    assert (values["target_params"], values["axes"], values["strategy"], values["pruning_level"]) == (0.7, ["mlp"], None, None)
    assert list(values) == list(CONFIG_KEYS)  # every key, in one order
    assert ExperimentConfig.from_dict(values)[0] == compressed
    with pytest.raises(ValueError, match="names its pruning by flat keys"):
        ExperimentConfig.from_dict({"pruning": {"strategy": "random"}})


def test_good_values_of_every_kind_pass() -> None:
    import numpy as np

    config = ExperimentConfig(pruning=HeadPruning(level=0), learning_rate=1, lora_alpha=16.5, fine_tuning_steps=0,
                              seed=np.int64(3), fine_tuning_epochs=None, eval_stride=None, control=True, dtype="fp32")  # fmt: skip
    assert (config.pruning.level, config.learning_rate, config.seed, config.steps) == (0, 1, 3, 0)
    assert type(config.seed) is int  # numpy scalars become Python numbers (YAML and JSON write them)
    assert type(ExperimentConfig(learning_rate=np.float32(0.5)).learning_rate) is float
    assert ExperimentConfig(fine_tuning_epochs=2, fine_tuning_steps=None).fine_tuning_epochs == 2
    assert ExperimentConfig(pruning=HeadPruning(level=np.float64(0.25))).run_name().endswith("-25")
    assert type(HeadPruning(level=np.float64(0.25)).level) is float


def test_a_key_that_looks_like_a_setting_is_tracked_with_one_warning() -> None:
    from colab_helpers.errors import ColabHelpersWarning

    with pytest.warns(ColabHelpersWarning, match=r"'learning_rat' \(did you mean 'learning_rate'\?\)") as caught:
        config, extra = ExperimentConfig.from_dict({"learning_rat": 5e-4, "notes": "levels study", "seed": 1})
    assert len(caught) == 1 and extra == {"learning_rat": 5e-4, "notes": "levels study"}
    assert config.learning_rate == ExperimentConfig().learning_rate and config.seed == 1


# --- compress to a parameter share, recover by distillation ------------------------------------------------------


def test_every_field_documents_itself() -> None:
    for spec in (*dataclasses.fields(ExperimentConfig), *dataclasses.fields(HeadPruning), *dataclasses.fields(Compression)):
        assert spec.metadata.get("help"), f"{spec.name} has no help text"


def test_compression_and_recovery_settings_pass_and_axes_are_normalized() -> None:
    import numpy as np

    config = ExperimentConfig(pruning=Compression(np.float64(0.7), axes=["layers", "heads"]), recovery_method="distill",
                              distill_temperature=4, distill_alpha=1)  # fmt: skip
    assert type(config.pruning.target_params) is float and config.pruning.target_params == 0.7
    assert config.pruning.axes == ("heads", "layers")  # order does not matter: kept as heads, mlp, layers
    assert config == ExperimentConfig(pruning=Compression(0.7, axes=("heads", "layers")), recovery_method="distill",
                                      distill_temperature=4, distill_alpha=1)  # fmt: skip
    assert hash(config) == hash(dataclasses.replace(config))  # hashable: sweeps deduplicate configs in a dict
    assert Compression(1).target_params == 1 and ExperimentConfig().pruning == HeadPruning()
    assert Compression(0.5).axes == ("heads", "mlp", "layers") and ExperimentConfig().recovery_method == "lora"
    distill = config.distill_config()
    assert (distill.temperature, distill.alpha, distill.top_k) == (4, 1, None)
    assert "distilled" in config.finetune_config("out").plot_title
    assert "distilled" not in ExperimentConfig().finetune_config("out").plot_title


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(target_params=0.5, load_in_4bit=True), "set load_in_4bit=False, or target_params=None"),
        (dict(target_params=0.5, remove_heads=False), "target_params always removes what it prunes"),
    ],
)
def test_compression_refuses_what_it_cannot_do(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ExperimentConfig.from_dict(settings)


def test_the_new_settings_round_trip_through_dicts_and_yaml(tmp_path: Any) -> None:
    import yaml

    from colab_helpers.experiments.sweep_config import load_config

    config = ExperimentConfig(model="embedded-llama", pruning=Compression(0.6, axes=["mlp", "heads"]),
                              recovery_method="distill", distill_temperature=3.0, distill_alpha=0.25)  # fmt: skip
    values = config.to_dict()
    assert values["axes"] == ["heads", "mlp"] and values["target_params"] == 0.6  # plain builtins
    assert values["recovery_method"] == "distill" and (values["distill_temperature"], values["distill_alpha"]) == (3.0, 0.25)
    assert ExperimentConfig.from_dict(values) == (config, {})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    assert ExperimentConfig.from_dict(load_config(path)) == (config, {})
    assert ExperimentConfig.from_dict(ExperimentConfig().to_dict())[0] == ExperimentConfig()
    smoke = config.smoke()
    assert (smoke.pruning, smoke.recovery_method) == (Compression(0.6, axes=("heads", "mlp")), "distill")


def test_run_names_tell_target_axes_and_recovery_apart_and_old_names_stay() -> None:
    assert ExperimentConfig(model="embedded-gpt2").run_name() == "embedded-gpt2-gradient-30"  # unchanged
    assert ExperimentConfig(model="x/gpt2", pruning=HeadPruning("random", 0.5)).run_name() == "gpt2-random-50"
    names = [
        ExperimentConfig.from_dict({"model": "embedded-gpt2", **settings})[0].run_name()
        for settings in (
            {}, dict(recovery_method="distill"), dict(target_params=0.7), dict(target_params=0.5),
            dict(target_params=0.7, axes=["heads", "mlp"]), dict(target_params=0.7, axes=["layers"]),
            dict(target_params=0.7, recovery_method="distill"), dict(target_params=0.725),
        )
    ]  # fmt: skip
    assert len(set(names)) == len(names)
    assert names[1] == "embedded-gpt2-gradient-30-distill"
    assert names[2] == "embedded-gpt2-keep70-heads+mlp+layers" and names[5] == "embedded-gpt2-keep70-layers"
    assert names[6] == "embedded-gpt2-keep70-heads+mlp+layers-distill" and names[7] == "embedded-gpt2-keep72.5-heads+mlp+layers"
    assert all(re.fullmatch(r"[A-Za-z0-9._+-]+", name) for name in names)  # file-safe
    # strategy and level are unused by compression: they do not split its runs
    assert (ExperimentConfig.from_dict({"target_params": 0.7, "pruning_level": 0.5})[0].run_name()
            == ExperimentConfig(pruning=Compression(0.7)).run_name())


def test_recovery_as_a_key_points_at_recovery_method() -> None:
    with pytest.raises(ValueError, match=re.escape("the recovery setting is recovery_method; write recovery_method: distill")):
        ExperimentConfig.from_dict({"recovery": "distill"})
    config, extra = ExperimentConfig.from_dict({"recovery_method": "distill", "notes": 1})
    assert config.recovery_method == "distill" and extra == {"notes": 1}


@pytest.mark.parametrize("name", ["gpt2-medum", "gpt2-medum ", "no-such-model-xyz", "embedded-lama"])
def test_a_model_name_that_resolves_to_nothing_is_refused_smoke_or_not(name: str) -> None:
    """smoke() swapped any unknown name for the toy without a word; now the name is refused when the config is built
    (before smoke() is reached), with the closest catalog names and the fix."""
    with pytest.raises(ValueError, match=rf"unknown model {re.escape(repr(name))}.*not a catalog name, an existing "
                                         r"local path or a hub id 'owner/name'; pass .* full id with the owner"):
        ExperimentConfig(model=name).smoke()
    with pytest.raises(ValueError, match=rf"unknown model {re.escape(repr(name))}"):
        ExperimentConfig.from_dict({"model": name})  # YAML, sweeps and the command line
    with pytest.raises(ValueError, match=r"did you mean 'embedded-llama'"):
        ExperimentConfig(model="embedded-lama")
    with pytest.raises(ValueError, match=r"model '/no/such/folder' looks like a path, but nothing is there; check the "
                                         r"path"):  # fmt: skip
        ExperimentConfig(model="/no/such/folder").smoke()


@pytest.mark.parametrize(
    "name",
    ["auto", "AUTO", "gpt2", "distilgpt2", "gpt2-medium", "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M",
     "embedded-gpt2", "embedded-llama", "smollm2-135m-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "someone/any-model",
     "x/gpt2", "."],
)  # fmt: skip
def test_catalog_names_hub_ids_and_existing_paths_are_accepted(name: str, tmp_path: Any) -> None:
    assert ExperimentConfig(model=name).model == name
    assert ExperimentConfig(model=str(tmp_path)).smoke().model == "embedded-gpt2"  # an existing folder, unchecked


# --- general ability, recovery text, fine-tuning method ------------------------------------------------------------


def test_ability_and_recovery_settings_reach_their_configs(tmp_path: Any) -> None:
    from colab_helpers import smoke
    from colab_helpers.evaluation import AbilityConfig

    config = ExperimentConfig(ability_tasks="capitals, antonyms", ability_limit=50, seq_len=96, eval_tokens=8192)
    ability = config.ability_config()
    assert isinstance(ability, AbilityConfig) and ability.tasks == ("capitals", "antonyms") and ability.limit == 50
    assert (ability.seq_len, ability.tokens) == (96, AbilityConfig().tokens)  # at most AbilityConfig's default
    assert ExperimentConfig().ability_config().tasks == "offline" and ExperimentConfig(ability_tasks=None).ability_config().tasks is None
    small = config.smoke()
    assert small.ability_config().tokens == smoke.SMOKE_EVAL_TOKENS and small.ability_limit == smoke.SMOKE_TASK_ITEMS
    assert ExperimentConfig(recovery_text="mix").smoke().recovery_samples == smoke.SMOKE_TEACHER_SAMPLES
    full = ExperimentConfig(fine_tuning_method="full", learning_rate=1e-4).finetune_config(tmp_path)
    assert full.method == "full" and "full fine-tuning" in full.plot_title
    assert ExperimentConfig().finetune_config(tmp_path).method == "lora"


def test_full_fine_tuning_refuses_weights_it_cannot_train() -> None:
    with pytest.raises(ValueError, match=re.escape("fine_tuning_method='full' cannot train the weights of dtype='fp16'")):
        ExperimentConfig(fine_tuning_method="full", dtype="fp16")
    with pytest.raises(ValueError, match=re.escape("weights of load_in_4bit=True")):
        ExperimentConfig(fine_tuning_method="full", load_in_4bit=True, pruning=HeadPruning(remove=False))


def test_the_recovery_settings_split_run_names_and_round_trip() -> None:
    names = {ExperimentConfig(model="embedded-gpt2", **settings).run_name()
             for settings in ({}, dict(recovery_text="mix"), dict(fine_tuning_method="full"),
                              dict(recovery_text="generated", fine_tuning_method="full", recovery_method="distill"))}  # fmt: skip
    assert names == {"embedded-gpt2-gradient-30", "embedded-gpt2-gradient-30-mix", "embedded-gpt2-gradient-30-full",
                     "embedded-gpt2-gradient-30-distill-full-generated"}  # fmt: skip
    config = ExperimentConfig(recovery_text="mix", fine_tuning_method="full", ability=False, ability_tasks=None,
                              ability_limit=20, recovery_samples=12)  # fmt: skip
    assert ExperimentConfig.from_dict(config.to_dict()) == (config, {})
    assert {"ability", "ability_tasks", "ability_limit", "recovery_text", "fine_tuning_method"} <= set(config.to_dict())
