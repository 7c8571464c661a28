"""Is an IPython kernel (Jupyter, Colab, Kaggle, papermill) running this code? One answer for every module."""

from __future__ import annotations

import sys


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
