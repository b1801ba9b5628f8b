"""Warm launches: a long-lived per-user process that has paid the imports once, from which runs fork.

A cold launch starts four fresh Pythons (the supervisor, ``accelerate launch``, two ranks) and each imports torch,
Accelerate and the worker before the first step: ~10 s on a 2-core machine for a run whose steps take 0.1 s. The
pool imports them once and forks, so a run's processes start with everything already in memory:

    pool        `python -m workbench.pool serve`, its own session; imports torch, torch._dynamo, Accelerate
      │         and the worker (PRELOAD); never initialises CUDA, never runs a tensor op
      └─ supervisor   forked per run, then setsid(): workbench.launch.supervise, the same code as the cold
           │          supervisor's (status.json, failure cause, leftover workers), with the run's environment
           └─ launcher     forked: `accelerate launch`'s own code (accelerate.commands.launch.launch_command)
                │          run in-process with the same command line, so the ranks get Accelerate's launch
                │          environment and torchelastic's agent (rendezvous, error files, monitoring)
                ├─ rank 0  forked by torchelastic (its start method "fork" for a function entry point):
                └─ rank 1  workbench.worker.main, an Accelerator in each, gloo

What the cold path does that this keeps: every piece above is the cold path's own code, only forked instead of
exec'd, so stop, kill, resume, the process-group timeout and the failure cause behave the same (the reliability
tests run on this path). Never stale: before each fork the pool compares the modification time and size of every
source file it imported with what they were when it started; one changed (an edit of the workbench, a pip
upgrade) and it refuses, ends itself, and the launch goes cold (a fresh pool starts after that run's first
metric). Users' own modules (model.arch, data.source) are never imported here: each run's ranks import them.
Pools are keyed by the environment variables read at import time (HF_*, TORCH*, PYTHON*, ...:
pool_client.import_time_env), so a launch reaches a pool that imported with its values; one that differs anyway
is refused. Anything that fails before the ranks are forked falls back to exec'ing the cold command.

Only CPU runs (gloo) go warm: on a GPU the launch validation asks CUDA about bf16, which would initialise CUDA in
the process that forks the ranks (forked children cannot use it then). GPU runs take the cold path.

Memory: the pool holds what it imported (RSS ~0.45 GB with transformers and peft; ``workbench pool status`` says) and
nothing else: it never trains, so it does not grow; above WORKBENCH_POOL_MAX_MB (default 2048) it ends itself.
It ends itself after WORKBENCH_POOL_IDLE_MIN minutes (default 15) without a launch, and with
``workbench pool stop``.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, NoReturn

from workbench import elastic_fork, pool_client

# What a quickstart rank imports before its first step (torch._dynamo: DDP's constructor and torch.optim's first
# parameter group import it; the workbench parts: the worker's setup). transformers and peft only when installed.
PRELOAD = (
    "torch",
    "torch._dynamo",
    "torch.distributed.run",
    "torch.distributed.elastic.multiprocessing",
    "torch.nn.parallel",
    "torch.utils.tensorboard",
    "accelerate",
    "accelerate.commands.launch",
    "accelerate.utils",
    "workbench.launch",
    "workbench.worker",
    "workbench.models",
    "workbench.data",
    "workbench.parallel",
    "workbench.finetune",
    "workbench.measure",
    "workbench.profiling",
    "workbench.plan",
    "datasets",  # Accelerate's prepare_data_loader imports it when installed (with pandas and pyarrow)
)
# Imported once the pool is ready and idle (between requests: a launch arriving meanwhile waits for one module):
# only the Hugging Face model families need them, and they should not delay the pool's first warm launch.
LATER = ("transformers", "peft")
OPTIONAL = ("datasets", "transformers", "peft")
LATER_AFTER_IDLE_S = 5.0  # ... after this long without a request and no run going (a sweep's launches never wait)
MAX_MB_ENV = "WORKBENCH_POOL_MAX_MB"


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import each module; returns seconds per module (an optional one that is missing is skipped)."""
    took = {}
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError:
            if name not in OPTIONAL:
                raise
            continue
        took[name] = round(time.perf_counter() - t0, 3)
    return took


def source_files() -> dict[str, tuple[int, int]]:
    """path -> (mtime_ns, size) of the source of every module imported in this process."""
    out = {}
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if not path:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        out[path] = (st.st_mtime_ns, st.st_size)
    return out


def changed_source(recorded: dict[str, tuple[int, int]]) -> str | None:
    """The first imported source file edited (or gone) since it was recorded, or None."""
    for path, (mtime, size) in recorded.items():
        try:
            st = os.stat(path)
        except OSError:
            return path
        if st.st_mtime_ns != mtime or st.st_size != size:
            return path
    return None


def edited_since(stamps: dict[str, tuple[int, int]], since: float) -> str | None:
    """A source file modified after `since` (seconds): possibly after it was imported, so the code in memory may
    be older than the file its stamp was taken from. None when every file is older."""
    return next((path for path, (mtime, _) in stamps.items() if mtime > since * 1e9), None)


def process_started() -> float:
    """When this process started (wall-clock seconds; whole seconds of boot time: at most ~1 s early)."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def env_difference(pool_env: dict[str, str], env: dict[str, str]) -> str | None:
    """The first import-time environment variable a run sets differently from the pool, or None (the pools are
    keyed by these already: this is the check before a fork, not the routing)."""
    mine, theirs = pool_client.import_time_env(pool_env), pool_client.import_time_env(env)
    return next((k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)), None)


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or of its ended, reaped children."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def cuda_initialised() -> bool:
    """True when CUDA is initialised in this process (then it must not fork ranks)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


class Pool:
    """The serving loop: one request per connection, a JSON line each way (ops: ping, launch, stop)."""

    def __init__(self, idle_s: float):
        self.idle_s = idle_s
        self.started = time.time()
        for key, value in pool_client.OFFLINE_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.env = dict(os.environ)
        self.imports = preload()
        gc.freeze()  # what was imported stays out of the forked processes' collections (fewer copied pages)
        self.sources = source_files()
        # A file edited while the pool was importing it would be recorded with its new stamp: treat it as stale.
        self.unsure = edited_since(self.sources, process_started())
        pythonpath = set(filter(None, self.env.get("PYTHONPATH", "").split(os.pathsep)))
        self.base_path = [p for p in sys.path[1:] if p not in pythonpath]  # sys.path[0]: the pool's own folder
        self.max_rss = float(os.environ.get(MAX_MB_ENV, 2048)) * 2**20
        self.forked, self.last_launch, self.stopping = 0, time.monotonic(), ""
        self.children: set[int] = set()  # supervisors forked and not yet reaped
        self.later, self.last_request = list(LATER), time.monotonic()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = pool_client.pool_file("sock") or ""
        if os.path.exists(path):
            os.unlink(path)  # a dead pool's socket (we hold the lock: no live pool owns it)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.inode = os.stat(path).st_ino  # close() removes the socket file only while it is still ours
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.path = path

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": "ready",
            "python": sys.executable,
            "source": pool_client.SOURCE_DIR,
            "uptime_s": round(time.time() - self.started, 1),
            "rss_bytes": rss_bytes(),
            "max_rss_bytes": int(self.max_rss),
            "runs_forked": self.forked,
            "runs_running": len(self.children),
            "cpu_s": round(cpu_seconds(resource.RUSAGE_SELF), 3),  # the imports, mostly
            "children_cpu_s": round(cpu_seconds(resource.RUSAGE_CHILDREN), 3),  # every run forked and ended
            "idle_s": round(time.monotonic() - self.last_launch, 1),
            "idle_timeout_s": self.idle_s,
            "source_files": len(self.sources),
            "import_s": self.imports,
        }

    def serve(self) -> str:
        """Answer requests until stopped, idle for idle_s, or stale; returns why it ended."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        while not self.stopping:
            self.reap()
            if time.monotonic() - self.last_launch > self.idle_s:
                self.stopping = f"idle for {self.idle_s:.0f} s"
                break
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, InterruptedError):
                if not self.children and time.monotonic() - self.last_request > LATER_AFTER_IDLE_S:
                    self.import_later()  # never beside a run: importing transformers took its cores mid-run
                continue
            with conn:
                self.handle(conn)
            self.last_request = time.monotonic()
        self.close()
        return self.stopping

    def import_later(self) -> None:
        """While idle: the next module of LATER, and its source files joining those watched."""
        if not self.later:
            return
        t0 = time.time()
        self.imports.update(preload((self.later.pop(0),)))
        new = {path: stamp for path, stamp in source_files().items() if path not in self.sources}
        self.sources.update(new)
        self.unsure = self.unsure or edited_since(new, t0)
        gc.freeze()

    def on_signal(self, signum, frame) -> None:
        self.stopping = f"signal {signum}"

    def reap(self) -> None:
        """Collect the supervisors that ended (they are our children until they do)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        try:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            req = json.loads(data)
            op = req.get("op")
            if op == "ping":
                reply = self.info()
            elif op == "stop":
                self.stopping, reply = "asked to stop", {"stopped": True}
            elif op == "launch":
                reply = self.launch(req, conn)
            else:
                reply = {"error": f"unknown op {op!r}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError, AttributeError) as e:
            print(f"pool: bad request: {e!r}", flush=True)

    def refusal(self, req: dict[str, Any]) -> str | None:
        """Why this pool must not fork this run (and should end), or None."""
        changed = self.unsure or changed_source(self.sources)
        if changed:
            return f"source changed since the pool started: {changed}"
        key = env_difference(self.env, req["env"])
        if key:
            return f"environment variable {key} differs from the pool's"
        if cuda_initialised():
            return "CUDA is initialised in the pool"
        if rss_bytes() > self.max_rss:
            return f"resident memory {rss_bytes() / 2**20:.0f} MiB above {self.max_rss / 2**20:.0f} MiB"
        return None

    def launch(self, req: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
        why = self.refusal(req)
        if why:
            self.stopping = why
            print(f"pool: refused {req.get('run_dir')}: {why}; ending", flush=True)
            return {"refused": why}
        if client_gone(conn):  # it gave up waiting and launched cold: forking now would start the run twice
            return {"refused": "the client left"}
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            conn.close()
            self.sock.close()
            supervisor_child(req, self.base_path)
        self.forked += 1
        self.children.add(pid)
        self.last_launch = time.monotonic()
        return {"pid": pid}

    def close(self) -> None:
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.sock.close()


def client_gone(conn: socket.socket) -> bool:
    """True when the client has closed its end (it sends one request, then only waits for the reply)."""
    ready, _, _ = select.select([conn], [], [], 0)
    if not ready:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def default_signals() -> None:
    """The signal dispositions a fresh Python starts with (a fork inherits its parent's handlers: the pool's, or
    torchelastic's agent's, which turns SIGTERM into an exception and would give a rank shut down by the agent an
    error file of its own)."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def user_path(cwd: str, env: dict[str, str], base: list[str]) -> list[str]:
    """sys.path as `python -m ...` started in cwd with env's PYTHONPATH would have it."""
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return list(dict.fromkeys([cwd, *extra, *base]))


def supervisor_child(req: dict[str, Any], base_path: list[str]) -> NoReturn:
    """In the forked supervisor: its own session, the run's environment and folder, then the cold supervise().

    Before supervise starts the launcher, anything that goes wrong execs the cold supervisor instead.
    """
    code = 1
    run_dir, resume = req["run_dir"], bool(req.get("resume"))
    cold = [sys.executable, "-m", "workbench.launch", run_dir] + (["--resume"] if resume else [])
    try:
        os.setsid()
        default_signals()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(os.path.join(run_dir, "supervisor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.path[:] = user_path(req["cwd"], req["env"], base_path)
        importlib.invalidate_caches()
        from workbench.launch import supervise
    except BaseException:
        traceback.print_exc()
        os.execve(sys.executable, cold, req["env"])
    try:
        code = supervise(run_dir, resume=resume, start=fork_launcher)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkedChild:
    """A launcher this process forked: the Popen methods supervise uses (pid, wait with a timeout)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        t0 = time.monotonic()
        while self.poll() is None:
            if timeout is not None and time.monotonic() - t0 >= timeout:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]


def fork_launcher(cmd: list[str], env: dict[str, str], out: Any, err: Any) -> ForkedChild:
    """supervise's way to start the launcher on the warm path: fork, and run `accelerate launch` in the child."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        launcher_child(cmd, env, out.fileno(), err.fileno())
    return ForkedChild(pid)


def launcher_child(cmd: list[str], env: dict[str, str], out: int, err: int) -> NoReturn:
    """In the forked launcher: `accelerate launch` in-process; before the ranks are forked, a failure execs the
    very command the cold path runs (so a new Accelerate or torch that breaks this path costs only time)."""
    started = [False]
    code = 1
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout.reconfigure(line_buffering=True)  # as `python -u`
        sys.stderr.reconfigure(line_buffering=True)
        os.environ.clear()
        os.environ.update(env)
        code = run_accelerate(cmd, started)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        if not started[0]:
            print("workbench: the warm launch failed before its ranks started; running the cold command", flush=True)
            os.execve(cmd[0], cmd, env)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run_accelerate(cmd: list[str], started: list[bool]) -> int:
    """Run `accelerate launch ARGS` (cmd = python -m accelerate.commands.launch ARGS) in this process, with the
    ranks forked from it: torchrun's config gets start method "fork" and the worker's main as a function (one
    process: Accelerate's simple launcher forks it instead of starting a subprocess)."""
    import accelerate.commands.launch as accelerate_launch
    import torch.distributed.run as torchrun

    if cmd[1:3] != ["-m", "accelerate.commands.launch"]:
        raise ValueError(f"not an accelerate launch command: {cmd[:3]}")
    args = cmd[3:]
    as_torchrun = torchrun.config_from_args

    def forked_config(targs):
        config, _, cmd_args = as_torchrun(targs)
        if cuda_initialised():
            raise RuntimeError("CUDA is initialised in the launcher: its ranks must not be forked from it")
        config.start_method = "fork"
        started[0] = True
        return config, rank_main, cmd_args

    def forked_simple(aargs):  # one process: Accelerate runs it without torchelastic, as a subprocess
        from accelerate.utils import prepare_simple_launcher_cmd_env

        rank_cmd, rank_env = prepare_simple_launcher_cmd_env(aargs)
        if cuda_initialised():
            raise RuntimeError("CUDA is initialised in the launcher: its rank must not be forked from it")
        started[0] = True
        code = fork_single_rank(rank_cmd, rank_env)
        if code != 0:
            raise subprocess.CalledProcessError(returncode=code, cmd=rank_cmd)

    torchrun.config_from_args = forked_config  # this forked process's copies of the modules only
    accelerate_launch.simple_launcher = forked_simple
    elastic_fork.report_every_failure()  # a killed rank is named even when its peer's error came first
    sys.argv = ["accelerate-launch", *args]
    accelerate_launch.launch_command(accelerate_launch.launch_command_parser().parse_args(args))
    return 0


def fork_single_rank(cmd: list[str], env: dict[str, str]) -> int:
    """A one-process run's rank, forked: `cmd` (python -m workbench.worker ...) run in the child with `env`;
    returns its exit code as subprocess would (negative: the signal that ended it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.clear()
            os.environ.update(env)
            rank_main(*cmd[1:])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()  # as an uncaught exception would; the worker's @record wrote its error file
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return ForkedChild(pid).wait()


def rank_main(*cmd_args: str) -> None:
    """One rank, forked by torchelastic: what `python -u -m workbench.worker CONFIG [--resume]` would run."""
    import torch

    from workbench import worker

    default_signals()
    argv = list(cmd_args)
    while argv and argv[0] == "-u":
        argv.pop(0)
    if argv[:2] == ["-m", "workbench.worker"]:
        argv = argv[2:]
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))  # OpenMP read the pool's value when torch was imported there
    sys.argv = [worker.__file__, *argv]
    importlib.invalidate_caches()
    worker.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()


def serve(idle_minutes: float) -> int:
    """`python -m workbench.pool serve`: take the lock (one pool per checkout), import, answer until done."""
    lock_path, pid_path = pool_client.pool_file("lock"), pool_client.pool_file("pid")
    if lock_path is None or pid_path is None:
        print("pool: no usable pool folder", flush=True)
        return 1
    lock = open(lock_path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another pool of this checkout is running or starting
    with open(pid_path, "w") as f:
        f.write(f"{os.getpid()} starting\n")
    t0 = time.perf_counter()
    try:
        pool = Pool(idle_minutes * 60)
        with open(pid_path, "w") as f:
            f.write(f"{os.getpid()} ready\n")
        print(f"pool {os.getpid()}: ready in {time.perf_counter() - t0:.1f} s, RSS {rss_bytes() / 2**20:.0f} MiB, "
              f"{len(pool.sources)} source files watched", flush=True)  # fmt: skip
        why = pool.serve()
        print(f"pool {os.getpid()}: ended ({why}) after {pool.forked} runs", flush=True)
    finally:
        try:
            with open(pid_path) as f:
                mine = f.read().split()[:1] == [str(os.getpid())]
            if mine:
                os.unlink(pid_path)
        except OSError:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.pool", description="the warm launch pool")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="import once, then fork runs on request (started by launches)")
    s.add_argument("--idle-minutes", type=float, default=pool_client.idle_minutes())
    args = p.parse_args(argv)
    return serve(args.idle_minutes)


if __name__ == "__main__":
    sys.exit(main())
