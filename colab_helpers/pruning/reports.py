"""What each removal reports: :class:`ParameterChange` (architecture, parameters before and after) is the base of
:class:`PruneReport` (heads), :class:`MlpReport` (MLP channels), :class:`LayerReport` (whole layers) and
:class:`CompressReport` (all three to a parameter target); each adds what it removed and a one-line summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class ParameterChange:
    """The architecture and the parameters before and after; ``to_dict`` gives JSON-able builtins."""

    architecture: str
    params_before: int
    params_after: int

    title: ClassVar[str] = ""  # the heading of the notebook display; the class name when empty

    @property
    def kept_share(self) -> float:
        """Parameters after over parameters before."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def removed_share(self) -> float:
        """Share of the parameters removed."""
        return (self.params_before - self.params_after) / self.params_before if self.params_before else 0.0

    def parameters_text(self) -> str:
        """``parameters 1,000 -> 800 (-20.0%)``."""
        return f"parameters {self.params_before:,} -> {self.params_after:,} (-{self.removed_share:.1%})"

    def summary(self) -> str:  # pragma: no cover - every report says what it removed
        return f"{self.architecture}: {self.parameters_text()}"

    def derived(self) -> dict[str, Any]:
        """Values computed from the fields that ``to_dict`` adds (none here)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-able builtins (lists for tuples) plus its derived values."""
        return {**asdict(self), **self.derived()}

    def _repr_markdown_(self) -> str:
        return f"**{self.title or type(self).__name__}** · {self.summary()}"


@dataclass(frozen=True)
class RemovalReport(ParameterChange):
    """A removal of one kind of unit: ``removed_params`` is the parameters it took."""

    removed_params: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed_params", self.params_before - self.params_after)


@dataclass(frozen=True)
class PruneReport(RemovalReport):
    """What :func:`~.removal.remove_heads` did, per layer and in parameters.

    ``padding_heads[i]`` counts the zeroed padding heads layer ``i`` now holds: heads pruned (by this mask or an
    earlier one) but kept to even grouped-query groups or to keep an emptied layer runnable; they still count in
    ``query_heads_after`` and compute nothing.
    ``kept_heads[i]`` lists the original indices (in the unpruned model) of the heads layer ``i`` now holds.
    """

    query_heads_before: tuple[int, ...]
    query_heads_after: tuple[int, ...]
    kv_heads_before: tuple[int, ...]
    kv_heads_after: tuple[int, ...]
    padding_heads: tuple[int, ...]
    kept_heads: tuple[tuple[int, ...], ...]

    title: ClassVar[str] = "Removal"

    @property
    def removed_heads(self) -> tuple[int, ...]:
        """Query heads physically removed, per layer."""
        return tuple(b - a for b, a in zip(self.query_heads_before, self.query_heads_after))

    @property
    def total_padding(self) -> int:
        """Pruned heads kept as zeroed padding, over all layers."""
        return sum(self.padding_heads)

    def derived(self) -> dict[str, Any]:
        return {"removed_heads": list(self.removed_heads), "total_padding": self.total_padding}

    def summary(self) -> str:
        """One line: heads removed, padding kept, parameters before -> after."""
        padding = f" ({self.total_padding} kept as zeroed padding)" if self.total_padding else ""
        return (
            f"{self.architecture}: removed {sum(self.removed_heads)} of {sum(self.query_heads_before)} query heads"
            f"{padding}; {self.parameters_text()}"
        )

    def per_layer(self) -> list[dict[str, int]]:
        """Return one row per layer (for ``pandas.DataFrame(report.per_layer())``)."""
        return [
            {
                "layer": i,
                "query_heads_before": self.query_heads_before[i],
                "query_heads_after": self.query_heads_after[i],
                "kv_heads_before": self.kv_heads_before[i],
                "kv_heads_after": self.kv_heads_after[i],
                "removed_heads": self.removed_heads[i],
                "padding_heads": self.padding_heads[i],
            }
            for i in range(len(self.query_heads_before))
        ]


@dataclass(frozen=True)
class MlpReport(RemovalReport):
    """What :func:`~.mlp.remove_mlp_channels` did: channels per layer before and after."""

    sizes_before: tuple[int, ...] = ()
    sizes_after: tuple[int, ...] = ()

    def summary(self) -> str:
        before, after = sum(self.sizes_before), sum(self.sizes_after)
        return f"{self.architecture}: removed {before - after} of {before} MLP channels; {self.parameters_text()}"


@dataclass(frozen=True)
class LayerReport(RemovalReport):
    """What :func:`~.layers.remove_layers` did: ``removed`` and ``kept`` are indices in the *original* model."""

    layers_before: int = 0
    removed: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()

    def summary(self) -> str:
        return (
            f"{self.architecture}: removed layers {list(self.removed)} ({self.layers_before} -> {len(self.kept)}); "
            f"{self.parameters_text()}"
        )


@dataclass(frozen=True)
class CompressReport(ParameterChange):
    """What :func:`~.compress.compress` removed, per axis and per layer, and what it predicts for speed.

    ``removed_params`` maps each axis to the parameters it removed; ``kept_layers`` / ``removed_layers`` are
    original layer indices; ``heads_*`` / ``mlp_*`` have one entry per *original* layer (0 for removed layers
    after). ``predicted_speedup`` is the ratio of forward FLOPs at ``seq_len`` tokens (:func:`~.flops.forward_flops`).
    ``candidates`` holds every allocation tried: its shares per axis, parameters after, calibration loss, on how
    many evaluation batches it was measured (the finalists on all) and whether it was chosen. ``strategies`` names
    how each axis was scored. ``reconstructed``: the output projections of the layers that lost heads or MLP
    channels were refit by least squares; ``output_error`` then gives, per axis, their squared output error on
    the calibration tokens as a share of the output's energy, after plain removal and after the refit.
    """

    target_params: float
    axes: tuple[str, ...]
    removed_params: dict[str, int]
    shares: dict[str, float]
    heads_before: tuple[int, ...]
    heads_after: tuple[int, ...]
    mlp_before: tuple[int, ...]
    mlp_after: tuple[int, ...]
    removed_layers: tuple[int, ...]
    kept_layers: tuple[int, ...]
    flops_before: float
    flops_after: float
    seq_len: int
    loss_before: float
    loss_after: float
    candidates: tuple[dict[str, Any], ...]
    seconds: float
    strategies: dict[str, str] = field(default_factory=dict)
    reconstructed: bool = False
    output_error: dict[str, dict[str, float]] = field(default_factory=dict)
    predicted_speedup: float = field(init=False)

    title: ClassVar[str] = "Compression"

    def __post_init__(self) -> None:
        object.__setattr__(self, "predicted_speedup", self.flops_before / self.flops_after if self.flops_after else 0.0)

    def summary(self) -> str:
        """One line: parameters, what each axis gave, layers removed, predicted speed-up, calibration loss."""
        parts = ", ".join(f"{axis} -{n:,}" for axis, n in self.removed_params.items() if n)
        layers = f"; layers removed {list(self.removed_layers)}" if self.removed_layers else ""
        if self.reconstructed:
            errors = ", ".join(f"{axis} {e['removed']:.0%} -> {e['reconstructed']:.0%}"
                               for axis, e in self.output_error.items())  # fmt: skip
            layers += f"; output projections refit by least squares (output error {errors})"
        return (
            f"{self.architecture}: parameters {self.params_before:,} -> {self.params_after:,} "
            f"({self.kept_share:.1%} kept, target {self.target_params:.1%}; {parts or 'nothing removed'}){layers}; "
            f"predicted forward speed-up {self.predicted_speedup:.2f}x; calibration loss {self.loss_before:.3f} -> "
            f"{self.loss_after:.3f}"
        )

    def derived(self) -> dict[str, Any]:
        return {"kept_share": self.kept_share, "summary": self.summary()}

    def per_layer(self) -> list[dict[str, Any]]:
        """One row per original layer: heads and MLP channels before/after, whether the layer was removed."""
        return [
            {
                "layer": i,
                "removed": i in self.removed_layers,
                "heads_before": self.heads_before[i],
                "heads_after": self.heads_after[i],
                "mlp_before": self.mlp_before[i],
                "mlp_after": self.mlp_after[i],
            }
            for i in range(len(self.heads_before))
        ]
