"""The measured counterparts of the plan: what a rank really holds, counted from its tensors.

The worker calls these once, at the first optimizer step, and records the result per rank in status.json
("measured", next to "planned" = ``wb.plan(cfg).to_dict()``) and in the first metric event. The names are
the plan's: param_bytes, grad_bytes, optimizer_bytes, master_bytes, activation_bytes, buffer_bytes.

Counting rules, so that every layout counts right:
- a tensor counts with its LOCAL storage: a DTensor (tensor parallel, FSDP2's shards) by ``_local_tensor``,
  so a rank holding a shard counts the shard, not the global size;
- each storage counts once (tied weights, views, a gradient that aliases a DDP bucket);
- activations are the tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``),
  minus parameters and views of them (saved weights are parameters, counted already). Under autocast the bf16 copies of the
  weights ARE counted: they are new tensors, held until backward. The figure is the peak of what is held at
  once, so a pipeline schedule that runs several micro-batches' forwards before their backwards counts all
  of those in flight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from workbench.plan.result import MEMORY_FIELDS as FIELDS  # the plan's names and order: one list

__all__ = ["FirstStepMeter", "SavedTensorsMeter", "local_tensor", "measure_state", "tensor_bytes"]


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this rank stores: a DTensor's local shard, else `t` itself."""
    inner = getattr(t, "_local_tensor", None)  # DTensor: attribute access, no autograd op, no communication
    return inner if isinstance(inner, torch.Tensor) else t


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
        return (s.data_ptr(), s.nbytes())
    except (RuntimeError, NotImplementedError):
        return None


def tensor_bytes(tensors, seen: set | None = None) -> int:
    """Bytes of the distinct local tensors in `tensors` (each storage once; the tensor's own extent, so a
    shard that views into a larger padded buffer counts its shard)."""
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = local_tensor(t)
        key = (_storage_key(t), t.storage_offset(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def ddp_bucket_bytes(model: nn.Module) -> int:
    """DistributedDataParallel's flat gradient buckets, as its reducer reports them: a second gradient-sized
    buffer per rank, unless gradient_as_bucket_view makes the gradients views into the buckets."""
    get = getattr(model, "_get_ddp_logging_data", None)
    if get is None:
        return 0
    try:
        data = get()
        if int(data.get("gradient_as_bucket_view", 0)):
            return 0
        sizes = str(data.get("bucket_sizes", "") or "")
        return sum(int(x) for x in sizes.replace(" ", "").split(",") if x)
    except Exception:  # logging data is a diagnostic API: a missing key must not fail a run
        return 0


def _unwrap_optimizer(opt: Any) -> Any:
    """AcceleratedOptimizer -> torch optimizer; ZeroRedundancyOptimizer -> its local (sharded) optimizer."""
    for _ in range(4):
        inner = getattr(opt, "optimizer", None)
        if inner is not None and inner is not opt:
            opt = inner
            continue
        inner = getattr(opt, "optim", None)  # ZeroRedundancyOptimizer keeps this rank's shard here
        if isinstance(inner, torch.optim.Optimizer):
            opt = inner
            continue
        break
    return opt


def _state_tensors(state: Any):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _state_tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _state_tensors(v)


def measure_state(model: nn.Module, optimizer: Any | None = None) -> dict[str, int]:
    """Bytes of parameters, gradients, optimizer state, fp32 master copies and module buffers on this rank.

    Call it after an optimizer step and before zero_grad: optimizer state exists from the first step on,
    and gradients until zero_grad(set_to_none=True)."""
    params = list(dict.fromkeys(model.parameters()))  # a shared (tied) parameter once
    param_keys: set = set()
    out = {"param_bytes": tensor_bytes(params, param_keys)}
    out["grad_bytes"] = tensor_bytes([p.grad for p in params])
    out["buffer_bytes"] = tensor_bytes(list(model.buffers())) + ddp_bucket_bytes(model)
    opt_bytes = master = 0
    if optimizer is not None:
        opt = _unwrap_optimizer(optimizer)
        opt_bytes = tensor_bytes(_state_tensors(list(opt.state.values())))
        # Master weights: tensors the optimizer updates that are not the model's parameters (a separate fp32
        # copy kept by a mixed-precision wrapper). Accelerate's autocast keeps none.
        model_keys = {(_storage_key(local_tensor(p)), local_tensor(p).storage_offset()) for p in params}
        opt_params = [p for g in opt.param_groups for p in g["params"]]
        masters = [
            p for p in opt_params if (_storage_key(local_tensor(p)), local_tensor(p).storage_offset()) not in model_keys
        ]
        master = tensor_bytes(masters)
    out["optimizer_bytes"] = opt_bytes
    out["master_bytes"] = master
    return out


def _is_parameter(t: torch.Tensor) -> bool:
    """A parameter, or a view of one (a Linear saves its weight as weight.t()). This also catches FSDP2's
    unsharded parameters (nn.Parameters that are not the registered, sharded ones, and which FSDP frees
    after forward whatever autograd holds). Other leaves that require grad, such as a pipeline stage's
    received input, are activations."""
    base = t._base if t._base is not None else t
    return isinstance(t, nn.Parameter) or isinstance(base, nn.Parameter)


class _Held:
    """What the pack hook returns: keeps the tensor for backward and tells the meter when autograd lets go."""

    __slots__ = ("meter", "key", "t")

    def __init__(self, meter: SavedTensorsMeter, key: Any, t: torch.Tensor):
        # detach(): a saved OUTPUT's grad_fn would otherwise reference this holder, which references the
        # output: a cycle that only the garbage collector frees, so memory (and our count) would lag.
        self.meter, self.key, self.t = meter, key, t.detach()

    def __del__(self) -> None:
        if self.key is not None:
            self.meter._release(self.key)


class SavedTensorsMeter:
    """Counts the bytes autograd holds for backward while the context is active; ``peak_bytes`` is the most
    held at once (for a plain step: everything saved by the end of forward).

        meter = SavedTensorsMeter(model)
        with meter:
            loss = model(x, y)[1]
        loss.backward()
        meter.peak_bytes

    Each storage counts once (q, k and v are views into their Linear's output; x is saved by several ops).
    Parameters are left out: they are counted as param_bytes. Tensors saved inside a non-reentrant
    activation checkpoint are handled by the checkpoint's own hooks (the inner hooks win), so what this sees
    is what checkpointing really keeps: the inputs of each checkpointed block.
    """

    def __init__(self, model: nn.Module | None = None):
        self._param_keys: set = set()
        if model is not None:
            for p in model.parameters():
                k = _storage_key(local_tensor(p))
                if k is not None:
                    self._param_keys.add(k[0])
        self._live: dict[Any, list[int]] = {}  # storage -> [references, bytes]
        self.live_bytes = 0
        self.peak_bytes = 0
        self.saved_count = 0
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> Any:
        local = local_tensor(t)
        if _is_parameter(t) or _is_parameter(local):
            return _Held(self, None, t)
        key = _storage_key(local)
        if key is None or key[0] in self._param_keys or key[1] == 0:
            return _Held(self, None, t)
        self.saved_count += 1
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [1, key[1]]
            self.live_bytes += key[1]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            entry[0] += 1
        return _Held(self, key, t)

    @staticmethod
    def _unpack(held: _Held) -> torch.Tensor:
        return held.t

    def _release(self, key: Any) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._live[key]
            self.live_bytes -= entry[1]

    def __enter__(self) -> SavedTensorsMeter:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def peak_device_bytes(device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated on a GPU (every byte the caching allocator handed out); None on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


class FirstStepMeter:
    """The worker's measurement: the bytes saved for backward during the first optimizer step (their peak:
    one micro-batch, or the micro-batches a pipeline stage holds in flight), and the bytes held (params,
    grads, optimizer state, master copies, buffers) at the end of that step, just before zero_grad.

    Hooks only, so it follows whatever the training step looks like: the model's first forward pre-hook
    starts counting; the first ``optimizer.zero_grad()`` after a backward stops it, measures, and removes
    every hook, so later steps run without them. zero_grad rather than the optimizer's step hook because
    every layout calls it once per step on every rank, while some ranks never step an optimizer (a parameter
    server's workers). Counting spans forward and what follows it, because some layouts compute the loss
    outside the model's forward (the pipeline's last stage), and its log-softmax is saved like any activation.
    """

    def __init__(self, model: nn.Module, optimizer: Any):
        self.model = model
        self.optimizer = optimizer
        self.saved = SavedTensorsMeter(model)
        self.result: dict[str, int] | None = None
        self.cuda_peak: int | None = None
        self._counting = False
        self._pre = model.register_forward_pre_hook(self._start)
        # An instance attribute shadows the class's zero_grad for this one object, until remove() deletes it.
        optimizer.zero_grad = self._zero_grad

    def _start(self, module: nn.Module, args: Any) -> None:
        if not self._counting and self.result is None:
            self._counting = True
            self.saved.__enter__()
        self._pre.remove()  # only the first forward starts it

    def _zero_grad(self, *args: Any, **kwargs: Any) -> Any:
        if self.result is None and self._counting and any(p.grad is not None for p in self.model.parameters()):
            self.saved.__exit__(None, None, None)
            self._counting = False
            out = measure_state(self.model, self.optimizer)
            out["activation_bytes"] = self.saved.peak_bytes
            self.result = out
            self.cuda_peak = peak_device_bytes(next(self.model.parameters()).device)
            self.remove()
        return type(self.optimizer).zero_grad(self.optimizer, *args, **kwargs)

    def remove(self) -> None:
        self._pre.remove()
        if self.optimizer.__dict__.get("zero_grad") is not None:
            del self.optimizer.zero_grad

    def local(self) -> dict[str, Any] | None:
        """This rank's measurement (None before the first optimizer step)."""
        if self.result is None:
            return None
        d: dict[str, Any] = {f: int(self.result.get(f, 0)) for f in FIELDS}
        d["total_bytes"] = sum(d[f] for f in FIELDS)
        if self.cuda_peak is not None:
            d["max_memory_allocated"] = self.cuda_peak
        return d

    def gather(self, acc: Any) -> list[dict[str, Any]]:
        """Every rank's measurement, on every rank (one all-gather: call it where the ranks sync anyway)."""
        mine = self.local()
        vals = [float(mine[f]) if mine else -1.0 for f in FIELDS]
        vals.append(float(mine.get("max_memory_allocated", -1)) if mine else -1.0)
        t = torch.tensor(vals, dtype=torch.float64, device=acc.device)
        rows = acc.gather(t.unsqueeze(0)).view(-1, len(vals)).tolist()
        out = []
        for r, row in enumerate(rows):
            if row[0] < 0:
                out.append({"rank": r})  # no optimizer step yet (an fp16 step skipped on overflow)
                continue
            d: dict[str, Any] = {"rank": r, **{f: int(v) for f, v in zip(FIELDS, row, strict=False)}}
            d["total_bytes"] = sum(d[f] for f in FIELDS)
            if row[-1] >= 0:
                d["max_memory_allocated"] = int(row[-1])
            out.append(d)
        return out


def planned(cfg: Any, device: torch.device) -> dict[str, Any]:
    """``wb.plan(cfg).to_dict()`` for the device this run is on, for status.json next to "measured"."""
    from workbench.plan import device_key_for, plan

    key = "cpu"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = device_key_for(name)
        if key is None:  # no figures for this card: no plan, rather than another card's numbers
            return {"error": f"no plan: the planner has no memory or peak figures for the GPU {name!r}"}
    try:
        return plan(cfg, device=key).to_dict()
    except Exception as e:  # the plan is a prediction: a gap in it must never stop a training run
        return {"error": f"{type(e).__name__}: {e}"}
