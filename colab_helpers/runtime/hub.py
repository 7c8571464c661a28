"""Can the Hugging Face Hub be reached? One cheap, cached answer shared by models, data and environment."""

from __future__ import annotations

import functools
import logging
import os
import urllib.error
import urllib.request

logger = logging.getLogger(__name__)

OFFLINE_ENV_VARS: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUTHY = {"1", "true", "yes", "on"}
DEFAULT_ENDPOINT = "https://huggingface.co"


def offline_by_env() -> str | None:
    """Return the name of the environment variable that forces offline mode (``HF_HUB_OFFLINE=1`` ...), or None."""
    for name in OFFLINE_ENV_VARS:
        if os.environ.get(name, "").strip().lower() in _TRUTHY:
            return name
    return None


def hub_endpoint() -> str:
    """Return the hub URL in use: ``HF_ENDPOINT`` when set (a mirror), else https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_ENDPOINT


def hub_reachable(timeout: float = 2.0) -> bool:
    """Return True when the Hugging Face Hub answers; False at once when an offline variable is set.

    The network probe (one HEAD request, ``timeout`` seconds at most) runs once per endpoint and timeout in
    a session; the offline variables are read on every call, so setting ``HF_HUB_OFFLINE=1`` takes effect
    immediately. Call ``hub_reachable.cache_clear()`` to probe again.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    variable = offline_by_env()
    if variable is not None:
        logger.debug("hub treated as unreachable: %s is set", variable)
        return False
    return _probe(hub_endpoint(), float(timeout))


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float) -> bool:
    """Return True when a HEAD request to ``endpoint`` gets any HTTP answer within ``timeout`` seconds."""
    request = urllib.request.Request(endpoint, method="HEAD", headers={"User-Agent": "colab-helpers"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError:  # the server answered (even 4xx/5xx): it is reachable
        return True
    except (OSError, ValueError) as exc:  # URLError, timeouts, DNS failures, a malformed HF_ENDPOINT
        logger.info("Hugging Face Hub unreachable at %s (%s)", endpoint, exc)
        return False
    return True


hub_reachable.cache_clear = _probe.cache_clear  # type: ignore[attr-defined]
