"""Your own model and data ("pkg.module:factory"), tried before any process starts: ``problems(cfg)`` is
``cfg.validate()`` and then, on a config valid in every key, this trial (launch.check_launchable calls it).

Training imports the factory in every rank, from the launch folder (launch puts it on the workers' PYTHONPATH).
A broken contract found there costs a launch and prints one raw traceback per rank; found here it is one
message naming model.arch or data.source, what was expected and what came back:

- the module imports from the launch folder, the attribute exists and is callable;
- ``data.source``: ``build(cfg, split)`` returns a map-style Dataset of ``(x, y)`` pairs, with at least one
  micro-batch per rank in each split the run reads;
- ``model.arch``: ``build(cfg)`` returns an ``nn.Module`` whose ``forward(x, y)`` on a micro-batch of 2 returns
  the mean loss as a scalar tensor, or a tuple ``(logits, loss)``.

The model is built on the meta device (shapes only, no memory, no initialisation) and, only where that fails,
for real on the CPU. Results are cached per config and module file, so the config panel's validation on every
keystroke pays once; torch is imported only for configs that name a factory.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workbench.config import Problem
from workbench.data import build_dataset
from workbench.factory import is_import_string, launch_folder_on_path

if TYPE_CHECKING:
    from workbench.config import DeviceInfo, RunConfig

MODEL_CONTRACT = "build(cfg) -> nn.Module whose forward(x, y) returns the mean loss, or a tuple (logits, loss)"
DATA_CONTRACT = 'build(cfg, split) -> a Dataset of (x, y) pairs, split "train" or "eval"'

_results: dict[Any, list[Problem]] = {}  # cache: (config sections, module files' mtimes) -> problems
_imported_mtime: dict[str, float] = {}  # module name -> its file's mtime when this check imported it


def problems(cfg: RunConfig, devices: DeviceInfo | None = None) -> list[Problem]:
    """Everything that stops a launch in the config itself: ``cfg.validate(devices)``, then (on a config valid in
    every key: your factories get the whole config) the trial of your own factories."""
    found = cfg.validate(devices)
    return found or check_factories(cfg)


def check_factories(cfg: RunConfig) -> list[Problem]:
    """Problems with the config's own model.arch / data.source factories; [] when it names none."""
    specs = [s for s in (cfg.model.arch, cfg.data.source) if is_import_string(s)]
    if not specs:
        return []
    with launch_folder_on_path():
        key = _cache_key(cfg, specs)
        if key is not None and key in _results:
            return list(_results[key])
        import torch

        with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was: validation draws nothing
            problems = _check(cfg)
    if key is not None:
        _results[key] = problems
    return list(problems)


def _cache_key(cfg: RunConfig, specs: list[str]) -> Any:
    mtimes = []
    for spec in specs:
        try:
            origin = importlib.util.find_spec(spec.split(":", 1)[0]).origin  # type: ignore[union-attr]
            mtimes.append((origin, os.path.getmtime(origin) if origin and os.path.exists(origin) else None))
        except (ImportError, ValueError, AttributeError):
            mtimes.append((spec, None))
    # model as its repr: model.hf_config is a dict
    key = (repr(cfg.model), cfg.data, cfg.task, cfg.micro_batch_size, cfg.parallel.num_processes, cfg.eval_every,
           os.getcwd(), tuple(mtimes))  # fmt: skip
    try:
        hash(key)
    except TypeError:  # a list where a tuple belongs: no caching, the check just runs again
        return None
    return key


def _check(cfg: RunConfig) -> list[Problem]:
    P: list[Problem] = []
    custom_model, custom_data = is_import_string(cfg.model.arch), is_import_string(cfg.data.source)
    batch = None
    if custom_data:
        build = _load("data.source", cfg.data.source, DATA_CONTRACT, P)
        if build is None:
            return P
        batch = _check_data(cfg, build, P)
    elif cfg.task.kind == "lm":
        batch = _first_two("data.source", cfg.data.source, build_dataset(cfg, "eval"), P)
    if P or batch is None or cfg.task.kind != "lm":
        return P  # classify trains the built-in classifier: the (x, label) pairs above are what can go wrong
    if custom_model:
        build = _load("model.arch", cfg.model.arch, MODEL_CONTRACT, P)
        if build is not None:
            _check_model(cfg, build, batch, P)
    else:
        from workbench.models import build_model  # torch: only for configs that name a factory

        _check_model(cfg, build_model, batch, P)  # the reference GPT on your own data: tokens in its vocabulary
    return P


def _load(key: str, spec: str, contract: str, P: list[Problem]) -> Callable | None:
    """The factory a spec names, or None with a problem naming the key."""
    name, attr = spec.split(":", 1)
    try:
        importlib.invalidate_caches()  # a module file created since the last import is found
        module = importlib.import_module(name)
        origin = getattr(module, "__file__", None)
        mtime = os.path.getmtime(origin) if origin and os.path.exists(origin) else None
        if name in _imported_mtime and _imported_mtime[name] != mtime:
            # edited since: import it afresh (reload would keep names the file no longer defines), so the check
            # sees what the workers will import
            del sys.modules[name]
            module = importlib.import_module(name)
        _imported_mtime[name] = mtime  # type: ignore[assignment]
    except Exception as e:
        P.append(Problem(key, f"importing module {name!r} of {spec!r} raised {type(e).__name__}: {e}"))
        return None
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f' (did you mean "{name}:{close[0]}"?)' if close else ""
        where = f" ({os.path.relpath(origin)})" if origin else ""
        P.append(Problem(key, f"module {name!r}{where} has no {attr!r}{hint}; {key} names a function {contract}"))
        return None
    if not callable(fn):
        P.append(Problem(key, f"{spec!r} is {describe(fn)}, not a function; {key} names a function {contract}"))
        return None
    return fn


def describe(x: Any) -> str:
    """What came back, in a few words: a type, a tensor's shape and dtype, a tuple's element types."""
    import torch

    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (tuple, list)):
        inner = ", ".join(type(v).__name__ for v in x[:4]) + (", ..." if len(x) > 4 else "")
        return f"a {type(x).__name__} ({inner})"
    if x is None:
        return "None"
    return f"a {type(x).__module__}.{type(x).__qualname__}"


def _check_data(cfg: RunConfig, build: Callable, P: list[Problem]) -> Any:
    """Each split the run reads: a map-style Dataset of (x, y) pairs with one micro-batch per rank. Returns a
    batch of 2 from the training split for the model's check, or None."""
    spec, per_step = cfg.data.source, cfg.micro_batch_size * cfg.parallel.num_processes
    batch = None
    for split in ["train"] + (["eval"] if cfg.eval_every > 0 else []):
        try:
            ds = build(cfg, split)
        except Exception as e:
            P.append(Problem("data.source", f"{spec}(cfg, {split!r}) raised {type(e).__name__}: {e}"))
            return None
        if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            P.append(Problem("data.source", f"{spec}(cfg, {split!r}) returned {describe(ds)}; expected a map-style "
                             "Dataset (len() and [i]) of (x, y) pairs, e.g. TensorDataset(x, y)"))  # fmt: skip
            return None
        if len(ds) < per_step:
            P.append(Problem("data.source", f"{spec}(cfg, {split!r}) holds {len(ds)} items, fewer than "
                             f"micro_batch_size {cfg.micro_batch_size} x parallel.num_processes "
                             f"{cfg.parallel.num_processes}: no rank would get a full micro-batch"))  # fmt: skip
            return None
        two = _first_two("data.source", f"{spec}(cfg, {split!r})", ds, P)
        if two is None:
            return None
        batch = batch or two
    return batch


def _first_two(key: str, what: str, ds: Any, P: list[Problem]) -> Any:
    """ds[0] and ds[1] as one (x, y) batch of 2, or None with a problem saying what the items are."""
    from torch.utils.data import default_collate

    try:
        items = [ds[i] for i in range(min(2, len(ds)))]
    except Exception as e:
        P.append(Problem(key, f"{what}[0] raised {type(e).__name__}: {e}"))
        return None
    bad = next((it for it in items if not (isinstance(it, (tuple, list)) and len(it) == 2)), None)
    if bad is not None:
        P.append(Problem(key, f"{what} returned {describe(ds)} whose items are {describe(bad)}; expected a Dataset "
                         "whose items are (x, y) pairs, e.g. TensorDataset(x, y)"))  # fmt: skip
        return None
    try:
        return default_collate(items)
    except Exception as e:
        P.append(Problem(key, f"{what}'s first two items do not stack into a batch ({type(e).__name__}: {e})"))
        return None


def _check_model(cfg: RunConfig, build: Callable, batch: Any, P: list[Problem]) -> None:
    """build(cfg) is an nn.Module and one forward on the batch returns a scalar loss or (logits, loss).

    First on the meta device (shapes only: free for any size); if the factory or its forward does something
    meta cannot (reads real values, mixes in a CPU tensor), once more for real on the CPU."""
    import torch

    spec = cfg.model.arch if is_import_string(cfg.model.arch) else "the reference GPT"
    error = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build(cfg)
        except Exception as e:
            error = f"{spec}(cfg) raised {type(e).__name__}: {e}"
            continue
        if not isinstance(model, torch.nn.Module):
            hint = " (return the model alone: the optimizer comes from optimizer.*)" if isinstance(model, tuple) else ""
            P.append(Problem("model.arch", f"{spec}(cfg) returned {describe(model)}; expected an nn.Module{hint}"))
            return
        x, y = (t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
        try:
            with torch.no_grad():
                out = model(x, y)
        except Exception as e:
            error = f"model(x, y) on a micro-batch of 2 (x {describe(batch[0])}) raised {type(e).__name__}: {e}"
            continue
        loss = out[1] if isinstance(out, (tuple, list)) and len(out) >= 2 else out
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point()):
            P.append(Problem("model.arch", f"model(x, y) on a micro-batch of 2 returned {describe(out)}; expected "
                             "the mean loss as a scalar tensor, or a tuple (logits, loss)"))  # fmt: skip
        return
    P.append(Problem("model.arch", error or f"{spec}(cfg) could not be tried"))
