"""Is an IPython kernel (Jupyter, Colab, Kaggle, papermill) running this code, and has the run said that no browser
is attached (CI, our headless papermill runs)? One answer for every module."""

from __future__ import annotations

import os
import sys

HEADLESS_ENV_VAR = "COLAB_HELPERS_HEADLESS"  # set to 1 by our papermill runs: papermill sets nothing a kernel can see


def in_kernel() -> bool:
    """True when an IPython kernel runs this code. Does not import IPython: if nothing imported it, no kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # a half-initialized IPython must not break a display, a download or training
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to something other than empty/0/false/no/off."""
    return os.environ.get(name, "").strip().lower() not in {"", "0", "false", "no", "off"}


def headless_marked() -> bool:
    """True when the run is marked as having no browser: ``CI``, or ``COLAB_HELPERS_HEADLESS`` (our papermill runs)."""
    return env_flag("CI") or env_flag(HEADLESS_ENV_VAR)
