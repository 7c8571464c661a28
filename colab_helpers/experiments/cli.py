"""Command line: ``python -m colab_helpers runs | sweep | run`` (installed as ``colab-helpers`` too).

    python -m colab_helpers runs --root results --filter-sweep lr_sweep --filter "training.learning_rate<0.001" \\
        --sort-by final_valid_loss --show run_id training.learning_rate final_valid_loss --limit 10
    python -m colab_helpers runs --list-columns
    python -m colab_helpers sweep base.yaml sweep.yaml --dry-run      # the run configs, nothing started
    python -m colab_helpers sweep base.yaml sweep.yaml --root results  # runs them (needs the pipeline)
    python -m colab_helpers run config.yaml --root results
    python -m colab_helpers run config.yaml --target-params 0.7 --axes heads,mlp --recovery distill
    python -m colab_helpers run config.yaml --recovery-text mix --fine-tuning-method full
    colab-helpers --version                                           # "colab-helpers X.Y.Z"

Exit status: 0 on success, 1 when a run of ``run`` or ``sweep`` failed (each failure named on stderr with the path of
its ``error.txt``), 2 for bad input (unknown column, a filter without a value, malformed YAML or runs.csv, a run config
the pipeline would reject: ``sweep --dry-run`` applies the same check as the real sweep).
"""

from __future__ import annotations

import argparse
import difflib
import operator
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "results"
HIDDEN_BY_DEFAULT: tuple[str, ...] = ("env", "config_hash")  # long and rarely read; --show them by name
MAX_CELL = 60  # longer cells are cut in the table (the whole error is in the run's error.txt)
_FILTER = re.compile(r"^(?P<key>.+?)(?P<op>!=|>=|<=|==|=|>|<)(?P<value>.*)$", re.S)


class CliError(Exception):
    """Bad input on the command line: the message goes to stderr and the exit status is 2."""


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``python -m colab_helpers`` (and of the ``colab-helpers`` console script)."""
    from .._version import __version__

    parser = argparse.ArgumentParser(prog=_prog(), description="Track, list and sweep pruning + LoRA runs.")
    parser.add_argument("--version", action="version", version=f"colab-helpers {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{runs,sweep,run}")
    commands.required = True

    runs = commands.add_parser("runs", help="print the runs table of a results dir (runs.csv)")
    runs.add_argument("--root", default=DEFAULT_ROOT, help=f"results dir holding runs.csv (default: {DEFAULT_ROOT})")
    runs.add_argument("--filter-sweep", metavar="NAME", help="only the runs of this sweep")
    runs.add_argument(
        "--filter",
        nargs="+",
        action="extend",
        default=[],
        metavar="COND",
        help="conditions such as model.name=gpt2 'pruning.level>0.2' status!=failed (>=, <= too); numbers "
        "compare as numbers; all must hold; quote those with > or < so the shell does not redirect",
    )
    runs.add_argument("--sort-by", metavar="COL", help="sort by this column (numbers numerically, empty last)")
    runs.add_argument("--descending", action="store_true", help="sort in descending order")
    runs.add_argument("--show", nargs="+", metavar="COL", help="show only these columns, in this order")
    runs.add_argument(
        "--hide",
        nargs="+",
        action="extend",
        default=[],
        metavar="COL",
        help=f"hide these columns ({', '.join(HIDDEN_BY_DEFAULT)} are hidden unless named in --show)",
    )
    runs.add_argument("--limit", type=_non_negative_int, metavar="N", help="print at most N rows")
    runs.add_argument("--list-columns", action="store_true", help="list the columns (and how many runs fill each)")

    sweep = commands.add_parser("sweep", help="run every config of a sweep (BASE.yaml + SWEEP.yaml)")
    sweep.add_argument("base", metavar="BASE.yaml", help="the base run config")
    sweep.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep: parameters, search, num_runs, seed, name")
    sweep.add_argument("--root", default=DEFAULT_ROOT, help=f"results dir (default: {DEFAULT_ROOT})")
    sweep.add_argument("--dry-run", action="store_true", help="print the run configs' parameters, start nothing")
    sweep.add_argument("--max-runtime", type=float, metavar="SECONDS", help="start no new run after this many seconds")
    _add_settings(sweep)

    run = commands.add_parser("run", help="run one config (CONFIG.yaml)")
    run.add_argument("config", metavar="CONFIG.yaml", help="the run config")
    run.add_argument("--root", default=DEFAULT_ROOT, help=f"results dir (default: {DEFAULT_ROOT})")
    _add_settings(run)
    return parser


def _prog() -> str:
    """The command as the user typed it: ``colab-helpers`` from the console script, else ``python -m colab_helpers``."""
    return "colab-helpers" if Path(sys.argv[0]).stem == "colab-helpers" else "python -m colab_helpers"


# run settings the command line may set over the YAML config: option -> ExperimentConfig field
SETTINGS: dict[str, str] = {"--target-params": "target_params", "--axes": "axes", "--recovery": "recovery_method",
                            "--recovery-text": "recovery_text", "--fine-tuning-method": "fine_tuning_method",
                            "--fine-tuning-minutes": "fine_tuning_minutes"}  # fmt: skip


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """Add the options that set a run setting over the config file (absent from ``args`` unless given)."""
    from .config import AXES, METHODS, RECOVERY_METHODS, RECOVERY_TEXTS

    group = parser.add_argument_group("run settings (set over the YAML config, checked like it)")
    group.add_argument("--target-params", dest="target_params", type=_number_or_none("a number in (0, 1]"),
                       default=argparse.SUPPRESS, metavar="SHARE",
                       help="keep this share of the parameters, in (0, 1], pruning across --axes ('none': attention "
                       "heads by pruning_level)")  # fmt: skip
    group.add_argument("--axes", type=_names, default=argparse.SUPPRESS, metavar="AXIS,AXIS",
                       help=f"what --target-params may prune, comma-separated from {','.join(AXES)}")
    group.add_argument("--recovery", dest="recovery_method", choices=RECOVERY_METHODS, default=argparse.SUPPRESS,
                       help="recovery_method: 'lora' (LoRA on the LM loss) or 'distill' (from the unpruned model)")
    group.add_argument("--recovery-text", dest="recovery_text", choices=RECOVERY_TEXTS, default=argparse.SUPPRESS,
                       help="recovery_text: train on the 'dataset', on text the unpruned model writes ('generated'), "
                       "or on both ('mix')")  # fmt: skip
    group.add_argument("--fine-tuning-method", dest="fine_tuning_method", choices=METHODS, default=argparse.SUPPRESS,
                       help="fine_tuning_method: 'lora' (an adapter) or 'full' (every weight)")
    group.add_argument("--fine-tuning-minutes", dest="fine_tuning_minutes", metavar="MINUTES",
                       type=_number_or_none("a number of minutes > 0"), default=argparse.SUPPRESS,
                       help="fine_tuning_minutes: a time budget for recovery and the control, each ('none': no "
                       "budget)")  # fmt: skip


def _number_or_none(what: str) -> Callable[[str], float | None]:
    """An argparse type: a number, or None for 'none' (the setting's default off); ``what`` says which numbers."""

    def parse(text: str) -> float | None:
        if text.strip().lower() == "none":
            return None
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} or 'none', got {text!r}") from None

    return parse


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """Return the run settings given on the command line (``SETTINGS``), by field name; empty when none."""
    return {field: getattr(args, field) for field in SETTINGS.values() if hasattr(args, field)}


def _apply_settings(config: dict[str, Any], args: argparse.Namespace, varied: Sequence[str] = ()) -> dict[str, Any]:
    """Return ``config`` with the command line's run settings set; CliError when the sweep varies one of them."""
    settings = settings_from(args)
    clash = [name for name in settings if name in varied]
    if clash:
        option = next(option for option, field in SETTINGS.items() if field == clash[0])
        raise CliError(f"{option} sets {clash[0]}, which the sweep varies; drop {option} or the sweep parameter")
    return {**config, **settings}


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "runs":
            return _cmd_runs(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        return _cmd_run(args)
    except (CliError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


# --- runs ------------------------------------------------------------------------------------------------
#
# Plain Python over the CSV text (no pandas import): the command answers in a fraction of a second even at
# 10,000 runs. A cell is compared as the text written in runs.csv, or as a number when both sides are numbers.

Rows = list[dict[str, str]]


def _check_columns(names: Sequence[str], columns: Sequence[str], option: str) -> None:
    for name in names:
        if name in columns:
            continue
        close = difflib.get_close_matches(name, list(columns), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise CliError(f"{option}: unknown column {name!r}{hint} (--list-columns lists them all)")


def _as_number(text: str) -> float | None:
    """The number a cell or filter value holds (``"1e-4"``, ``"10"``), or None (text, empty, NaN)."""
    if not text or text[0].isalpha():  # "nan", "inf", "True", words: not numbers to compare
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value else None


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le,
}


def parse_filter(condition: str) -> tuple[str, str, str]:
    """Return ``(column, operator, value)`` of ``"key=value"`` (``= == != > < >= <=``); ``CliError`` otherwise."""
    match = _FILTER.match(condition)
    if match is None or not match["key"].strip():
        raise CliError(
            f"--filter: cannot read {condition!r}; write COLUMN=VALUE, COLUMN!=VALUE, COLUMN>VALUE or COLUMN<VALUE"
        )
    op = "=" if match["op"] == "==" else match["op"]
    key, value = match["key"].strip(), match["value"].strip()
    if not value and op not in ("=", "!="):
        raise CliError(
            f"--filter: {condition!r} has nothing to compare with after {op!r}; write e.g. {key}{op}0.001 "
            f"({key}= matches empty cells, {key}!= filled ones)"
        )
    return key, op, value


def _matches(cell: str, op: str, value: str, number: float | None) -> bool:
    compare = _COMPARE[op]
    if number is not None:
        cell_number = _as_number(cell)
        if cell_number is not None:
            return compare(cell_number, number)
    if op in ("=", "!="):
        if value.lower() in ("true", "false"):
            return compare(cell.lower(), value.lower())
        return compare(cell, value)
    if number is not None or cell == "":  # an order needs a value: text, empty or not, never passes "> 3"
        return False
    return compare(cell, value)  # text order, e.g. started_at>2026-11-01


def apply_filter(columns: Sequence[str], rows: Rows, condition: str) -> Rows:
    """Return the rows that satisfy ``condition``; numbers compare as numbers (``10 > 9``), the rest as text."""
    key, op, value = parse_filter(condition)
    _check_columns([key], columns, "--filter")
    number = _as_number(value)
    return [row for row in rows if _matches(row.get(key, ""), op, value, number)]


def sort_runs(columns: Sequence[str], rows: Rows, column: str, descending: bool = False) -> Rows:
    """Return ``rows`` sorted by ``column``: numerically when all its cells are numbers, empty cells last."""
    _check_columns([column], columns, "--sort-by")
    filled = [row for row in rows if row.get(column, "") != ""]
    empty = [row for row in rows if row.get(column, "") == ""]
    numbers = [_as_number(row[column]) for row in filled]
    if all(number is not None for number in numbers):
        order = sorted(range(len(filled)), key=lambda i: numbers[i], reverse=descending)  # type: ignore[arg-type]
    else:
        order = sorted(range(len(filled)), key=lambda i: filled[i][column], reverse=descending)
    return [filled[i] for i in order] + empty  # sorted() is stable, reversed or not


def select_columns(columns: Sequence[str], show: Sequence[str] | None, hide: Sequence[str]) -> list[str]:
    """Return the columns to print: ``show`` (in that order) or all but the hidden ones."""
    _check_columns(list(show or []), columns, "--show")
    _check_columns(list(hide), columns, "--hide")
    if show:
        return [name for name in show if name not in hide]
    return [name for name in columns if name not in hide and name not in HIDDEN_BY_DEFAULT]


def _display(cell: str) -> str:
    """The cell as printed: floats to 6 significant digits, long text cut at ``MAX_CELL`` characters."""
    if "." in cell or "e" in cell:
        number = _as_number(cell)
        if number is not None:
            return f"{number:.6g}"
    cell = " ".join(cell.split())
    return cell if len(cell) <= MAX_CELL else cell[: MAX_CELL - 3] + "..."


def format_table(columns: Sequence[str], rows: Rows) -> str:
    """Return an aligned text table: numeric columns right-aligned, the others left-aligned."""
    cells = [[_display(row.get(name, "")) for name in columns] for row in rows]
    lines = []
    widths, numeric = [], []
    for index, name in enumerate(columns):
        values = [line[index] for line in cells]
        widths.append(max([len(name), *map(len, values)]))
        numeric.append(all(value == "" or _as_number(value) is not None for value in values))
    for line in [list(columns), *cells]:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(line, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cmd_runs(args: argparse.Namespace) -> int:
    from .runs_table import read_runs_table

    columns, rows = read_runs_table(args.root)
    if args.list_columns:
        width = max((len(name) for name in columns), default=0)
        for name in columns:
            filled = sum(1 for row in rows if row.get(name, "") != "")
            print(f"{name:<{width}}  {filled}/{len(rows)} runs")
        return 0
    if args.filter_sweep is not None:
        rows = [row for row in rows if row.get("sweep", "") == args.filter_sweep]
    for condition in args.filter:
        rows = apply_filter(columns, rows, condition)
    if args.sort_by:
        rows = sort_runs(columns, rows, args.sort_by, args.descending)
    if args.limit is not None:
        rows = rows[: args.limit]
    shown = select_columns(columns, args.show, args.hide)
    if not rows or not shown:
        print("no runs match" if shown else "no columns to show")
        return 0
    print(format_table(shown, rows))
    return 0


# --- sweep and run -----------------------------------------------------------------------------------------


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep_config import load_config, load_sweep, sweep_overrides

    sweep = load_sweep(args.sweep)
    base = _apply_settings(load_config(args.base), args, varied=list(sweep.parameters))
    if args.dry_run:
        from .runs_table import format_value
        from .sweep import plan_sweep

        plan_sweep(base, sweep)  # every run config gets the check the real sweep applies (ValueError: exit 2)
        overrides = sweep_overrides(sweep)
        print(f"sweep {sweep.name!r} ({sweep.search}): {len(overrides)} runs")
        settings = settings_from(args)
        if settings:
            print("every run: " + ", ".join(f"{name}={format_value(value)}" for name, value in settings.items()))
        rows = [{"#": str(i), **{k: format_value(v) for k, v in combo.items()}} for i, combo in enumerate(overrides)]
        print(format_table(["#", *sweep.parameters], rows))
        return 0
    from .sweep import run_sweep

    result = run_sweep(base, sweep, root=args.root, max_runtime=args.max_runtime)
    if result is not None:
        print(result)
    return _report_failures(result, args.root)


def _cmd_run(args: argparse.Namespace) -> int:
    from .sweep_config import load_config

    config = _apply_settings(load_config(args.config), args)
    from .sweep import run_config

    result = run_config(config, root=args.root)
    if result is not None:
        print(result)
    return _report_failures(result, args.root)


def _report_failures(table: Any, root: str) -> int:
    """Return 1 after naming on stderr each failed run of this call (its error and error.txt), else 0.

    ``table`` is the runs table ``run_configs`` returns: ``attrs["run_ids"]`` are this call's runs, so runs that
    failed in an earlier call (and were not redone) do not count.
    """
    run_ids = set(getattr(table, "attrs", {}).get("run_ids", ()))
    if not run_ids or "status" not in getattr(table, "columns", ()):
        return 0
    failed = table[table["run_id"].isin(run_ids) & (table["status"] == "failed")]
    for _, row in failed.iterrows():
        error_file = Path(root).expanduser() / "runs" / str(row["run_id"]) / "error.txt"
        summary = row.get("error", "")
        summary = "" if summary != summary else f": {summary}"  # NaN when the cell is empty
        print(f"error: run {row['run_id']} failed{summary}\n  the full error is in {error_file}", file=sys.stderr)
    if len(failed):
        print(f"error: {len(failed)} of {len(run_ids)} run(s) failed", file=sys.stderr)
        return 1
    return 0
