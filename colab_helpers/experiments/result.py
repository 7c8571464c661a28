"""The typed result of one pipeline run, :class:`ExperimentResult`, and its JSON form (``<run>/result.json``).

A run measures three stages, and the control when it ran (:class:`StageMetrics`); it records what was pruned
(:class:`HeadsPruned` or :class:`Compressed`) and each fine-tuning (:class:`Training`). ``to_dict()`` gives the JSON,
``from_dict()`` reads it back (``load()`` from a run folder). :func:`recovered_shares` gives the run's headline metric,
the share of the loss won back: on general (other-domain) perplexity when abilities were measured, and on in-domain
perplexity.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..evaluation.ability import AbilityResult
from ..evaluation.latency import LatencyReport
from ..pruning.reports import CompressReport, PruneReport
from .config import STAGES, ExperimentConfig


def recovered_share(baseline: float, pruned: float, fine_tuned: float) -> float | None:
    """Return the share of the perplexity lost to pruning that fine-tuning won back (None when nothing was lost).

    1.0 = back to the baseline; above 1.0 = better than the unpruned model (fine-tuning also trains it further).
    """
    lost = pruned - baseline
    if not math.isfinite(lost) or lost <= 1e-9 * max(baseline, 1.0):
        return None
    return (pruned - fine_tuned) / lost


def recovered_shares(baseline: StageMetrics, pruned: StageMetrics, fine_tuned: StageMetrics) -> tuple[float | None, float | None]:
    """Return ``(share, in-domain share)`` of the loss won back (:func:`recovered_share`).

    ``share`` is on *general* perplexity (other-domain text, :attr:`StageMetrics.general_ppl`) when every stage
    measured it: recovery on the training domain lowers in-domain perplexity by itself (domain adaptation), which
    general text does not reward. Without abilities it is the in-domain share. The in-domain share is on the
    perplexity of the dataset's validation split, as before.
    """
    in_domain = recovered_share(baseline.perplexity, pruned.perplexity, fine_tuned.perplexity)
    general = [stage.general_ppl for stage in (baseline, pruned, fine_tuned)]
    if any(value is None for value in general):
        return in_domain, in_domain
    return recovered_share(*general), in_domain  # type: ignore[arg-type]


def _rebuild(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild the frozen report dataclass ``cls`` from its ``to_dict()``: derived keys dropped, lists back to tuples;
    a field with a default may be absent (a ``result.json`` written before the field existed)."""

    def tuples(value: Any) -> Any:
        return tuple(tuples(item) for item in value) if isinstance(value, list) else value

    def optional(spec: dataclasses.Field) -> bool:
        return spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING

    return cls(**{spec.name: tuples(data[spec.name]) if str(spec.type).startswith("tuple") else data[spec.name]
                  for spec in dataclasses.fields(cls) if spec.init and not (spec.name not in data and optional(spec))})  # fmt: skip


@dataclass(frozen=True)
class StageMetrics:
    """One stage measured: perplexity on ``eval_tokens`` held-out tokens, the prompt's greedy generation (and the path
    it took: ``as_asked`` or a fallback), parameters, weights as saved (MB), seconds the stage took; latency per
    generated token and the speed-up against the baseline, timed with the other stages (None for the control);
    general ability (other-domain perplexity, zero-shot tasks) when the run measured it (``ability``: its
    ``in_domain_ppl`` is ``perplexity``, the same measurement)."""

    perplexity: float
    eval_tokens: int
    generation: str
    generation_path: str | None
    parameters: int
    weights_mb: float
    seconds: float
    latency: LatencyReport | None = None
    speedup: float | None = None
    ability: AbilityResult | None = None

    @property
    def general_ppl(self) -> float | None:
        """Perplexity on text of other domains (the geometric mean over the texts), None when not measured."""
        if self.ability is None or not self.ability.other_ppl:
            return None
        return self.ability.general_ppl

    @property
    def latency_ms_per_token(self) -> float | None:
        """Median wall milliseconds per generated token (None when not timed)."""
        return self.latency.ms_per_token if self.latency is not None else None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in ("perplexity", "eval_tokens", "generation", "generation_path",
                                                       "parameters", "weights_mb", "seconds")}  # fmt: skip
        if self.latency is not None:
            data.update(latency_ms_per_token=self.latency.ms_per_token, cpu_ms_per_token=self.latency.cpu_ms_per_token,
                        speedup=self.speedup, latency=self.latency.to_dict())  # fmt: skip
        if self.ability is not None:
            data["ability"] = self.ability.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageMetrics:
        latency, ability = data.get("latency"), data.get("ability")
        return cls(**{name: data[name] for name in ("perplexity", "eval_tokens", "generation", "generation_path",
                                                    "parameters", "weights_mb", "seconds")},  # fmt: skip
                   latency=_rebuild(LatencyReport, latency) if latency else None, speedup=data.get("speedup"),
                   ability=AbilityResult.from_dict(ability) if ability else None)  # fmt: skip


@dataclass(frozen=True)
class Training:
    """One fine-tuning of the run: ``recovery_method`` (``lora``: the LM loss, or ``distill`` with its settings in
    ``distill``), what was trained (``fine_tuning_method``: ``lora`` or ``full``) on which text (``recovery_text``, and
    how many ``texts``), steps and seconds, losses, where it ran, its events and files (None where it trained no
    step)."""

    recovery_method: str
    steps: int
    seconds: float
    final_loss: float | None = None
    best_step: int | None = None
    best_eval_loss: float | None = None
    stopped: str | None = None
    device: str | None = None
    backend: str | None = None
    dtype: str | None = None
    load_in_4bit: bool | None = None
    events: int = 0
    event_kinds: tuple[str, ...] = ()
    history_path: str | None = None
    plot_path: str | None = None
    distill: dict[str, Any] | None = None  # DistillConfig.to_dict(): what distillation ran with
    fine_tuning_method: str = "lora"
    recovery_text: str = "dataset"
    texts: int | None = None  # training texts (paragraphs, or generated samples)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "event_kinds": list(self.event_kinds)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Training:
        names = {spec.name for spec in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        return cls(**{**values, "event_kinds": tuple(values.get("event_kinds", ()))})


@dataclass(frozen=True)
class HeadsPruned:
    """What :class:`~.config.HeadPruning` did: ``mask`` ([layers, heads], 1 = pruned) chosen from ``scores``, and
    ``removal`` when the heads were sliced out (None: gated, or nothing to prune)."""

    mask: list[list[int]]
    scores: list[list[float]]
    removal: PruneReport | None = None

    @property
    def heads_pruned(self) -> int:
        return int(sum(map(sum, self.mask)))

    def to_dict(self) -> dict[str, Any]:
        data = {"method": "heads", "heads_pruned": self.heads_pruned, "mask": self.mask, "scores": self.scores}
        return data | ({"report": self.removal.to_dict()} if self.removal is not None else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadsPruned:
        report = data.get("report")
        return cls(data["mask"], data["scores"], _rebuild(PruneReport, report) if report else None)


@dataclass(frozen=True)
class Compressed:
    """What :class:`~.config.Compression` did: ``compress``'s report (per axis and layer, the allocations it tried)."""

    report: CompressReport

    @property
    def heads_pruned(self) -> int:
        """Heads gone, those of removed layers included."""
        return sum(self.report.heads_before) - sum(self.report.heads_after)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "compress", "heads_pruned": self.heads_pruned, **self.report.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Compressed:
        return cls(_rebuild(CompressReport, data))


@dataclass(frozen=True)
class ExperimentResult:
    """One run of the pipeline: its config, the stages measured (``baseline``, ``pruned``, ``fine_tuned``; the
    ``control`` when it ran), what was pruned, each fine-tuning, the share of the loss won back (``recovered_share``:
    on general perplexity when abilities were measured, else in-domain; ``recovered_share_in_domain``: on the
    dataset's validation split, see :func:`recovered_shares`), and its folders."""

    name: str
    config: ExperimentConfig
    baseline: StageMetrics
    pruned: StageMetrics
    fine_tuned: StageMetrics
    pruning: HeadsPruned | Compressed
    training: Training
    recovered_share: float | None
    seconds: float
    output_dir: Path
    model_dir: Path | None = None
    control: StageMetrics | None = None  # the unpruned model fine-tuned as long
    control_training: Training | None = None
    recovered_share_in_domain: float | None = None

    @property
    def stages(self) -> dict[str, StageMetrics]:
        """The three stages by name, in order: ``baseline``, ``pruned``, ``fine_tuned``."""
        return {stage: getattr(self, stage) for stage in STAGES}

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``result.json``."""
        data = {
            "name": self.name, "config": self.config.to_dict(),
            "stages": {stage: metrics.to_dict() for stage, metrics in self.stages.items()},
            "pruning": self.pruning.to_dict(), "training": self.training.to_dict(),
            "recovered_share": self.recovered_share, "recovered_share_in_domain": self.recovered_share_in_domain,
            "seconds": self.seconds, "output_dir": str(self.output_dir),
            "model_dir": str(self.model_dir) if self.model_dir is not None else None,
        }  # fmt: skip
        if self.control is not None:
            data["control"] = {**self.control.to_dict(), "training": self.control_training.to_dict()}  # type: ignore[union-attr]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentResult:
        """Read :meth:`to_dict`'s JSON back (a ``result.json`` of earlier versions too: their share is ``recovery``,
        on in-domain perplexity, and they measured no abilities)."""
        if not isinstance(data, dict) or "stages" not in data or "name" not in data:
            raise ValueError("not a pipeline result (no 'stages'); pass the result.json of a run")
        pruning = data["pruning"]
        control = data.get("control")
        share = data["recovered_share"] if "recovered_share" in data else data.get("recovery")
        config = {"ability": False, **data["config"]}  # a run from before abilities did not measure them
        return cls(
            name=data["name"], config=ExperimentConfig.from_dict(config)[0],
            **{stage: StageMetrics.from_dict(data["stages"][stage]) for stage in STAGES},
            pruning=(Compressed if pruning["method"] == "compress" else HeadsPruned).from_dict(pruning),
            training=Training.from_dict(data["training"]),
            recovered_share=share, recovered_share_in_domain=data.get("recovered_share_in_domain", share),
            seconds=data["seconds"], output_dir=Path(data["output_dir"]),
            model_dir=Path(data["model_dir"]) if data.get("model_dir") else None,
            control=StageMetrics.from_dict(control) if control else None,
            control_training=Training.from_dict(control["training"]) if control else None,
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExperimentResult:
        """Read a saved run back: its folder, or its ``result.json``."""
        source = Path(path).expanduser()
        source = source / "result.json" if source.is_dir() else source
        if not source.is_file():
            raise FileNotFoundError(f"no saved run at {str(source)!r}: pass a run folder or its result.json")
        try:
            return cls.from_dict(json.loads(source.read_text(encoding="utf-8")))
        except ValueError as error:
            raise ValueError(f"{str(source)!r}: {error}") from None
