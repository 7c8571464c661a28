"""Print the Python version and the installed versions of the libraries the suite depends on, one per line."""

import platform
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("torch", "transformers", "tokenizers", "huggingface_hub", "safetensors", "accelerate", "peft",
             "datasets", "pandas", "numpy", "matplotlib", "jupytext", "papermill", "torch-pruning")


def installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    print(f"python {platform.python_version()}")
    for name in LIBRARIES:
        print(f"{name} {installed(name)}")
