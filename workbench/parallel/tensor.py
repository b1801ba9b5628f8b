"""tp and dp_tp: tensor parallelism with DTensor, alone or under FSDP2 on a 2-D device mesh.

Megatron's split of a transformer block, written as a DTensor plan:

    attention  q, k, v  ColwiseParallel   each rank computes n_head / tp_size heads (output features sharded)
               o        RowwiseParallel   partial outputs summed across ranks (one all-reduce)
    MLP        fc1      ColwiseParallel   4*d_model / tp_size hidden units per rank
               fc2      RowwiseParallel   one all-reduce

so a block costs two all-reduces of the activations forward and their mirror images backward, and no rank
ever holds a whole attention or MLP weight. The GPT's attention already views its q/k/v as
``(B, T, -1, head_dim)``, so it works on the local heads without knowing about tensor parallelism.
Embeddings, LayerNorms and the tied head stay replicated (plain tensors, identical on every tp rank).

Hugging Face models take the same split under their own module names: llama, mistral and qwen2 with SwiGLU's
gate/up Colwise and down Rowwise, BERT as the GPT (query/key/value, attention.output, intermediate, output), (``HFModel.tp_plan_names``, from models/hf_config.py). Why DTensor's
``parallelize_module`` and not transformers' own plan (``from_config(..., distributed_config=DistributedConfig(tp_plan="auto"))``): the model is
built before the layout (the worker builds every model the same way; transformers' plan wants to build it
under its own device mesh), the split is the one the planner counts (models/shapes.py, one home) and is
applied block by block as ``find_blocks`` finds them, and dp_tp's FSDP2 over the dp dimension composes with
it as it does for the GPT. Their attention also views q/k/v as ``(B, T, -1, head_dim)`` and takes its GQA
group size (num_attention_heads // num_key_value_heads) from the config, which is the same ratio on every
rank when both divide by tp_size (validated before launch), so they work on the local heads unchanged; so
does BERT's. GPT-2 is refused (Conv1D weights, q/k/v fused in one matrix: models/hf_config.py says why).

dp_tp puts ranks on a 2-D mesh ("dp", "tp"): tensor parallel inside a row, FSDP2 (ZeRO-3) across rows.
It needs >= 4 processes to be both at once; with 2 the mesh is (1, 2) or (2, 1): the same code, one
dimension of size 1 (what CI can run).

The tensor-parallel ranks of a row train on one batch together: each process loads its own micro-batch
and the row stacks them (``Layout.pool``), so the global batch is the same as in every other layout.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from workbench.models.family import family_of
from workbench.parallel.checkpointing import find_blocks
from workbench.parallel.common import DTensorLayout, loss_of


def tp_plan(names: dict[str, str]) -> dict[str, Any]:
    """DTensor styles for one block from its family's plan (module path -> "colwise" | "rowwise")."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {k: ColwiseParallel() if v == "colwise" else RowwiseParallel() for k, v in names.items()}


def plan_names_of(model: nn.Module) -> dict[str, str]:
    """The model's block split, as its family states it (validation refused a family without one)."""
    names = family_of(model).tp_plan(model)
    if names is None:
        raise ValueError(f"{family_of(model).name} has no tensor-parallel plan")
    return names


class TensorParallelLayout(DTensorLayout):
    checkpoint_format = "torch.distributed.checkpoint (sharded, one file per rank)"

    def __init__(
        self, cfg: Any, acc: Any, model: nn.Module, make_optimizer: Any, *, data_parallel: bool, **kw: Any
    ) -> None:
        """data_parallel: a (dp, tp) mesh with FSDP2 across its rows (dp_tp); False: one tensor-parallel group."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from torch.distributed.tensor.parallel import parallelize_module

        super().__init__(cfg, acc, **kw)
        p = cfg.parallel
        self.strategy = p.strategy
        self.tp = p.tp_size
        self.dp = self.world // self.tp
        dev = self.device.type
        self.data_parallel = data_parallel
        if not data_parallel:
            self.mesh = init_device_mesh(dev, (self.tp,), mesh_dim_names=("tp",))
            tp_mesh, dp_mesh = self.mesh, None
        else:
            self.mesh = init_device_mesh(dev, (self.dp, self.tp), mesh_dim_names=("dp", "tp"))
            tp_mesh, dp_mesh = self.mesh["tp"], self.mesh["dp"]
        self.comm_group = tp_mesh.get_group()
        model = model.to(self.device)
        self.plan_names = plan_names_of(model)
        family_of(model).pool_loss_groups(model, self.tp)  # the model computes on tp micro-batches stacked
        blocks = find_blocks(model)
        for block in blocks:
            parallelize_module(block, tp_mesh, tp_plan(self.plan_names))
        if dp_mesh is not None:
            # FSDP2 over the dp dimension, applied after TP (torchtitan's order): each rank holds 1/dp of its
            # TP shard. bf16 through FSDP2's policy, as in zero2/zero3.
            mp = MixedPrecisionPolicy()
            if cfg.precision == "bf16":
                mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                self.fwd_ctx = nullcontext()  # FSDP2 casts; no autocast on top
            for block in blocks:
                fully_shard(block, mesh=dp_mesh, mp_policy=mp)
            fully_shard(model, mesh=dp_mesh, mp_policy=mp)
        self.model = model
        self.optimizer = make_optimizer(model)

    def _micro_step(self, x, y, last):
        x, y = self.pool(x, y)
        with self.fwd_ctx:
            loss = loss_of(self.model(x, y))
        (loss / self.accum).backward()
        return loss.detach().float(), self._one

    def eval_loss(self, x, y):
        x, y = self.pool(x, y)
        return super().eval_loss(x, y)

    def wrapper_name(self) -> str:
        base = type(self.model).__name__
        return f"{base} (DTensor tensor parallel)" if not self.data_parallel else f"{base} (FSDP2 x DTensor TP)"

    def extra_facts(self) -> dict[str, Any]:
        return {"mesh": dict(zip(self.mesh.mesh_dim_names, self.mesh.shape, strict=True)), "tp_plan": self.plan_names}
