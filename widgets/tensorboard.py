"""A TensorBoard button: starts TensorBoard once per runs folder on 127.0.0.1 and shows a link to it.

The plotly figures never depend on it: TensorBoard is there for what it does best (HParams, comparing many
runs, the event files other tools write). Its server lives as long as this kernel; one per runs folder.

The link opens TensorBoard's time series with the loss pinned on top (the schema's loss-figure keys). Inside
Jupyter with jupyter-server-proxy (``pip install -e ".[lab]"``), it goes through the Jupyter server:
``<base_url>proxy/<port>/``, so it works wherever the browser reaches Jupyter (a GPU server, JupyterHub) while
TensorBoard still listens on 127.0.0.1 only; elsewhere it is the loopback URL.
"""

from __future__ import annotations

import atexit
import html
import importlib.util
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import ipywidgets as W

from workbench.cli import tensorboard_command
from workbench.fileio import resolve_runs_dir
from workbench.launch import free_port
from workbench.metrics_schema import figure_metrics

_SERVERS: dict[str, tuple[subprocess.Popen, int]] = {}  # abspath(runs_dir) -> (process, port)
_LOCK = threading.Lock()


def start_tensorboard(runs_dir: str, port: int | None = None) -> tuple[str, bool]:
    """Start TensorBoard over runs_dir (once; later calls return the same server). Returns (url, started_now)."""
    key = resolve_runs_dir(runs_dir)
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


def opening_view() -> str:
    """The query and fragment that open TensorBoard's time series with the loss on top: the scalars of the
    dashboard's loss figure (workbench/metrics_schema.py) pinned, every other card below them."""
    pins = [{"plugin": "scalars", "tag": m.key} for m in figure_metrics("loss") if m.tensorboard and not m.constant]
    return "?pinnedCards=" + urllib.parse.quote(json.dumps(pins, separators=(",", ":"))) + "#timeseries"


def jupyter_base_url() -> str | None:
    """The base_url of the Jupyter server running this kernel, when that server can proxy a local port
    (jupyter-server-proxy installed); None outside Jupyter or without it. The server is the kernel's parent
    process (jupyter_server lists its running servers with their PIDs); under JupyterHub the single-user
    server's prefix is in JUPYTERHUB_SERVICE_PREFIX."""
    if importlib.util.find_spec("jupyter_server_proxy") is None:
        return None
    try:
        from jupyter_server.serverapp import list_running_servers

        servers = list(list_running_servers())
    except Exception:  # no jupyter_server, or an unreadable runtime folder: no proxy
        servers = []
    for info in servers:
        if info.get("pid") == os.getppid():
            return info.get("base_url") or "/"
    return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or None


def browser_url(url: str, base_url: str | None) -> str:
    """Where the browser opens the TensorBoard at url (http://127.0.0.1:PORT/): through the Jupyter server at
    base_url when there is one, else url itself; on the loss either way."""
    if base_url is None:
        return url + opening_view()
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    return f"{base_url.rstrip('/')}/proxy/{port}/{opening_view()}"


def stop_tensorboard(runs_dir: str | None = None) -> None:
    """Stop the server for runs_dir (all of them when None)."""
    with _LOCK:
        keys = list(_SERVERS) if runs_dir is None else [resolve_runs_dir(runs_dir)]
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
        self.url: str | None = None  # where TensorBoard answers (127.0.0.1)
        self.browser_url: str | None = None  # what the link opens: through the Jupyter server where it can
        self.button = W.Button(
            description="TensorBoard", icon="line-chart", tooltip="TensorBoard on 127.0.0.1, opening on the loss"
        )
        self.link = W.HTML("")
        self.button.on_click(lambda _: self.start())
        super().__init__([self.button, self.link])

    def start(self, wait: bool = False) -> str:
        url, _ = start_tensorboard(self.runs_dir)
        self.link.value = f"starting TensorBoard over <code>{self.runs_dir}</code>..."

        def ready() -> None:
            if wait_until_up(url):
                self.url = url
                base = jupyter_base_url()
                self.browser_url = browser_url(url, base)
                href = html.escape(self.browser_url, quote=True)
                shown = html.escape(self.browser_url.split("?")[0])
                also = f" (on this machine: {html.escape(url)})" if base is not None else ""
                self.link.value = f'TensorBoard: <a href="{href}" target="_blank">{shown}</a>{also}'
            else:
                self.link.value = f"TensorBoard did not answer at {url}; see {self.runs_dir}/.tensorboard.log"

        if wait:
            ready()
        else:
            threading.Thread(target=ready, daemon=True).start()
        return url
