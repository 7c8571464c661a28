import importlib.metadata, importlib.util, os, pathlib, re, shutil, subprocess, sys  # noqa: E401  (stdlib only)

# The suite's repository: `make sync` writes it here from pyproject.toml [project.urls].
REPO_URL = "@REPO_URL@"


def _install_colab_helpers(repo_url: str, content: str = "/content", run=subprocess.run) -> None:
    """On Colab, pip install colab-helpers unless it imports: a wheel from `make colab-bundle`, else repo_url."""
    if "COLAB_RELEASE_TAG" not in os.environ or importlib.util.find_spec("colab_helpers"):
        return  # not Colab (elsewhere: `make install`), or installed already
    roots = [pathlib.Path(content), pathlib.Path(content, "drive", "MyDrive", "colab-helpers")]
    wheels = sorted((w for root in roots for w in root.glob("colab_helpers-*.whl")), key=lambda w: w.stat().st_mtime)
    source = wheels[-1].as_uri() if wheels else f"git+{repo_url}"
    # tasks (lm-eval) and serving (notebook 09) always; bitsandbytes only with a GPU
    extra = "[eval,serve,gpu]" if shutil.which("nvidia-smi") else "[eval,serve]"
    print(f"Installing colab-helpers{extra} from {_hide_token(source)} ...")
    # No --upgrade: what Colab has is kept where it meets our floors, and torch is held at Colab's own build.
    pip = [sys.executable, "-m", "pip", "install", "-q", *_keep_torch(content), f"colab-helpers{extra} @ {source}"]
    done = run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(_install_failed(source, done.stderr or ""))  # IPython shows one line, not a traceback
    importlib.invalidate_caches()


def _keep_torch(content: str) -> list[str]:
    """pip arguments that pin the installed torch, so that no dependency can swap Colab's CUDA build."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return []
    constraints = pathlib.Path(content, ".colab-helpers-constraints.txt")
    constraints.write_text(f"torch=={version}\n")
    return ["-c", str(constraints)]


def _hide_token(text: str) -> str:
    """``text`` with any token in a URL (``https://<token>@github.com/...``) replaced by ``***``."""
    return re.sub(r"//[^/@\s]+@", "//***@", text)


def _install_failed(source: str, stderr: str) -> str:
    """The message for a failed pip install: what was tried, pip's last error line, and what to do."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()] or ["(no output)"]
    last = next((line for p in ("fatal:", "ERROR:") for line in reversed(lines) if line.startswith(p)), lines[-1])
    return (
        f"colab-helpers could not be installed from {_hide_token(source)} (pip: {_hide_token(last)}). To fix it: "
        "upload the wheel from `make colab-bundle` to /content (or to MyDrive/colab-helpers/ with Drive mounted) "
        "and run this cell again; or set REPO_URL in pyproject.toml [project.urls] and run `make sync`, or edit "
        "REPO_URL in this cell. A private repository needs the wheel, or a token URL "
        "(https://<token>@github.com/owner/repo) typed into this cell and never saved."
    )


if __name__ == "__main__":  # a notebook kernel; the tests exec this cell under another name
    _install_colab_helpers(REPO_URL)
