"""Callbacks of the training loop, minGPT style (the loop knows nothing of plots or progress bars): the
:class:`Callback` hooks, the live plot, the progress bar, gradient files, and which of them a run installs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .config import FineTuneConfig

HOOKS = ("on_train_begin", "on_step_end", "on_gradients", "on_eval", "on_event", "on_train_end", "on_train_error")
PLOT_FILE = "training.png"  # the live plot, in output_dir
GRADIENT_DIR = "gradients"  # GradientCallback's files, in output_dir

# event kind -> LivePlot mark kind (its colours: nan red, fallback orange, rollback purple)
_MARK_KINDS = {
    "nan_skip": "nan",
    "rollback": "rollback",
    "micro_batch_halved": "rollback",
    "oom_retry": "fallback",
    "cpu_fallback": "fallback",
    "early_stop": "event",
    "stopped": "event",
    "failed": "event",
    "resumed": "checkpoint",
}
_MARK_LABELS = {
    "nan_skip": "NaN",
    "rollback": "rollback",
    "micro_batch_halved": "batch/2",
    "oom_retry": "OOM",
    "cpu_fallback": "CPU",
    "early_stop": "early stop",
    "stopped": "stopped",
    "failed": "failed",
    "resumed": "resumed",
}


class Callback:
    """Base class with every hook as a no-op: subclass it and override what you need.

    A callback is any object with some of these methods. ``row`` is the step's history dict (``step``, ``loss``,
    ``lr``, ``grad_norm``, ``micro_batch_size``, ``skipped``, ``device``, ``seconds``; after an evaluation also
    ``eval_loss`` and ``eval_ppl``), ``event`` a dict with ``step``, ``kind`` and ``message``. Exceptions raised by a
    callback propagate: a broken callback should be seen, not silently ignored. In a data-parallel run callbacks
    run on every rank with the same rows and events (as transformers' ``TrainerCallback`` do): one that writes files
    should act only where ``tuner.is_main_process``.
    """

    def on_train_begin(self, tuner: Any) -> None:
        """Called once before the first step (after a resume has been loaded)."""

    def on_step_end(self, tuner: Any, row: dict[str, Any]) -> None:
        """Called after every step, skipped ones included."""

    def on_gradients(self, tuner: Any, row: dict[str, Any]) -> None:
        """Called after each finite update, while the parameters still hold the step's clipped gradients."""

    def on_eval(self, tuner: Any, row: dict[str, Any]) -> None:
        """Called after each evaluation."""

    def on_event(self, tuner: Any, event: dict[str, Any]) -> None:
        """Called for each event (NaN skip, rollback, learning-rate or micro-batch halving, fallback, stop)."""

    def on_train_end(self, tuner: Any, result: Any) -> None:
        """Called once with the :class:`FineTuneResult`."""

    def on_train_error(self, tuner: Any, exc: BaseException) -> None:
        """Called when training ends with an exception, before it propagates."""


class LivePlotCallback(Callback):
    """Feed a :class:`colab_helpers.LivePlot`: train/eval loss, eval perplexity, learning rate, gradient norm.

    Events are drawn as vertical marks. LivePlot throttles its own redraws; at the end the figure is written to
    ``path`` (default: ``<output_dir>/training.png``) and ``self.path`` holds where.
    """

    def __init__(self, path: str | Path, *, min_interval: float = 10.0, title: str = "LoRA fine-tuning") -> None:
        from ..plots.live import LivePlot

        self.plot = LivePlot(
            [("loss", "eval_loss"), "eval_ppl", "lr", "grad_norm"], title=title, path=path, min_interval=min_interval
        )
        self.path: Path | None = None

    def on_train_begin(self, tuner: Any) -> None:
        # a resumed run: draw what the checkpoint already holds, so the figure covers the whole run
        for row in tuner.history:
            self.on_step_end(tuner, row)
            if "eval_loss" in row:
                self.on_eval(tuner, row)
        for event in tuner.events:
            self.on_event(tuner, event)

    def on_step_end(self, tuner: Any, row: dict[str, Any]) -> None:
        self.plot.update(row["step"], loss=row["loss"], lr=row["lr"], grad_norm=row["grad_norm"])

    def on_eval(self, tuner: Any, row: dict[str, Any]) -> None:
        self.plot.update(row["step"], eval_loss=row["eval_loss"], eval_ppl=row["eval_ppl"])

    def on_event(self, tuner: Any, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind in _MARK_KINDS:
            self.plot.mark(event["step"], _MARK_LABELS[kind], kind=_MARK_KINDS[kind])

    def on_train_end(self, tuner: Any, result: Any) -> None:
        self.path = self.plot.close()
        result.plot_path = self.path

    def on_train_error(self, tuner: Any, exc: BaseException) -> None:
        self.path = self.plot.close()  # the figure up to the failure is what one wants to look at


class ProgressCallback(Callback):
    """A ``tqdm.auto`` bar over the steps showing the current loss (redrawn by tqdm's own throttle)."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "fine-tune") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=True, mininterval=0.5)

    def on_step_end(self, tuner: Any, row: dict[str, Any]) -> None:
        loss = row["loss"]
        self.bar.set_postfix_str(f"loss {loss:.4f}" if math.isfinite(loss) else "loss nan (skipped)", refresh=False)
        _set_total(self.bar, tuner.max_steps)  # a time budget (max_minutes) re-plans the run's last step as it goes
        self.bar.update(1)

    def on_eval(self, tuner: Any, row: dict[str, Any]) -> None:
        self.bar.set_postfix_str(f"loss {row['loss']:.4f} eval {row['eval_loss']:.4f}", refresh=False)

    def on_train_end(self, tuner: Any, result: Any) -> None:
        self.bar.close()

    def on_train_error(self, tuner: Any, exc: BaseException) -> None:
        self.bar.close()


def _set_total(bar: Any, total: int) -> None:
    """Change a tqdm bar's total without starting it over (``reset`` would zero its count and rate): the text bar
    reads the attribute, a notebook bar draws its widget's ``max``."""
    if bar.total == total:
        return
    bar.total = total
    container = getattr(bar, "container", None)  # tqdm.notebook: (label, progress widget, text)
    if container is not None:
        container.children[1].max = total


class GradientCallback(Callback):
    """Save the gradient norms of the LoRA weights every ``every`` steps (the trainer's checkpoint steps) to
    ``directory`` with :func:`~colab_helpers.finetune.gradients.save_gradients`."""

    def __init__(self, directory: str | Path, every: int) -> None:
        self.directory = Path(directory)
        self.every = every

    def on_gradients(self, tuner: Any, row: dict[str, Any]) -> None:
        if row["step"] % self.every == 0:
            from .gradients import save_gradients

            save_gradients(self.directory, tuner.model, row["step"])


class Hooks:
    """The hook methods of a run's callbacks, by hook name, in the callbacks' order."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        callbacks = list(callbacks)
        self._by_name: dict[str, list[Callable[..., None]]] = {
            name: [getattr(cb, name) for cb in callbacks if callable(getattr(cb, name, None))] for name in HOOKS
        }

    def functions(self, hook: str) -> list[Callable[..., None]]:
        """Return the callbacks' methods of ``hook``."""
        return self._by_name.get(hook, [])

    def __call__(self, hook: str, tuner: Any, *args: Any) -> None:
        """Call every callback's ``hook(tuner, *args)``; an exception propagates."""
        for fn in self.functions(hook):
            fn(tuner, *args)


def run_callbacks(callbacks: Iterable[Any], output_dir: Path, config: FineTuneConfig, *, main_process: bool,
                  max_steps: int, step: int, live_plot: bool, progress: bool) -> list[Any]:  # fmt: skip
    """Return a run's callbacks: ``callbacks`` (on every rank: they can check ``tuner.is_main_process``), then on the
    main process the progress bar, the live plot (``<output_dir>/training.png``) and, with the config's
    ``save_gradients`` and ``checkpoint_every``, the gradient files."""
    installed = list(callbacks)
    if progress and main_process:
        installed.append(ProgressCallback(max_steps, initial=min(step, max_steps)))
    if live_plot and main_process:
        installed.append(LivePlotCallback(output_dir / PLOT_FILE, min_interval=config.plot_every_seconds,
                                          title=config.plot_title))  # fmt: skip
    if config.save_gradients and config.checkpoint_every and main_process:
        installed.append(GradientCallback(output_dir / GRADIENT_DIR, every=config.checkpoint_every))
    return installed
