"""The environment report: what :func:`~.environment.detect_environment` found (runtime, accelerator, memory,
package versions), its displays (a table, one line, JSON), and the recommendations that follow from its figures
(dtype, 4-bit, unsloth, a rough largest model size).
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any

from .memory import format_bytes
from .secrets import redact

_HOSTED_RUNTIMES = frozenset({"colab", "kaggle", "lightning"})

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
_ACCELERATOR_NOTES = {  # accelerators this suite does not train on: what it does there instead
    "tpu": "TPU found: this suite does not use torch_xla, it runs on the TPU VM's CPU; a GPU is faster",
    "mps": "Apple MPS: float32 is the safe dtype (half-precision training is unreliable); no 4-bit",
}


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



# --- recommendations ---------------------------------------------------------------------------------


def recommend(report: EnvironmentReport) -> Recommendations:
    """Return the dtype, 4-bit / unsloth availability, size ceilings and notes that follow from ``report``'s figures
    (its own ``recommendations`` are not read)."""
    cuda = report.accelerator == "cuda"
    if cuda:
        dtype = "bfloat16" if report.bf16_supported else "float16"
        budget, basis = int(report.vram_free_bytes or 0), "vram"
    else:
        dtype, budget, basis = "float32", report.ram_available_bytes, "ram"
    can_4bit = cuda and report.versions.get("bitsandbytes") is not None
    major = report.compute_capability[0] if report.compute_capability is not None else 0
    dtype_bytes = _DTYPE_BYTES[dtype]
    return Recommendations(
        dtype=dtype,
        can_use_4bit=can_4bit,
        can_use_unsloth=cuda and report.versions.get("unsloth") is not None and major >= 7,
        max_params_b_inference=_max_params_b(budget, dtype_bytes * _INFERENCE_FACTOR, _INFERENCE_OVERHEAD),
        max_params_b_lora=_max_params_b(budget, dtype_bytes * _LORA_FACTOR, _TRAINING_OVERHEAD),
        max_params_b_qlora=_max_params_b(budget, _QLORA_BYTES_PER_PARAM, _TRAINING_OVERHEAD) if can_4bit else None,
        memory_basis=basis,
        notes=tuple(_accelerator_notes(report) + _machine_notes(report)),
    )


def _max_params_b(budget: int, bytes_per_param: float, overhead: int) -> float:
    """Return the largest parameter count (billions) whose memory fits ``budget`` after margin and overhead."""
    usable = budget * _SAFETY_MARGIN - overhead
    return round(max(usable, 0) / bytes_per_param / 1e9, 3)


def _accelerator_notes(report: EnvironmentReport) -> list[str]:
    """Return the notes on the accelerator: the GPU's dtype, kernels and free memory, or what runs without one."""
    if report.accelerator != "cuda":
        notes = [_ACCELERATOR_NOTES[report.accelerator]] if report.accelerator in _ACCELERATOR_NOTES else []
        notes.append("no GPU: stick to models <= ~125M parameters for fine-tuning (each LoRA step takes seconds)")
        if report.runtime == "colab":
            notes.append("Colab: Runtime > Change runtime type > T4 GPU gives a GPU for free")
        return notes
    name, capability = report.device_name, report.compute_capability or (0, 0)
    cc = "%d.%d" % capability
    if report.bf16_supported:
        notes = [f"{name}: native bf16 (compute capability {cc}); train in bfloat16, no loss scaling"]
    else:
        notes = [f"{name}: no native bf16 (compute capability {cc}); use float16 with loss scaling, "
                 "and lower the learning rate if the loss turns NaN"]  # fmt: skip
    if capability[0] < 7:
        notes.append(f"compute capability {cc} is below 7.0: unsloth and fast 4-bit kernels are not supported")
    if report.versions.get("bitsandbytes") is None:
        notes.append("bitsandbytes is not installed: 4-bit (QLoRA) is off; `pip install bitsandbytes` enables it")
    free, total = report.vram_free_bytes or 0, report.vram_total_bytes or 0
    if free < total / 2:
        notes.append(f"only {format_bytes(free)} of {format_bytes(total)} GPU memory is free: an earlier cell "
                     "or another process holds the rest (free_memory() or restart the runtime)")  # fmt: skip
    return notes


def _machine_notes(report: EnvironmentReport) -> list[str]:
    """Return the notes on RAM, disk, the hub and a hosted runtime without a browser."""
    notes = []
    if report.ram_available_bytes < _LOW_RAM:
        notes.append(f"only {format_bytes(report.ram_available_bytes)} RAM available: close other notebooks or restart "
                     "the runtime")  # fmt: skip
    if report.disk_free_bytes < _LOW_DISK:
        notes.append(f"only {format_bytes(report.disk_free_bytes)} free on disk: checkpoints and exports may fail; "
                     "delete old runs")  # fmt: skip
    if report.hub_reachable is False:
        notes.append("Hugging Face Hub unreachable: the embedded offline model and data will be used")
    if report.runtime in _HOSTED_RUNTIMES and not report.interactive:
        notes.append(f"{report.runtime} without a browser (headless run): downloads are written to files only")
    return notes
