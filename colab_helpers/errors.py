"""Warning classes of the package: recoverable trouble is one warning of these classes, never a crash."""

from __future__ import annotations


class ColabHelpersWarning(UserWarning):
    """Base class of every warning this package emits."""


class CudaFallbackWarning(ColabHelpersWarning):
    """A CUDA failure was recovered by retrying on the CPU (or with a smaller batch)."""


class OfflineFallbackWarning(ColabHelpersWarning):
    """The hub could not be reached and the embedded offline default was used instead."""
