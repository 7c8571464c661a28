"""What are we running on? Runtime, accelerator, memory, package versions, and what that allows.

``detect_environment()`` returns an ``EnvironmentReport``: a frozen record a notebook shows as a table
(``_repr_html_``), logs as one line (``summary()``) or saves as JSON (``to_dict()``). Its
``recommendations`` turn the figures into choices: dtype, 4-bit, unsloth, and a rough largest model size.

Runtime markers (environment variables each platform sets in its notebooks): Colab sets ``COLAB_RELEASE_TAG`` (its
``COLAB_GPU`` is set even on CPU runtimes, so it says nothing about a GPU); Kaggle ``KAGGLE_KERNEL_RUN_TYPE``;
Lightning ``LIGHTNING_CLOUD_SPACE_ID``/``LIGHTNING_CLOUD_PROJECT_ID``. papermill sets nothing, so our own
headless runs set ``COLAB_HELPERS_HEADLESS=1``. "Which platform" and "is a browser attached" are separate
answers: a papermill run inside Colab is ``runtime="colab"`` with ``interactive=False``.

torch is imported only inside the probes; unsloth and bitsandbytes are never imported (their versions come
from package metadata).

Detection (runtime, accelerator, machine, packages) and the recommendations stay in one module because the
report is one frozen record built in one pass; each detector is a small private function.
"""

from __future__ import annotations

import glob
import html
import importlib.metadata
import logging
import os
import platform
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from typing import Any

from ..errors import ColabHelpersWarning
from .kernel import in_kernel
from .memory import format_bytes
from .secrets import redact

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("colab", "kaggle", "lightning", "papermill", "ci", "jupyter", "script")
_HEADLESS_RUNTIMES = frozenset({"papermill", "ci", "script"})
_HOSTED_RUNTIMES = frozenset({"colab", "kaggle", "lightning"})
HEADLESS_ENV_VAR = "COLAB_HELPERS_HEADLESS"  # set to 1 by our papermill runs: papermill itself sets nothing
PACKAGES: tuple[str, ...] = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth")

# Rules of thumb for the largest model that fits, in bytes per parameter. They are memory ceilings, not
# speed advice: a model that fits on a CPU may still take hours to train.
_SAFETY_MARGIN = 0.8  # plan with 80% of what is free: fragmentation, the CUDA context, the notebook itself
_GIB = 1024**3
_INFERENCE_OVERHEAD = _GIB // 2  # fixed: tokenizer, generation buffers, allocator slack
_TRAINING_OVERHEAD = _GIB  # fixed: activations of a small batch (about 4 x 256 tokens), optimizer workspace
_DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
_INFERENCE_FACTOR = 1.2  # weights in the dtype + 20% for KV cache and activations of a short generation
_LORA_FACTOR = 1.5  # frozen weights in the dtype + 50% for activations; adapters and AdamW state are ~1%
_QLORA_BYTES_PER_PARAM = 1.0  # 4-bit weights (0.5) + quantization constants + 16-bit activations and LoRA
_LOW_DISK = 5 * _GIB
_LOW_RAM = 2 * _GIB


@dataclass(frozen=True)
class Recommendations:
    """Choices that follow from the environment.

    ``max_params_b_*`` are rough ceilings in billions of parameters from the free memory named by
    ``memory_basis`` (``"vram"`` on CUDA, ``"ram"`` otherwise), after a 20% safety margin and a fixed
    overhead, at these bytes per parameter: inference 1.2 x dtype size, LoRA 1.5 x dtype size, QLoRA 1.0
    (None without 4-bit). ``notes`` are one-line hints for a person.
    """

    dtype: str
    can_use_4bit: bool
    can_use_unsloth: bool
    max_params_b_inference: float
    max_params_b_lora: float
    max_params_b_qlora: float | None
    memory_basis: str
    notes: tuple[str, ...] = ()

    def to_markdown(self) -> str:
        """Return the choices and the notes as a short Markdown list."""
        four_bit = "yes" if self.can_use_4bit else "no"
        unsloth = "yes" if self.can_use_unsloth else "no"
        lines = [f"- **dtype:** `{self.dtype}` · **4-bit (QLoRA):** {four_bit} · **unsloth:** {unsloth}"]
        lines += [f"- {note}" for note in self.notes]
        return redact("\n".join(lines))

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


@dataclass(frozen=True)
class EnvironmentReport:
    """The runtime, its hardware and software, and the recommendations that follow. Sizes are in bytes.

    ``runtime`` is one of ``RUNTIMES``; ``detected_by`` names the marker that decided it (an environment
    variable's name, never its value). ``interactive`` is True when a browser is likely attached.
    ``accelerator`` is ``"cuda"``, ``"tpu"``, ``"mps"`` or ``"cpu"``; the CUDA fields describe the current
    device and are None elsewhere; ``bf16_supported`` means native bf16 (compute capability >= 8.0).
    ``versions`` maps each of ``PACKAGES`` to its installed version or None. ``hub_reachable`` is None when
    not checked.
    """

    runtime: str
    interactive: bool
    detected_by: str
    accelerator: str
    device_name: str | None
    gpu_count: int
    compute_capability: tuple[int, int] | None
    vram_total_bytes: int | None
    vram_free_bytes: int | None
    bf16_supported: bool
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int
    working_dir: str
    python_version: str
    versions: dict[str, str | None] = field(default_factory=dict)
    hub_reachable: bool | None = None
    recommendations: Recommendations | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-serializable dict (``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvironmentReport:
        """Return the report that ``to_dict`` (possibly through JSON) produced ``data`` from."""
        values = dict(data)
        if values.get("compute_capability") is not None:
            major, minor = values["compute_capability"]
            values["compute_capability"] = (int(major), int(minor))
        recommendations = values.get("recommendations")
        if recommendations is not None:
            recommendations = dict(recommendations)
            recommendations["notes"] = tuple(recommendations.get("notes", ()))
            values["recommendations"] = Recommendations(**recommendations)
        values["versions"] = dict(values.get("versions") or {})
        return cls(**values)

    def rows(self) -> list[tuple[str, str]]:
        """Return ``(item, value)`` pairs: the table that ``to_markdown`` and ``_repr_html_`` draw."""
        rows = [
            ("Runtime", f"{self.runtime} ({'interactive' if self.interactive else 'no browser'})"),
            ("Detected by", self.detected_by),
            ("Accelerator", _describe_accelerator(self)),
        ]
        if self.accelerator == "cuda":
            if self.compute_capability is not None:
                rows.append(("Compute capability", "%d.%d" % self.compute_capability))
            vram = f"{format_bytes(self.vram_free_bytes)} free of {format_bytes(self.vram_total_bytes)}"
            rows.append(("GPU memory", vram))
            rows.append(("Native bf16", "yes" if self.bf16_supported else "no"))
        rows += [
            ("CPU cores", str(self.cpu_count)),
            ("RAM", f"{format_bytes(self.ram_available_bytes)} available of {format_bytes(self.ram_total_bytes)}"),
            ("Disk free", f"{format_bytes(self.disk_free_bytes)} ({self.working_dir})"),
            ("Python", self.python_version),
        ]
        rows += [(name, version or "not installed") for name, version in self.versions.items()]
        hub = {True: "reachable", False: "unreachable", None: "not checked"}[self.hub_reachable]
        rows.append(("Hugging Face Hub", hub))
        rec = self.recommendations
        if rec is not None:
            basis = "VRAM" if rec.memory_basis == "vram" else "RAM"
            rows += [
                ("Recommended dtype", rec.dtype),
                ("Can use 4-bit (QLoRA)", "yes" if rec.can_use_4bit else "no"),
                ("Can use unsloth", "yes" if rec.can_use_unsloth else "no"),
                (f"Fits in {basis}: inference", _format_params(rec.max_params_b_inference)),
                (f"Fits in {basis}: LoRA", _format_params(rec.max_params_b_lora)),
                (f"Fits in {basis}: QLoRA", _format_params(rec.max_params_b_qlora)),
            ]
            rows += [("Note", note) for note in rec.notes]
        return [(label, redact(value)) for label, value in rows]

    def to_markdown(self) -> str:
        """Return the report as a two-column Markdown table."""
        lines = ["| Item | Value |", "| --- | --- |"]
        lines += [f"| {_md_cell(label)} | {_md_cell(value)} |" for label, value in self.rows()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Return the report as an HTML table (every cell escaped); notebooks call this to display it."""
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
            f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
            for label, value in self.rows()
        )
        return f"<table>{cells}</table>"

    def summary(self) -> str:
        """One line: ``colab (interactive) | cuda: Tesla T4 (...) | RAM ... | dtype float16 | LoRA fits ~3.5B ...``."""
        parts = [
            f"{self.runtime} ({'interactive' if self.interactive else 'no browser'})",
            _describe_accelerator(self),
            f"RAM {format_bytes(self.ram_available_bytes)} free of {format_bytes(self.ram_total_bytes)}",
        ]
        if self.recommendations is not None:
            parts.append(f"dtype {self.recommendations.dtype}")
            parts.append(f"LoRA fits {_format_params(self.recommendations.max_params_b_lora)}")
        return redact(" | ".join(parts))


def _md_cell(text: str) -> str:
    """Return ``text`` safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _format_params(billions: float | None) -> str:
    """Return ``"~3.5B parameters"`` / ``"~120M parameters"`` / ``"n/a"``."""
    if billions is None:
        return "n/a"
    if billions >= 1:
        return f"~{billions:.1f}B parameters"
    return f"~{billions * 1000:.0f}M parameters"


def _describe_accelerator(report: EnvironmentReport) -> str:
    """Return e.g. ``"cuda: Tesla T4 (cc 7.5, 14.7 GB free of 15.0 GB)"`` or ``"cpu"``."""
    if report.accelerator != "cuda":
        return report.accelerator if report.device_name is None else f"{report.accelerator}: {report.device_name}"
    cc = "cc %d.%d, " % report.compute_capability if report.compute_capability else ""
    count = f" x{report.gpu_count}" if report.gpu_count > 1 else ""
    return (
        f"cuda: {report.device_name}{count} ({cc}{format_bytes(report.vram_free_bytes)} free of "
        f"{format_bytes(report.vram_total_bytes)})"
    )


# --- runtime -----------------------------------------------------------------------------------------


def _truthy(name: str) -> bool:
    """True when environment variable ``name`` is set to something other than empty/0/false/no/off."""
    return os.environ.get(name, "").strip().lower() not in {"", "0", "false", "no", "off"}


def _colab_module_present() -> bool:
    """True when ``google.colab`` is imported or importable (without importing it)."""
    if sys.modules.get("google.colab") is not None:
        return True
    try:
        return find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no ``google`` package at all, or a module without a spec
        return False


def _ipython_kernel_present() -> bool:
    """True when an IPython kernel runs this code (Jupyter, Colab, Kaggle, papermill)."""
    return in_kernel()


def _detect_runtime() -> tuple[str, str]:
    """Return ``(runtime, what decided it)``. Hosted platforms first, then CI, papermill, a kernel, a script."""
    if os.environ.get("COLAB_RELEASE_TAG"):
        return "colab", "COLAB_RELEASE_TAG"
    if _colab_module_present():
        return "colab", "google.colab importable"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return "kaggle", "KAGGLE_KERNEL_RUN_TYPE"
    for name in ("LIGHTNING_CLOUD_SPACE_ID", "LIGHTNING_CLOUD_PROJECT_ID"):
        if os.environ.get(name):
            return "lightning", name
    if _truthy("CI"):
        return "ci", "CI"
    if _truthy(HEADLESS_ENV_VAR):
        return "papermill", HEADLESS_ENV_VAR
    if _ipython_kernel_present():
        return "jupyter", "IPython kernel"
    return "script", "no notebook marker"


def _is_interactive(runtime: str) -> bool:
    """True when a browser is likely attached: a kernel on a non-headless runtime, no CI or headless marker."""
    if runtime in _HEADLESS_RUNTIMES or _truthy("CI") or _truthy(HEADLESS_ENV_VAR):
        return False
    if runtime == "kaggle" and os.environ.get("KAGGLE_KERNEL_RUN_TYPE", "").strip().lower() == "batch":
        return False  # Kaggle's "Save & Run All"
    return _ipython_kernel_present()


def _check_runtime(runtime: str) -> str:
    """Return the normalized runtime name, or raise ValueError naming the valid ones."""
    name = runtime.strip().lower() if isinstance(runtime, str) else runtime
    if name not in RUNTIMES:
        raise ValueError(
            f"runtime must be one of {', '.join(map(repr, RUNTIMES))}, got {runtime!r}; "
            "pass one of these, or runtime=None to detect it"
        )
    return name


# --- accelerator -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CudaInfo:
    name: str
    capability: tuple[int, int]
    free: int
    total: int
    count: int


def _torch_cuda() -> Any | None:
    """Return the ``torch.cuda`` module, or None when torch is not installed (tests replace this)."""
    if "torch" not in sys.modules and find_spec("torch") is None:
        return None
    import torch

    return torch.cuda


def _cuda_info() -> _CudaInfo | None:
    """Return the current CUDA device's name, capability, free/total memory and the device count, or None."""
    cuda = _torch_cuda()
    if cuda is None or not cuda.is_available():
        return None
    try:
        major, minor = cuda.get_device_capability()
        free, total = cuda.mem_get_info()
        count = cuda.device_count() if hasattr(cuda, "device_count") else 1
        return _CudaInfo(str(cuda.get_device_name()), (int(major), int(minor)), int(free), int(total), int(count))
    except RuntimeError as error:  # a broken driver or a device lost mid-session: report the CPU instead
        message = f"CUDA is present but could not be queried ({error}); reporting the CPU"
        warnings.warn(message, ColabHelpersWarning, stacklevel=3)
        return None


def _mps_available() -> bool:
    """True when torch is installed and Apple's MPS backend is usable."""
    if "torch" not in sys.modules and find_spec("torch") is None:
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _tpu_present() -> bool:
    """True on a TPU VM: torch_xla installed, or TPU device files (``/dev/accel*``, ``/dev/vfio/<n>``)."""
    if find_spec("torch_xla") is not None:
        return True
    if glob.glob("/dev/accel*"):
        return True
    return any(os.path.basename(path).isdigit() for path in glob.glob("/dev/vfio/*"))


# --- machine and packages ----------------------------------------------------------------------------


def _cpu_count() -> int:
    """Return the CPU cores this process may use (the container's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _ram() -> tuple[int, int]:
    """Return ``(total, available)`` RAM in bytes."""
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.total), int(memory.available)


def _package_version(name: str) -> str | None:
    """Return the installed version of distribution ``name`` without importing it, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hub_reachable() -> bool | None:
    """Return whether the Hugging Face Hub answers (cached by ``hub.hub_reachable``), None if unknown."""
    try:
        from .hub import hub_reachable
    except ImportError:
        logger.debug("colab_helpers.runtime.hub is not available; hub reachability not checked")
        return None
    return bool(hub_reachable())


# --- recommendations ---------------------------------------------------------------------------------


def _max_params_b(budget: int, bytes_per_param: float, overhead: int) -> float:
    """Return the largest parameter count (billions) whose memory fits ``budget`` after margin and overhead."""
    usable = budget * _SAFETY_MARGIN - overhead
    return round(max(usable, 0) / bytes_per_param / 1e9, 3)


def _recommend(
    *,
    runtime: str,
    interactive: bool,
    accelerator: str,
    cuda: _CudaInfo | None,
    ram_available: int,
    disk_free: int,
    versions: dict[str, str | None],
    hub: bool | None,
) -> Recommendations:
    """Return the dtype, 4-bit/unsloth availability, size ceilings and notes for these facts."""
    notes: list[str] = []
    bf16 = cuda is not None and cuda.capability[0] >= 8
    if cuda is not None:
        dtype = "bfloat16" if bf16 else "float16"
        budget, basis = cuda.free, "vram"
    else:
        dtype = "float32"
        budget, basis = ram_available, "ram"
    can_4bit = cuda is not None and versions.get("bitsandbytes") is not None
    can_unsloth = cuda is not None and versions.get("unsloth") is not None and cuda.capability[0] >= 7
    dtype_bytes = _DTYPE_BYTES[dtype]

    if cuda is not None:
        cc = "%d.%d" % cuda.capability
        if bf16:
            notes.append(f"{cuda.name}: native bf16 (compute capability {cc}); train in bfloat16, no loss scaling")
        else:
            notes.append(
                f"{cuda.name}: no native bf16 (compute capability {cc}); use float16 with loss scaling, "
                "and lower the learning rate if the loss turns NaN"
            )
        if cuda.capability[0] < 7:
            notes.append(f"compute capability {cc} is below 7.0: unsloth and fast 4-bit kernels are not supported")
        if versions.get("bitsandbytes") is None:
            notes.append("bitsandbytes is not installed: 4-bit (QLoRA) is off; `pip install bitsandbytes` enables it")
        if cuda.free < cuda.total / 2:
            notes.append(
                f"only {format_bytes(cuda.free)} of {format_bytes(cuda.total)} GPU memory is free: an earlier cell "
                "or another process holds the rest (free_memory() or restart the runtime)"
            )
    elif accelerator == "tpu":
        notes.append("TPU found: this suite does not use torch_xla, it runs on the TPU VM's CPU; a GPU is faster")
    elif accelerator == "mps":
        notes.append("Apple MPS: float32 is the safe dtype (half-precision training is unreliable); no 4-bit")
    if cuda is None:
        notes.append("no GPU: stick to models <= ~125M parameters for fine-tuning (each LoRA step takes seconds)")
        if runtime == "colab":
            notes.append("Colab: Runtime > Change runtime type > T4 GPU gives a GPU for free")
    if ram_available < _LOW_RAM:
        notes.append(f"only {format_bytes(ram_available)} RAM available: close other notebooks or restart the runtime")
    if disk_free < _LOW_DISK:
        notes.append(f"only {format_bytes(disk_free)} free on disk: checkpoints and exports may fail; delete old runs")
    if hub is False:
        notes.append("Hugging Face Hub unreachable: the embedded offline model and data will be used")
    if runtime in _HOSTED_RUNTIMES and not interactive:
        notes.append(f"{runtime} without a browser (headless run): downloads are written to files only")

    return Recommendations(
        dtype=dtype,
        can_use_4bit=can_4bit,
        can_use_unsloth=can_unsloth,
        max_params_b_inference=_max_params_b(budget, dtype_bytes * _INFERENCE_FACTOR, _INFERENCE_OVERHEAD),
        max_params_b_lora=_max_params_b(budget, dtype_bytes * _LORA_FACTOR, _TRAINING_OVERHEAD),
        max_params_b_qlora=_max_params_b(budget, _QLORA_BYTES_PER_PARAM, _TRAINING_OVERHEAD) if can_4bit else None,
        memory_basis=basis,
        notes=tuple(notes),
    )


def detect_environment(*, runtime: str | None = None, check_hub: bool = True) -> EnvironmentReport:
    """Return an ``EnvironmentReport`` of this machine.

    ``runtime`` overrides detection (one of ``RUNTIMES``); ``check_hub=False`` skips the hub probe
    (``hub_reachable`` is then None). Probing CUDA creates its context on the current device.
    """
    if runtime is None:
        runtime, detected_by = _detect_runtime()
    else:
        runtime, detected_by = _check_runtime(runtime), "runtime argument"
    interactive = _is_interactive(runtime)

    cuda = _cuda_info()
    if cuda is not None:
        accelerator = "cuda"
    elif _tpu_present():
        accelerator = "tpu"
    elif _mps_available():
        accelerator = "mps"
    else:
        accelerator = "cpu"

    ram_total, ram_available = _ram()
    working_dir = os.getcwd()
    disk_free = int(shutil.disk_usage(working_dir).free)
    versions = {name: _package_version(name) for name in PACKAGES}
    hub = _hub_reachable() if check_hub else None

    recommendations = _recommend(
        runtime=runtime,
        interactive=interactive,
        accelerator=accelerator,
        cuda=cuda,
        ram_available=ram_available,
        disk_free=disk_free,
        versions=versions,
        hub=hub,
    )
    report = EnvironmentReport(
        runtime=runtime,
        interactive=interactive,
        detected_by=detected_by,
        accelerator=accelerator,
        device_name=cuda.name if cuda is not None else None,
        gpu_count=cuda.count if cuda is not None else 0,
        compute_capability=cuda.capability if cuda is not None else None,
        vram_total_bytes=cuda.total if cuda is not None else None,
        vram_free_bytes=cuda.free if cuda is not None else None,
        bf16_supported=cuda is not None and cuda.capability[0] >= 8,
        cpu_count=_cpu_count(),
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        disk_free_bytes=disk_free,
        working_dir=working_dir,
        python_version=platform.python_version(),
        versions=versions,
        hub_reachable=hub,
        recommendations=recommendations,
    )
    logger.debug("detect_environment: %s", report.summary())
    return report
