"""Secrets never leave the process: names of secret variables and a redactor for anything we write or show."""

from __future__ import annotations

import os
import re

SECRET_ENV_VARS: tuple[str, ...] = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_TOKEN",
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "KAGGLE_KEY",
    "GITHUB_TOKEN",
)
_SECRET_NAME = re.compile(r"(TOKEN|API_KEY|SECRET|PASSWORD)", re.IGNORECASE)
_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words


def secret_values() -> list[str]:
    """Return the values of every secret-looking environment variable that is set (longest first)."""
    names = set(SECRET_ENV_VARS) | {name for name in os.environ if _SECRET_NAME.search(name)}
    values = {os.environ[name] for name in names if len(os.environ.get(name, "")) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """Return ``text`` with every secret value replaced by ``***``."""
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def contains_secret(data: str | bytes) -> bool:
    """True when ``data`` contains the value of a secret environment variable."""
    haystack = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return any(value in haystack for value in secret_values())
