"""Talking to the warm pool (workbench.pool) from a kernel, the CLI or a supervisor: no torch imported here.

The pool is a long-lived per-user process that has imported torch, Accelerate and the worker once; a launch asks
it over a unix socket to fork the run's supervisor, which forks the ranks (workbench/pool.py says how). Every
function here answers at once and never raises for a pool that is absent, starting, stale or dead: the caller
then takes the cold path (``python -m workbench.launch``), exactly as before the pool existed.

Where it lives: ``$WORKBENCH_POOL_DIR``, else ``$TMPDIR/workbench-pool-<uid>`` (a folder of mode 0700 owned by
the user; the socket is 0600), one pool per Python interpreter and workbench checkout (the file names carry a
hash of both), so two virtual environments or worktrees never share one.

Settings (environment): ``WORKBENCH_POOL=0`` turns warm launches off; ``WORKBENCH_POOL_IDLE_MIN`` (default 15)
is how many idle minutes the pool waits before it ends itself.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ENABLE_ENV = "WORKBENCH_POOL"  # "0": never warm, every launch takes the cold path
DIR_ENV = "WORKBENCH_POOL_DIR"
IDLE_ENV = "WORKBENCH_POOL_IDLE_MIN"
DEFAULT_IDLE_MIN = 15.0
STARTING_WAIT_S = 20.0  # a launch waits this long for a pool that is still importing (cheaper than a cold start)
REPLY_TIMEOUT_S = 20.0  # the pool answers a launch in milliseconds; a pool this slow is treated as absent
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))  # this checkout's workbench package


def enabled() -> bool:
    """Warm launches are on unless WORKBENCH_POOL=0 (or off/false/no)."""
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def idle_minutes() -> float:
    """The pool's idle timeout, in minutes (WORKBENCH_POOL_IDLE_MIN, default 15)."""
    try:
        return max(0.05, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_MIN)))
    except ValueError:
        return DEFAULT_IDLE_MIN


def pool_dir(create: bool = True) -> str | None:
    """The pool's folder (mode 0700, owned by this user), or None when it is not safe to use."""
    path = os.environ.get(DIR_ENV) or os.path.join(tempfile.gettempdir(), f"workbench-pool-{os.getuid()}")
    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # someone else's folder, or open to others: never talk to a socket in it
    return path


# Environment variables read once, at import time, by something the pool imports (HF_HUB_OFFLINE by huggingface_hub,
# TORCHINDUCTOR_* by inductor's config, PYTHONHASHSEED by Python itself, ...): a run must get a pool that imported
# with the values it has. Except those the forked processes apply themselves (sys.path, set_num_threads) or that
# are read at run time.
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "PYTHON", "KMP_", "GOMP_", "MKL_",
                   "OPENBLAS_", "LD_", "DISABLE_", "TOKENIZERS_", "TF_")  # fmt: skip
RUN_TIME_ENV = {"PYTHONPATH", "PYTHONUNBUFFERED", "MKL_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR", "PYTHONWARNINGS"}
RUN_TIME_PREFIXES = ("TORCHELASTIC_", "TORCH_ELASTIC_")  # torchelastic reads its settings when it launches
# The workbench never touches the network unless asked (workbench.data.files.offline): the pool sets these before
# it imports datasets and transformers, as the ranks do before they import those themselves.
OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def import_time_env(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """The variables of env that are read at import time, with the offline defaults filled in."""
    out = {k: v for k, v in env.items()
           if k.startswith(IMPORT_TIME_ENV) and k not in RUN_TIME_ENV and not k.startswith(RUN_TIME_PREFIXES)}  # fmt: skip
    for key, value in OFFLINE_DEFAULTS.items():
        out.setdefault(key, value)
    return out


def checkout_key() -> str:
    """A short hash of the interpreter, this checkout and Python's version."""
    ident = f"{os.path.realpath(sys.executable)}|{SOURCE_DIR}|{sys.version}"
    return hashlib.sha1(ident.encode()).hexdigest()[:12]


def pool_key(env: dict[str, str] | None = None) -> str:
    """One pool per interpreter, checkout and import-time environment (env: the launch's; default this process's),
    so runs with other HF_* or TORCH* settings get a pool of their own instead of ending each other's."""
    wanted = json.dumps(sorted(import_time_env(os.environ if env is None else env).items()))
    return f"{checkout_key()}-{hashlib.sha1(wanted.encode()).hexdigest()[:8]}"


def pool_file(suffix: str, env: dict[str, str] | None = None) -> str | None:
    """pool_dir()/pool-<key>.<suffix> (sock, pid, lock, log), or None when the folder is unusable."""
    d = pool_dir()
    return os.path.join(d, f"pool-{pool_key(env)}.{suffix}") if d else None


def call(
    msg: dict[str, Any], timeout: float = REPLY_TIMEOUT_S, env: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """Send one request to the pool (of env's key) and return its reply; None when no pool answers."""
    path = pool_file("sock", env)
    return call_socket(path, msg, timeout) if path else None


def call_socket(path: str, msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """One request to the pool listening on path, and its reply; None when nothing answers."""
    if not os.path.exists(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(msg).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
    except (OSError, ValueError):
        return None
    return reply if isinstance(reply, dict) else None


def pool_pid(env: dict[str, str] | None = None, path: str | None = None) -> int | None:
    """PID of the pool process (starting or ready) for env (or of the PID file at path), or None."""
    path = path or pool_file("pid", env)
    try:
        with open(path or "") as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"workbench.pool" not in f.read():
                return None  # a recycled PID
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return None
    except (OSError, ValueError, IndexError):
        return None
    return pid


def warm_up(env: dict[str, str] | None = None) -> int | None:
    """Start the pool in the background unless one is already running; returns the new process's PID or None.

    The pool imports torch and the worker once (seconds of CPU), in its own session, with the given environment
    (the launching process's), in the pool folder (so no user folder is on its path).
    """
    if not enabled() or pool_pid(env) is not None:
        return None
    log_path, d = pool_file("log", env), pool_dir()
    if log_path is None or d is None:
        return None
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.pool", "serve", "--idle-minutes", str(idle_minutes())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=d,
            env=dict(os.environ if env is None else env),
        )
    # Until its PID file is there a launch would not know a pool is coming and start cold, beside the pool's imports
    # (measured: the check's second layout, launched 0.4 s after the first ended, ran cold at 9.3k tokens/s against
    # 13.9k warm). The caller (a run's supervisor, before it ends) waits that moment.
    t0 = time.monotonic()
    while pool_pid(env) is None and proc.poll() is None and time.monotonic() - t0 < 5.0:
        time.sleep(0.02)
    return proc.pid


def wait_ready(timeout: float, env: dict[str, str] | None = None) -> bool:
    """Wait up to timeout seconds for a starting pool to answer; False when none is starting or it never does.

    A pool process just started writes its PID file within a moment: none after 5 s means none is starting.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if call({"op": "ping"}, timeout=2.0, env=env) is not None:
            return True
        if pool_pid(env) is None and time.monotonic() - t0 > 5.0:
            return False
        time.sleep(0.05)
    return False


class ForkedProcess:
    """A supervisor the pool forked: the Popen methods Run uses (poll, wait), for a process that is not our child."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """None while the process runs; else 0 (its exit status went to its parent, the pool)."""
        if self.returncode is None:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    if f.read().split(")")[-1].split()[0] in ("Z", "X"):
                        self.returncode = 0
            except OSError:
                self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        t0 = time.monotonic()
        while self.poll() is None:
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return 0


def start_supervisor(run_dir: str, resume: bool, env: dict[str, str]) -> ForkedProcess | None:
    """Ask the pool to fork the run's supervisor; its handle, or None (then the caller starts the cold one).

    A pool that is still importing is waited for (up to STARTING_WAIT_S): that costs less than a cold start.
    A pool that finds its imported source changed, or the environment different from its own, says no and ends
    itself; the next cold run's supervisor starts a fresh one (workbench.launch.supervise).
    """
    if not enabled():
        return None
    msg = {"op": "launch", "run_dir": run_dir, "resume": bool(resume), "env": env, "cwd": os.getcwd()}
    reply = call(msg, env=env)
    if reply is None and pool_pid(env) is not None and wait_ready(STARTING_WAIT_S, env):
        reply = call(msg, env=env)
    if reply is None or not isinstance(reply.get("pid"), int):
        return None
    return ForkedProcess(reply["pid"])


def stop_pool(timeout: float = 10.0) -> bool:
    """End every pool of this checkout (``workbench pool stop``); True when one was running and all have gone."""
    d = pool_dir()
    pid_files = glob.glob(os.path.join(d, f"pool-{checkout_key()}-*.pid")) if d else []
    live = [(path, pid) for path, pid in ((p, pool_pid(path=p)) for p in pid_files) if pid is not None]
    for pid_file, pid in live:
        if call_socket(pid_file[: -len(".pid")] + ".sock", {"op": "stop"}, 5.0) is None:
            try:  # still importing, or not answering: its SIGTERM handler ends it
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    t0 = time.monotonic()
    while any(pool_pid(path=p) for p in pid_files) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return bool(live) and not any(pool_pid(path=p) for p in pid_files)


def pool_info() -> dict[str, Any] | None:
    """The pool's own account (pid, state, memory, runs forked, idle timeout), or None when none answers."""
    return call({"op": "ping"}, timeout=5.0)
