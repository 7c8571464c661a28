"""Start the server in the background, for notebooks (Colab included: the kernel is never blocked) and load tests:
``python -m colab_helpers serve ...`` as a child process, its log in a file.

    with start_server("embedded-llama") as server:
        server.wait_ready(timeout=120)
        httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 8})
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .server import API_KEY_ENV, ServeConfig

_OPTIONS = ("max_batch_size", "max_queue", "max_tokens", "default_max_tokens", "device", "dtype", "served_name")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the system picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class ServerHandle:
    """A server running as a child process: its ``url``, ``pid`` and ``log_path``; :meth:`wait_ready`,
    :meth:`stop` (graceful: finishes requests in flight), and a context manager that stops it."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path, api_key: str | None) -> None:
        self.process, self.url, self.log_path = process, url, log_path
        self._api_key = api_key
        atexit.register(self.stop)  # a script or kernel that ends without stop() leaves no server behind

    def __repr__(self) -> str:  # the key stays out of every repr and log
        return f"ServerHandle(url={self.url!r}, pid={self.pid}, running={self.running})"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header requests need when the server has a key; else empty."""
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def wait_ready(self, timeout: float = 120.0) -> ServerHandle:
        """Wait until ``/health`` answers 200; return self. RuntimeError (with the log's end) when the process
        exits first, TimeoutError after ``timeout`` seconds."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise RuntimeError(f"the server exited with status {self.process.returncode} before it was ready; "
                                       f"its log ({self.log_path}) ends with:\n{self.log_tail()}")  # fmt: skip
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/health").status_code == 200:
                        return self
                time.sleep(0.2)  # polling interval while the model loads
        raise TimeoutError(f"the server at {self.url} was not ready within {timeout} s; its log ({self.log_path}) "
                           f"ends with:\n{self.log_tail()}")  # fmt: skip

    def stop(self, timeout: float = 60.0) -> int:
        """Ask the server to stop (SIGTERM: it finishes requests in flight), kill it after ``timeout`` s; return
        its exit status."""
        atexit.unregister(self.stop)
        if self.running:
            self.process.terminate()  # SIGTERM
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(model: str, *, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
                 log_path: str | os.PathLike[str] | None = None, **options: Any) -> ServerHandle:  # fmt: skip
    """Start ``python -m colab_helpers serve MODEL`` in the background; return its :class:`ServerHandle` at once
    (call ``wait_ready``). ``port=None`` picks a free port; ``options`` are :class:`~.server.ServeConfig`'s
    (``max_batch_size=4``, ``device="cpu"`` ...). The key travels in the child's environment, not its command line."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown server options {unknown}; choose from {list(_OPTIONS)}")
    port = free_port(host) if port is None else port
    ServeConfig(model=model, host=host, port=port, api_key=api_key, **options)  # refuse bad settings here, not later
    command = [sys.executable, "-m", "colab_helpers", "serve", model, "--host", host, "--port", str(port)]
    for name, value in options.items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    env = {**os.environ, API_KEY_ENV: api_key} if api_key else {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if log_path is None:
        handle, log_path = tempfile.mkstemp(prefix="colab_helpers-serve-", suffix=".log")
        os.close(handle)
    path = Path(log_path)
    with path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    shown = f"[{host}]" if ":" in host else host
    return ServerHandle(process, f"http://{shown}:{port}", path, api_key)
