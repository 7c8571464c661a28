"""Get results off the runtime: one zip of a run, a download that suits where we run, and a copy to Drive.

:func:`bundle` zips a results folder (no credentials, no secret values, weights only when asked);
:func:`download` sends a file or a bundled folder to the browser on Colab, shows a link in other notebooks and
logs the path without a browser; :func:`persist_to_drive` and :func:`drive_results_dir` keep results on Google
Drive, which survives Colab's resets. IPython and ``google.colab`` are imported by the functions that use them.
"""

from __future__ import annotations

import fnmatch
import html
import logging
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from ..errors import ColabHelpersWarning
from .files import atomic_path, ensure_writable_parent
from .kernel import headless_marked
from .kernel import in_kernel as _in_kernel
from .secrets import NAME_MARKER, SecretCheckError, file_contains_secret, redact, scrub_bytes

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES: frozenset[str] = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".onnx", ".h5", ".msgpack"}
)
# Folders of training checkpoints (``checkpoint-500``, ``checkpoints``): weights and optimizer state.
_CHECKPOINT_DIRS: tuple[str, ...] = ("checkpoint", "checkpoint-*", "checkpoints", "ckpt", "ckpts")
# Files that may hold credentials: never bundled or copied, whatever their content.
_CREDENTIAL_PATTERNS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "*.env",
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".pypirc",
    "kaggle.json",
    "*token*",
    "*secret*",
    "*credential*",
    "*password*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
)
# Files of a saved tokenizer match "*token*" but hold no credentials.
_TOKENIZER_FILES: tuple[str, ...] = ("tokenizer*", "special_tokens_map.json", "added_tokens.json")
_SKIPPED_DIRS: frozenset[str] = frozenset({"__pycache__", ".git", ".ipynb_checkpoints", ".cache", ".Trash-0"})
_STORED_SUFFIXES: frozenset[str] = WEIGHT_SUFFIXES | {".png", ".jpg", ".jpeg", ".gif", ".zip", ".gz", ".npz"}
_BUNDLE_SUFFIX = "-bundle.zip"
_DRIVE_MOUNT = "/content/drive"

DownloadHow = Literal["colab", "link", "logged"]


def is_credential_file(name: str) -> bool:
    """True when a file called ``name`` may hold credentials (``.env``, ``.netrc``, ``*token*`` ...)."""
    lowered = name.lower()
    if any(fnmatch.fnmatchcase(lowered, pattern) for pattern in _TOKENIZER_FILES):
        return False
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in _CREDENTIAL_PATTERNS)


def _is_weights(relative: Path) -> bool:
    """True for weight files and for anything inside a checkpoint folder."""
    if relative.suffix.lower() in WEIGHT_SUFFIXES:
        return True
    return any(
        fnmatch.fnmatchcase(part.lower(), pattern) for part in relative.parts[:-1] for pattern in _CHECKPOINT_DIRS
    )


def _is_final_adapter(relative: Path) -> bool:
    """True for a saved LoRA adapter outside checkpoints: small (MBs) and the thing people share."""
    return relative.name.startswith("adapter_model.") and not _is_weights(relative.with_suffix(".txt"))


def _is_temporary(name: str) -> bool:
    """True for our own temporary files (``.x.tmp`` from atomic writes, write probes) and editor leftovers."""
    return (name.startswith(".") and name.endswith(".tmp")) or name.startswith(".write-probe-") or name.endswith("~")


def _walk(root: Path) -> list[Path]:
    """Return every regular file below ``root`` (symlinks and skipped folders left out), sorted by relative path."""
    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in filenames:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                logger.debug("bundle: skipping %s (a link or not a regular file)", path)
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _plan(
    root: Path, output: Path, *, include_weights: bool, max_bytes: int | None
) -> tuple[list[tuple[Path, Path]], dict[str, list[str]]]:
    """Decide what goes into the zip: return ``[(file, path relative to root)]`` and the skipped names by reason."""
    chosen: list[tuple[Path, Path]] = []
    skipped: dict[str, list[str]] = {"weights": [], "too big": [], "credentials": []}
    resolved_output = output.resolve()
    for path in _walk(root):
        relative = path.relative_to(root)
        name = relative.as_posix()
        if path.resolve() == resolved_output or path.name.endswith(_BUNDLE_SUFFIX) or _is_temporary(path.name):
            continue
        if is_credential_file(path.name):
            skipped["credentials"].append(name)
        elif _is_weights(relative) and not include_weights and not _is_final_adapter(relative):
            skipped["weights"].append(name)
        elif max_bytes is not None and path.stat().st_size > max_bytes:
            skipped["too big"].append(f"{name} ({path.stat().st_size / 2**20:.1f} MB)")
        else:
            chosen.append((path, relative))
    return chosen, skipped


def _member_names(top: str, chosen: list[tuple[Path, Path]]) -> list[str]:
    """Zip member names, ``top/relative``, with a secret value in any part replaced by ``REDACTED`` (kept unique)."""
    plain = [f"{top}/{relative.as_posix()}" for _, relative in chosen]
    taken = {name for name in plain if redact(name, NAME_MARKER) == name}
    names = []
    for name in plain:
        clean = redact(name, NAME_MARKER)
        if clean != name:
            candidate, n = clean, 2
            while candidate in taken:  # another file already has this name
                path = PurePosixPath(clean)
                candidate, n = str(path.with_name(f"{path.stem}-{n}{path.suffix}")), n + 1
            clean = candidate
            taken.add(clean)
        names.append(clean)
    return names


def _add(archive: zipfile.ZipFile, path: Path, relative: Path, arcname: str, outcome: dict[str, list[str]]) -> None:
    """Add one file: weights streamed as they are; other files read, checked for secrets and redacted.

    ``outcome`` collects the member names redacted, withheld (a secret that cannot be cut out) and unchecked.
    """
    compress = zipfile.ZIP_STORED if path.suffix.lower() in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
    if _is_weights(relative):  # streamed, not opened; a checkpoint's training_args.bin may hold hub_token
        if file_contains_secret(path):
            outcome["withheld"].append(arcname)
        else:
            archive.write(path, arcname, compress_type=compress)
        return
    data = path.read_bytes()
    try:
        clean = scrub_bytes(data, path.name)
    except SecretCheckError as exc:
        if exc.found:
            outcome["withheld"].append(arcname)
        else:
            outcome["unchecked"].append(f"{arcname} ({exc.reason})")
        return
    if clean is not data:
        outcome["redacted"].append(arcname)
    info = zipfile.ZipInfo.from_file(path, arcname)
    info.compress_type = compress
    archive.writestr(info, clean)


def default_bundle_path(results_dir: str | os.PathLike[str]) -> Path:
    """Return where :func:`bundle` writes by default: ``<results_dir>/<folder name>-bundle.zip``."""
    root = Path(results_dir).expanduser()
    return root / f"{redact(root.resolve().name, NAME_MARKER)}{_BUNDLE_SUFFIX}"


def bundle(
    results_dir: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    include_weights: bool = False,
    max_file_mb: float | None = 50,
) -> Path:
    """Zip a run's results and return the zip's path (by default ``<results_dir>/<name>-bundle.zip``).

    Everything below ``results_dir`` goes in, in sorted order under a top folder named after it, except:
    weights (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.gguf``, ... and checkpoint folders) unless
    ``include_weights=True`` (a final LoRA adapter, ``adapter_model.*`` outside checkpoints, is small and goes in); files over ``max_file_mb`` (one warning lists them; ``None`` means no limit);
    files that may hold credentials (``.env``, ``.netrc``, ``.git-credentials``, ``*token*`` other than
    tokenizer files ...), always; earlier bundles, temporary files, links, caches.

    No secret value (of ``HF_TOKEN``, ``WANDB_API_KEY`` ... in the environment) goes into the zip: in text files
    (UTF-8, UTF-16 / UTF-32 with or without byte-order mark, latin-1 ...) it is replaced by ``***`` in the
    file's own encoding; gzip, bzip2, xz, zip and tar files are opened, redacted inside and packed again; a
    file or folder whose *name* holds it goes in renamed, the value replaced by ``REDACTED`` (and the zip's
    default name likewise). Left out, with one warning per reason naming them: binary files holding a secret
    value, and files that cannot be checked (corrupt or unopenable compressed files such as ``.7z``,
    ``.zst``). Weights are searched as they are, not opened: one holding a secret value (a checkpoint's
    ``training_args.bin`` with ``hub_token``) is left out. With no secret value set, files go in as they are.

    The zip is written to a temporary file and renamed, so a failure leaves no partial zip behind;
    ``PermissionError`` naming the zip, before any work, when its folder is not writable.
    """
    root, target = _bundle_paths(results_dir, output, max_file_mb)
    ensure_writable_parent(target)
    max_bytes = None if max_file_mb is None else int(max_file_mb * 2**20)
    chosen, skipped = _plan(root, target, include_weights=include_weights, max_bytes=max_bytes)

    names = _member_names(redact(root.resolve().name, NAME_MARKER), chosen)
    outcome: dict[str, list[str]] = {"redacted": [], "withheld": [], "unchecked": []}
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for arcname, (path, relative) in sorted(zip(names, chosen), key=lambda pair: pair[0]):
                _add(archive, path, relative, arcname, outcome)
    _warn_left_out(skipped, outcome, max_file_mb)
    _log_bundle(target, names, chosen, skipped, outcome)
    return target


def _bundle_paths(
    results_dir: str | os.PathLike[str], output: str | os.PathLike[str] | None, max_file_mb: float | None
) -> tuple[Path, Path]:
    """Check ``bundle``'s arguments; return ``(the results folder, the zip to write)``."""
    root = Path(results_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"results dir {str(root)!r} does not exist; run the cells that write results first, "
            "or pass the folder that holds them, e.g. bundle('results')"
        )
    if not root.is_dir():
        raise NotADirectoryError(
            f"results dir {str(root)!r} is a file; pass its folder, or download the file itself with download()"
        )
    if max_file_mb is not None and not max_file_mb > 0:
        raise ValueError(f"max_file_mb must be > 0 or None (no limit), got {max_file_mb}; try max_file_mb=50")
    target = Path(output).expanduser() if output is not None else default_bundle_path(root)
    if target.suffix.lower() != ".zip":
        raise ValueError(f"output must end in .zip, got {str(target)!r}; e.g. output='results.zip'")
    return root, target


def _warn_left_out(skipped: dict[str, list[str]], outcome: dict[str, list[str]], max_file_mb: float | None) -> None:
    """Warn once per reason a file was left out: too big, may hold credentials, cannot be checked for secrets."""
    shown = {reason: [redact(name, NAME_MARKER) for name in found] for reason, found in skipped.items()}
    left_out = shown["credentials"] + outcome["withheld"]
    warnings_by_reason = [
        (shown["too big"], f"over {max_file_mb} MB", "; pass max_file_mb=None to include them, or use persist_to_drive()"),
        (left_out, "that may hold credentials", ""),
        (outcome["unchecked"], "it cannot check for secret values", "; store them as text, .gz, .bz2, .xz, .zip or "
         ".tar to include them, or share them another way"),
    ]  # fmt: skip
    for names, why, fix in warnings_by_reason:
        if names:  # stacklevel 3: the warning points at bundle's caller
            warnings.warn(f"bundle left out {len(names)} file(s) {why}: {', '.join(names)}{fix}",
                          ColabHelpersWarning, stacklevel=3)  # fmt: skip


def _log_bundle(
    target: Path,
    names: list[str],
    chosen: list[tuple[Path, Path]],
    skipped: dict[str, list[str]],
    outcome: dict[str, list[str]],
) -> None:
    """Log what ``bundle`` renamed, redacted, left out as weights and wrote."""
    renamed = [new for new, (_, relative) in zip(names, chosen) if not new.endswith("/" + relative.as_posix())]
    if renamed:
        logger.info("bundle: redacted secret values in %d file name(s): %s", len(renamed), ", ".join(renamed))
    if outcome["redacted"]:
        redacted = outcome["redacted"]
        logger.info("bundle: redacted secret values in %d file(s): %s", len(redacted), ", ".join(redacted))
    if skipped["weights"]:
        logger.info("bundle: left out %d weight file(s); pass include_weights=True to add them", len(skipped["weights"]))
    written = len(chosen) - len(outcome["withheld"]) - len(outcome["unchecked"])
    logger.info("bundle: %d file(s) written to %s", written, redact(str(target), NAME_MARKER))


# --- where are we? -----------------------------------------------------------------------------------


def _colab() -> Any | None:
    """Return the ``google.colab`` module when it is imported or importable, else None."""
    module = sys.modules.get("google.colab")
    if module is not None:
        return module
    try:
        import google.colab as module  # type: ignore[import-not-found,no-redef]
    except ImportError:
        return None
    return module


def _display(obj: Any) -> None:
    """Show ``obj`` in the notebook (a separate function so tests can watch it)."""
    from IPython.display import display

    display(obj)


def _link(path: Path) -> Any:
    """Return a ``FileLink`` when ``path`` is below the working directory (where links resolve), else HTML text."""
    from IPython.display import HTML, FileLink

    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved.is_relative_to(cwd):
        return FileLink(resolved.relative_to(cwd).as_posix(), result_html_prefix="Download: ")
    return HTML(f"Saved to <code>{html.escape(str(resolved))}</code>: open it from the file browser.")


def download(path: str | os.PathLike[str]) -> DownloadHow:
    """Offer ``path`` for download the way this runtime allows, and return how: ``"colab"``, ``"link"`` or ``"logged"``.

    A folder is bundled first (see :func:`bundle`). On Colab with a browser, ``google.colab.files.download``;
    in another notebook (Jupyter, Kaggle, Lightning), a link to the file; without a browser (papermill, CI,
    a script), the path is logged at INFO level. The path is always logged as well, because
    ``files.download`` silently does nothing when no browser is attached.
    """
    target = Path(path).expanduser()
    if not target.exists():
        raise FileNotFoundError(f"cannot download {str(target)!r}: it does not exist; check the path or write it first")
    if target.is_dir():
        try:
            target = bundle(target)
        except PermissionError as exc:
            raise PermissionError(
                f"{exc}; or bundle it elsewhere and download that: download(bundle({str(target)!r}, "
                "output='results-bundle.zip'))"
            ) from exc
    logger.info("download: %s (%.1f MB)", redact(str(target.resolve()), NAME_MARKER), target.stat().st_size / 2**20)
    if not _in_kernel() or headless_marked():
        return "logged"
    colab = _colab()
    if colab is not None:
        from google.colab import files  # type: ignore[import-not-found]

        files.download(str(target))
        return "colab"
    _display(_link(target))
    return "link"


# --- Google Drive ------------------------------------------------------------------------------------


def _ignore_credentials(directory: str, names: list[str]) -> set[str]:
    """``shutil.copytree`` filter: leave out credential files, temporary files and caches."""
    return {n for n in names if is_credential_file(n) or _is_temporary(n) or n in _SKIPPED_DIRS}


def _copy_file_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` onto ``target`` through a temporary file beside it."""
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)


def _copy_dir_atomically(source: Path, target: Path) -> None:
    """Copy folder ``source`` to ``target``: into a temporary folder beside it, then swapped in by renames."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    old: Path | None = None
    try:
        shutil.copytree(source, staging / "copy", ignore=_ignore_credentials, symlinks=False)
        if target.exists():
            old = staging / "old"
            os.replace(target, old)
        os.replace(staging / "copy", target)
    except BaseException:
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)  # put the previous copy back
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def persist_to_drive(
    path: str | os.PathLike[str],
    drive_dir: str | os.PathLike[str] = "MyDrive/colab_helpers",
    *,
    mount_point: str | os.PathLike[str] = _DRIVE_MOUNT,
) -> Path:
    """Copy a file or folder to Google Drive (Colab only) and return where the copy is.

    Mounts Drive at ``mount_point`` if it is not mounted yet (Colab asks for permission in the browser).
    ``drive_dir`` is relative to the mount point (``MyDrive/...``) unless absolute. The copy is written
    beside its destination and renamed into place, so an interrupted copy never looks complete; an older
    copy of the same name is replaced. Credential files are not copied.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"cannot copy {str(source)!r} to Drive: it does not exist; check the path")
    mount = _mount_drive(mount_point, "persist_to_drive")
    destination_dir = Path(drive_dir) if Path(drive_dir).is_absolute() else mount / drive_dir
    destination = destination_dir / source.name
    if source.is_file() and is_credential_file(source.name):
        raise ValueError(f"{source.name!r} may hold credentials and is not copied to Drive; copy it by hand")
    ensure_writable_parent(destination)
    if source.is_dir():
        _copy_dir_atomically(source, destination)
    else:
        _copy_file_atomically(source, destination)
    logger.info("persist_to_drive: copied %s to %s", redact(str(source)), redact(str(destination)))
    return destination


def _mount_drive(mount_point: str | os.PathLike[str], who: str) -> Path:
    """Mount Google Drive at ``mount_point`` unless mounted; return the mount point. RuntimeError off Colab."""
    if _colab() is None:
        raise RuntimeError(
            f"{who} works on Google Colab only (google.colab is not available here); elsewhere copy "
            "the file yourself, e.g. shutil.copy(path, dest) (on Lightning AI, /teamspace/studios/this_studio "
            "persists already)"
        )
    from google.colab import drive  # type: ignore[import-not-found]

    mount = Path(mount_point)
    if not (mount / "MyDrive").is_dir():
        logger.info("%s: mounting Google Drive at %s", who, mount)
        drive.mount(str(mount))
    if not (mount / "MyDrive").is_dir():
        raise RuntimeError(
            f"Google Drive is not mounted at {str(mount)!r} after drive.mount(); run "
            "`from google.colab import drive; drive.mount('/content/drive')` in a cell and allow access"
        )
    return mount


def drive_results_dir(
    results_dir: str | os.PathLike[str],
    drive_dir: str | os.PathLike[str] = "MyDrive/colab_helpers",
    *,
    mount_point: str | os.PathLike[str] = _DRIVE_MOUNT,
) -> Path:
    """Return a results folder on Google Drive (Colab), so runs survive a runtime reset; elsewhere ``results_dir``.

    On Colab, Drive is mounted if needed and ``<drive_dir>/<name of results_dir>`` is returned (created). Off
    Colab this is a no-op with one warning: Lightning AI studios and local disks persist already.
    """
    if _colab() is None:
        warnings.warn(
            f"drive_results_dir: not on Colab, keeping results in {str(results_dir)!r} (set ON_DRIVE=False to "
            "silence this)",
            ColabHelpersWarning,
            stacklevel=2,
        )
        return Path(results_dir)
    mount = _mount_drive(mount_point, "drive_results_dir")
    base = Path(drive_dir) if Path(drive_dir).is_absolute() else mount / drive_dir
    target = base / Path(results_dir).name
    target.mkdir(parents=True, exist_ok=True)
    return target
