"""A TensorBoard button: starts TensorBoard once per runs folder on 127.0.0.1 and shows a link to it.

The plotly figures never depend on it: TensorBoard is there for what it does best (HParams, comparing many
runs, the event files other tools write). Its server lives as long as this kernel; one per runs folder.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import threading
import time
import urllib.request

import ipywidgets as W

from workbench.cli import tensorboard_command
from workbench.launch import free_port

_SERVERS: dict[str, tuple[subprocess.Popen, int]] = {}  # abspath(runs_dir) -> (process, port)
_LOCK = threading.Lock()


def start_tensorboard(runs_dir: str, port: int | None = None) -> tuple[str, bool]:
    """Start TensorBoard over runs_dir (once; later calls return the same server). Returns (url, started_now)."""
    key = os.path.abspath(runs_dir)
    with _LOCK:
        server = _SERVERS.get(key)
        if server is not None and server[0].poll() is None:
            return f"http://127.0.0.1:{server[1]}/", False
        os.makedirs(key, exist_ok=True)
        port = port or free_port()
        log = open(os.path.join(key, ".tensorboard.log"), "ab")
        proc = subprocess.Popen(
            tensorboard_command(key, port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        _SERVERS[key] = (proc, port)
        return f"http://127.0.0.1:{port}/", True


def wait_until_up(url: str, timeout: float = 30.0) -> bool:
    """True once TensorBoard answers its runs endpoint."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url + "data/runs", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def stop_tensorboard(runs_dir: str | None = None) -> None:
    """Stop the server for runs_dir (all of them when None)."""
    with _LOCK:
        keys = list(_SERVERS) if runs_dir is None else [os.path.abspath(runs_dir)]
        for key in keys:
            server = _SERVERS.pop(key, None)
            if server is not None and server[0].poll() is None:
                server[0].terminate()
                try:
                    server[0].wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server[0].kill()


atexit.register(stop_tensorboard)


class TensorBoardButton(W.HBox):
    """[TensorBoard] button + link. ``url`` is set once the server answers."""

    def __init__(self, runs_dir: str = "runs"):
        self.runs_dir = runs_dir
        self.url: str | None = None
        self.button = W.Button(description="TensorBoard", icon="line-chart", tooltip="TensorBoard on 127.0.0.1")
        self.link = W.HTML("")
        self.button.on_click(lambda _: self.start())
        super().__init__([self.button, self.link])

    def start(self, wait: bool = False) -> str:
        url, _ = start_tensorboard(self.runs_dir)
        self.link.value = f"starting TensorBoard over <code>{self.runs_dir}</code>..."

        def ready() -> None:
            if wait_until_up(url):
                self.url = url
                self.link.value = f'TensorBoard: <a href="{url}" target="_blank">{url}</a>'
            else:
                self.link.value = f"TensorBoard did not answer at {url}; see {self.runs_dir}/.tensorboard.log"

        if wait:
            ready()
        else:
            threading.Thread(target=ready, daemon=True).start()
        return url
