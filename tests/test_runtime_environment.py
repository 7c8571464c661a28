"""detect_environment: runtimes faked through env vars and stub modules, CUDA faked through a stub torch.cuda."""

from __future__ import annotations

import json
import subprocess
import importlib.util
import sys
import types

import pytest

from colab_helpers.runtime import environment
from colab_helpers.runtime.environment import RUNTIMES, detect_environment
from colab_helpers.runtime.environment_report import EnvironmentReport

GIB = 1024**3
MARKERS = (
    "COLAB_RELEASE_TAG",
    "COLAB_GPU",
    "KAGGLE_KERNEL_RUN_TYPE",
    "LIGHTNING_CLOUD_SPACE_ID",
    "LIGHTNING_CLOUD_PROJECT_ID",
    "CI",
    "COLAB_HELPERS_HEADLESS",
)


def fake_cuda(name: str, capability: tuple[int, int], free: int, total: int) -> types.SimpleNamespace:
    """Return an object that answers like ``torch.cuda`` for one device."""
    return types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        get_device_name=lambda device=None: name,
        get_device_capability=lambda device=None: capability,
        mem_get_info=lambda device=None: (free, total),
    )


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No runtime marker, no kernel, no accelerator, no hub probe, 12.7 GB RAM with 10 GB available."""
    for name in MARKERS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", None)  # None in sys.modules: not importable
    monkeypatch.setattr(environment, "_ipython_kernel_present", lambda: False)
    monkeypatch.setattr(environment, "_torch_cuda", lambda: None)
    monkeypatch.setattr(environment, "_tpu_present", lambda: False)
    monkeypatch.setattr(environment, "_mps_available", lambda: False)
    monkeypatch.setattr(environment, "_hub_reachable", lambda: False)
    monkeypatch.setattr(environment, "_ram", lambda: (int(12.7 * GIB), 10 * GIB))
    return monkeypatch


def with_packages(monkeypatch: pytest.MonkeyPatch, **installed: str) -> None:
    """Pretend exactly the packages in ``installed`` (plus the real core ones) are installed."""
    real = environment._package_version
    optional = {"bitsandbytes", "unsloth"}
    monkeypatch.setattr(
        environment, "_package_version", lambda name: installed.get(name) if name in optional else real(name)
    )


@pytest.mark.parametrize(
    ("env", "runtime", "detected_by"),
    [
        ({"COLAB_RELEASE_TAG": "release-colab_20260601-060000_RC00"}, "colab", "COLAB_RELEASE_TAG"),
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle", "KAGGLE_KERNEL_RUN_TYPE"),
        ({"LIGHTNING_CLOUD_SPACE_ID": "01abc"}, "lightning", "LIGHTNING_CLOUD_SPACE_ID"),
        ({"LIGHTNING_CLOUD_PROJECT_ID": "01def"}, "lightning", "LIGHTNING_CLOUD_PROJECT_ID"),
        ({"CI": "true"}, "ci", "CI"),
        ({"COLAB_HELPERS_HEADLESS": "1"}, "papermill", "COLAB_HELPERS_HEADLESS"),
        ({"CI": "0", "COLAB_HELPERS_HEADLESS": "false"}, "script", "no notebook marker"),
    ],
)
def test_runtime_from_env_markers(clean, env, runtime, detected_by):
    for name, value in env.items():
        clean.setenv(name, value)
    report = detect_environment(check_hub=False)
    assert (report.runtime, report.detected_by) == (runtime, detected_by)
    assert report.interactive is False  # no kernel in any of these


def test_colab_from_importable_module_and_interactive_with_a_kernel(clean):
    clean.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    clean.setattr(environment, "_ipython_kernel_present", lambda: True)
    report = detect_environment(check_hub=False)
    assert (report.runtime, report.detected_by, report.interactive) == ("colab", "google.colab importable", True)


def test_colab_gpu_variable_alone_says_nothing(clean):
    clean.setenv("COLAB_GPU", "1")  # set on Colab's CPU runtimes too
    report = detect_environment(check_hub=False)
    assert report.runtime == "script"
    assert report.accelerator == "cpu"


def test_papermill_inside_colab_is_colab_without_browser(clean):
    clean.setenv("COLAB_RELEASE_TAG", "release-colab_20260601")
    clean.setenv("COLAB_HELPERS_HEADLESS", "1")
    clean.setattr(environment, "_ipython_kernel_present", lambda: True)
    report = detect_environment(check_hub=False)
    assert (report.runtime, report.interactive) == ("colab", False)
    assert any("headless" in note for note in report.recommendations.notes)


def test_kaggle_batch_run_is_not_interactive(clean):
    clean.setattr(environment, "_ipython_kernel_present", lambda: True)
    clean.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert detect_environment(check_hub=False).interactive is True
    clean.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert detect_environment(check_hub=False).interactive is False


def test_plain_kernel_is_jupyter(clean):
    clean.setattr(environment, "_ipython_kernel_present", lambda: True)
    report = detect_environment(check_hub=False)
    assert (report.runtime, report.interactive) == ("jupyter", True)


def test_runtime_override(clean):
    clean.setenv("CI", "true")
    report = detect_environment(runtime="Kaggle", check_hub=False)
    assert (report.runtime, report.detected_by, report.interactive) == ("kaggle", "runtime argument", False)


def test_bad_runtime_override_names_valid_values_and_fix(clean):
    with pytest.raises(ValueError) as error:
        detect_environment(runtime="collab", check_hub=False)
    message = str(error.value)
    assert "'collab'" in message
    assert all(repr(name) in message for name in RUNTIMES)
    assert "runtime=None" in message


def test_t4_gets_float16_and_no_bf16(clean):
    clean.setattr(environment, "_torch_cuda", lambda: fake_cuda("Tesla T4", (7, 5), int(14.5 * GIB), 15 * GIB))
    with_packages(clean, bitsandbytes="0.45.0")
    report = detect_environment(check_hub=False)
    rec = report.recommendations
    assert (report.accelerator, report.device_name, report.compute_capability) == ("cuda", "Tesla T4", (7, 5))
    assert report.bf16_supported is False
    assert (rec.dtype, rec.memory_basis, rec.can_use_4bit, rec.can_use_unsloth) == ("float16", "vram", True, False)
    # 14.5 GB free: LoRA in fp16 fits a ~3-4B model, inference a bit more, QLoRA about three times as much
    assert 3.0 < rec.max_params_b_lora < 4.5
    assert rec.max_params_b_qlora > rec.max_params_b_inference > rec.max_params_b_lora
    assert any("T4" in note and "no native bf16" in note for note in rec.notes)
    assert report.vram_total_bytes == 15 * GIB


def test_a100_gets_bfloat16(clean):
    clean.setattr(environment, "_torch_cuda", lambda: fake_cuda("NVIDIA A100-SXM4-40GB", (8, 0), 39 * GIB, 40 * GIB))
    with_packages(clean, unsloth="2026.10.7")
    report = detect_environment(check_hub=False)
    rec = report.recommendations
    assert report.bf16_supported is True
    assert (rec.dtype, rec.can_use_4bit, rec.can_use_unsloth, rec.max_params_b_qlora) == ("bfloat16", False, True, None)
    assert rec.max_params_b_lora > 8
    assert any("bitsandbytes is not installed" in note for note in rec.notes)


def test_gpu_mostly_taken_is_noted(clean):
    clean.setattr(environment, "_torch_cuda", lambda: fake_cuda("Tesla T4", (7, 5), 2 * GIB, 15 * GIB))
    rec = detect_environment(check_hub=False).recommendations
    assert any("GPU memory is free" in note for note in rec.notes)


def test_cpu_recommendations(clean):
    with_packages(clean, bitsandbytes="0.45.0", unsloth="2026.10.7")  # installed, but useless without CUDA
    clean.setenv("COLAB_RELEASE_TAG", "x")
    report = detect_environment(check_hub=False)
    rec = report.recommendations
    assert (report.accelerator, report.device_name, report.gpu_count, report.vram_free_bytes) == ("cpu", None, 0, None)
    assert (rec.dtype, rec.memory_basis, rec.can_use_4bit, rec.can_use_unsloth) == ("float32", "ram", False, False)
    # 10 GB RAM at 6 bytes/parameter for fp32 LoRA after margin and overhead
    assert 1.0 < rec.max_params_b_lora < 1.6
    assert any("125M" in note for note in rec.notes)
    assert any("Change runtime type" in note for note in rec.notes)


def test_mps_and_tpu_use_float32_with_a_note(clean):
    clean.setattr(environment, "_mps_available", lambda: True)
    report = detect_environment(check_hub=False)
    assert (report.accelerator, report.recommendations.dtype) == ("mps", "float32")
    assert any("MPS" in note for note in report.recommendations.notes)
    clean.setattr(environment, "_tpu_present", lambda: True)
    report = detect_environment(check_hub=False)
    assert report.accelerator == "tpu"
    assert any("torch_xla" in note for note in report.recommendations.notes)


def test_hub_check_is_skippable(monkeypatch):
    calls: list[float] = []
    hub = types.ModuleType("colab_helpers.runtime.hub")
    hub.hub_reachable = lambda timeout=2.0: calls.append(timeout) or False
    monkeypatch.setitem(sys.modules, "colab_helpers.runtime.hub", hub)  # the real _hub_reachable imports this stub
    assert detect_environment(check_hub=False).hub_reachable is None
    assert calls == []
    report = detect_environment(check_hub=True)
    assert report.hub_reachable is False
    assert len(calls) == 1
    assert any("unreachable" in note for note in report.recommendations.notes)


def test_real_machine_report_is_sane():
    report = detect_environment(check_hub=False)
    assert report.runtime in RUNTIMES
    assert report.accelerator in {"cuda", "tpu", "mps", "cpu"}
    assert report.cpu_count >= 1
    assert 0 < report.ram_available_bytes <= report.ram_total_bytes
    assert report.disk_free_bytes > 0
    assert report.versions["transformers"]
    assert bool(report.versions["torch"]) == (importlib.util.find_spec("torch") is not None)  # None when absent
    assert set(report.versions) == set(environment.PACKAGES)
    assert report.python_version.startswith(f"{sys.version_info.major}.{sys.version_info.minor}")


def test_json_round_trip_and_renders(clean):
    clean.setattr(environment, "_torch_cuda", lambda: fake_cuda("Tesla <T4> | x", (7, 5), 14 * GIB, 15 * GIB))
    report = detect_environment(check_hub=False)
    again = EnvironmentReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report

    markdown = report.to_markdown()
    lines = markdown.splitlines()
    assert lines[:2] == ["| Item | Value |", "| --- | --- |"]
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert "Tesla <T4> \\| x" in markdown  # a pipe inside a value cannot break the table
    assert "| Recommended dtype | float16 |" in markdown

    page = report._repr_html_()
    assert page.startswith("<table>") and page.endswith("</table>")
    assert "Tesla &lt;T4&gt; | x" in page and "<T4>" not in page
    assert page.count("<tr>") == len(report.rows())

    line = report.summary()
    assert "\n" not in line
    assert "cuda: Tesla <T4> | x (cc 7.5" in line and "dtype float16" in line


def test_report_never_contains_secrets(clean):
    secret = "hf_abcdefghijklmnop0123456789"
    clean.setenv("HF_TOKEN", secret)
    clean.setenv("WANDB_API_KEY", "wandb-secret-value-42")
    report = detect_environment(check_hub=False)
    for text in (json.dumps(report.to_dict()), report.to_markdown(), report._repr_html_(), report.summary()):
        assert secret not in text and "wandb-secret-value-42" not in text


def test_import_stays_light():
    code = (
        "import sys, colab_helpers.runtime.environment, colab_helpers.runtime.memory; "
        "heavy = {'torch', 'transformers', 'IPython', 'ipywidgets', 'bitsandbytes', 'unsloth'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
