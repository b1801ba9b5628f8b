"""Planned against measured bytes per rank for Hugging Face models sharded by real FSDP2 on 2 CPU processes.

    python benchmarks/hf_shards.py

Builds tiny GPT-2 (Conv1D weights stored (in, out), q/k/v fused into c_attn, the head tied to the token
embedding, biases), BERT and Llama models with odd sizes (d_model 45, vocab 301: dim-0 chunks of unequal
length), applies ``fully_shard`` per block then at the root on a 2-process gloo group, trains one AdamW step
and compares ``workbench.measure.measure_state`` with ``workbench.plan`` for parameter, gradient and
optimizer bytes on each rank. tests/test_hf_parallel.py checks the same rule analytically (no processes);
this is the one-off check that the rule is FSDP2's. Prints a markdown table; exits 1 on a mismatch.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.config import RunConfig  # noqa: E402
from workbench.launch import free_port  # noqa: E402

KEYS = ("param_bytes", "grad_bytes", "optimizer_bytes")
BASE = {"model.n_layer": 2, "model.n_head": 5, "model.d_model": 45, "model.seq_len": 33, "data.vocab_size": 301,
        "parallel.strategy": "zero3", "parallel.num_processes": 2, "model.dropout": 0.0, "task.num_labels": 3}  # fmt: skip
MODELS = {
    "gpt2 lm": {"model.arch": "hf:gpt2"},
    "gpt2 classify": {"model.arch": "hf:gpt2", "task.kind": "classify", "model.hf_config": {"pad_token_id": 1}},
    "bert mlm": {"model.arch": "hf:bert", "task.kind": "mlm", "model.hf_config": {"intermediate_size": 77}},
    "bert classify": {"model.arch": "hf:bert", "task.kind": "classify", "model.hf_config": {"type_vocab_size": 3}},
    "llama lm": {
        "model.arch": "hf:llama",
        "model.n_head": 3,
        "model.d_model": 48,
        "model.hf_config": {"num_key_value_heads": 1, "intermediate_size": 77},
    },  # fmt: skip
}


def work(rank: int, world: int, port: int, queue) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from workbench.measure import measure_state
    from workbench.models.hf import build_hf_model
    from workbench.parallel.checkpointing import find_blocks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    for name, fields in MODELS.items():
        cfg = RunConfig().override({**BASE, **fields})
        torch.manual_seed(0)
        model = build_hf_model(cfg)
        for block in find_blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters())
        x = torch.randint(4, 300, (2, cfg.model.seq_len))
        y = torch.tensor([0, 1]) if cfg.task.kind == "classify" else x
        model(x, y)[1].backward()
        opt.step()
        measured = measure_state(model, opt)
        planned = wb.plan(cfg, device="cpu").ranks[rank]
        queue.put((name, rank, {k: (measured[k], getattr(planned, k)) for k in KEYS}))
    dist.destroy_process_group()


def main() -> int:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(work, args=(2, free_port(), queue), nprocs=2)
    rows = sorted(queue.get() for _ in range(2 * len(MODELS)))
    print("| model | rank | " + " | ".join(f"{k} measured / planned" for k in KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    ok = True
    for name, rank, values in rows:
        ok &= all(m == p for m, p in values.values())
        print(f"| {name} | {rank} | " + " | ".join(f"{m:,} / {p:,}" for m, p in values.values()) + " |")
    print("all equal" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
