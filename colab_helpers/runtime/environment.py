"""What are we running on? The runtime, accelerator, machine and package versions, probed once.

``detect_environment()`` returns an :class:`~.environment_report.EnvironmentReport` with the recommendations that
follow. "Which platform" and "is a browser attached" are separate answers: a papermill run inside Colab is
``runtime="colab"`` with ``interactive=False``. torch is imported only inside the probes; unsloth and
bitsandbytes are never imported (their versions come from package metadata).
"""

from __future__ import annotations

import glob
import importlib.metadata
import logging
import os
import platform
import shutil
import sys
import warnings
from dataclasses import dataclass, replace
from importlib.util import find_spec
from typing import Any

from ..errors import ColabHelpersWarning
from .environment_report import EnvironmentReport, recommend
from .kernel import HEADLESS_ENV_VAR, env_flag, headless_marked, in_kernel

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("colab", "kaggle", "lightning", "papermill", "ci", "jupyter", "script")
_HEADLESS_RUNTIMES = frozenset({"papermill", "ci", "script"})
PACKAGES: tuple[str, ...] = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth")


def detect_environment(*, runtime: str | None = None, check_hub: bool = True) -> EnvironmentReport:
    """Return an ``EnvironmentReport`` of this machine, its ``recommendations`` included.

    ``runtime`` overrides detection (one of ``RUNTIMES``); ``check_hub=False`` skips the hub probe
    (``hub_reachable`` is then None). Probing CUDA creates its context on the current device.
    """
    if runtime is None:
        runtime, detected_by = _detect_runtime()
    else:
        runtime, detected_by = _check_runtime(runtime), "runtime argument"
    interactive = _is_interactive(runtime)
    cuda = _cuda_info()
    accelerator = _accelerator(cuda)
    ram_total, ram_available = _ram()
    working_dir = os.getcwd()
    report = EnvironmentReport(
        runtime=runtime,
        interactive=interactive,
        detected_by=detected_by,
        accelerator=accelerator,
        **_cuda_fields(cuda),
        cpu_count=_cpu_count(),
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        disk_free_bytes=int(shutil.disk_usage(working_dir).free),
        working_dir=working_dir,
        python_version=platform.python_version(),
        versions={name: _package_version(name) for name in PACKAGES},
        hub_reachable=_hub_reachable() if check_hub else None,
    )
    report = replace(report, recommendations=recommend(report))
    logger.debug("detect_environment: %s", report.summary())
    return report


# --- runtime -----------------------------------------------------------------------------------------


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
    """Return ``(runtime, what decided it)``. Hosted platforms first, then CI, papermill, a kernel, a script.

    The markers are the environment variables each platform sets in its notebooks (Colab's ``COLAB_GPU`` is set
    on CPU runtimes too, so it says nothing); papermill sets nothing, so our own headless runs set
    ``COLAB_HELPERS_HEADLESS=1``.
    """
    if os.environ.get("COLAB_RELEASE_TAG"):
        return "colab", "COLAB_RELEASE_TAG"
    if _colab_module_present():
        return "colab", "google.colab importable"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return "kaggle", "KAGGLE_KERNEL_RUN_TYPE"
    for name in ("LIGHTNING_CLOUD_SPACE_ID", "LIGHTNING_CLOUD_PROJECT_ID"):
        if os.environ.get(name):
            return "lightning", name
    if env_flag("CI"):
        return "ci", "CI"
    if env_flag(HEADLESS_ENV_VAR):
        return "papermill", HEADLESS_ENV_VAR
    if _ipython_kernel_present():
        return "jupyter", "IPython kernel"
    return "script", "no notebook marker"


def _is_interactive(runtime: str) -> bool:
    """True when a browser is likely attached: a kernel on a non-headless runtime, no CI or headless marker."""
    if runtime in _HEADLESS_RUNTIMES or headless_marked():
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
    """The current CUDA device: its name, compute capability, free and total memory, and how many devices there are."""

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


def _accelerator(cuda: _CudaInfo | None) -> str:
    """Return ``"cuda"``, ``"tpu"``, ``"mps"`` or ``"cpu"``: the first one this machine has."""
    if cuda is not None:
        return "cuda"
    if _tpu_present():
        return "tpu"
    return "mps" if _mps_available() else "cpu"


def _cuda_fields(cuda: _CudaInfo | None) -> dict[str, Any]:
    """Return the report's CUDA fields: the device's figures, or None (0 GPUs, no bf16) without one."""
    return {
        "device_name": cuda.name if cuda is not None else None,
        "gpu_count": cuda.count if cuda is not None else 0,
        "compute_capability": cuda.capability if cuda is not None else None,
        "vram_total_bytes": cuda.total if cuda is not None else None,
        "vram_free_bytes": cuda.free if cuda is not None else None,
        "bf16_supported": cuda is not None and cuda.capability[0] >= 8,
    }


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

