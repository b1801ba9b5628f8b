"""After pretraining: a labelled task, a classification head, LoRA through peft, init_from and distillation.

Nothing can be downloaded here, so the "pretrained model" is one the workbench trained itself: a run's
checkpoint (``checkpoints/step_N/model.safetensors``, written by ``accelerator.save_state``).

    init_from: runs/quickstart                       # start from that run's latest checkpoint
    task: {kind: classify, num_labels: 2}            # or lm (next-token prediction, the default)
    peft: {method: lora, r: 8, alpha: 16, target: [attn, mlp]}   # or none (full) / frozen (head only)
    distill: {teacher: runs/big, temperature: 2.0, alpha: 0.5}   # optional

The labelled task ("sentiment") comes from the synthetic language itself (workbench/data/synthetic.py): the
vocabulary holds one small set of "sentiment words" per label, and a sequence of label k is drawn from the
pretraining chain tilted towards the words of set k (each transition into a set-k word is weighted by
exp(TILT) and the row renormalised). So every class speaks the language the model was pretrained on, with
an accent; because the generator is known, the Bayes-optimal accuracy (the posterior's argmax under the
true chains) is computable, the ceiling above the model just as the entropy floor is below the LM loss.

The worker (workbench/worker.py) calls into this module at a few points: ``dataset`` for the data,
``build`` for the model, ``load_teacher`` and ``distill_loss`` for distillation, ``evaluate`` for accuracy
and F1 on the validation split at eval steps and on the test split at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from workbench.config import LORA_TARGETS, RunConfig, model_checkpoint
from workbench.data.synthetic import MarkovChain
from workbench.models.gpt import GPT, GPTConfig, gpt_flops_per_token

if TYPE_CHECKING:
    from workbench.runs import Run

# log-weight added to every transition into a label's words. 0.75 gives a Bayes accuracy of ~0.93 on
# 64-token sequences of the 64-word quickstart language (a simple "count each label's words" rule: ~0.90),
# so a model has a ceiling to approach and the methods have room to differ.
TILT = 0.75
SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------------------------------------------
# the labelled task


def _stationary(P: np.ndarray) -> np.ndarray:
    # power iteration, as MarkovChain.make: all entries are positive, so the chain is ergodic and it converges
    pi = np.full(len(P), 1.0 / len(P))
    for _ in range(10_000):
        new = pi @ P
        if np.abs(new - pi).max() < 1e-15:
            break
        pi = new
    return new / new.sum()


@dataclass
class SentimentTask:
    """num_labels Markov chains: the pretraining language tilted towards one set of words per label."""

    chains: list[MarkovChain]
    words: list[np.ndarray]  # words[k]: the token ids whose frequency label k raises

    @classmethod
    def make(cls, base: MarkovChain, num_labels: int, seed: int, tilt: float = TILT) -> SentimentTask:
        V = len(base.stationary)
        per_label = max(1, V // (4 * num_labels))  # a quarter of the vocabulary carries sentiment
        perm = np.random.default_rng([seed, 1009]).permutation(V)
        words = [np.sort(perm[k * per_label : (k + 1) * per_label]) for k in range(num_labels)]
        chains = []
        for w in words:
            weight = np.ones(V)
            weight[w] = np.exp(tilt)
            P = base.transition * weight
            P /= P.sum(axis=1, keepdims=True)
            chains.append(MarkovChain(P, _stationary(P)))
        return cls(chains, words)

    @property
    def num_labels(self) -> int:
        return len(self.chains)

    def sample(self, n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """n sequences with balanced labels, in a seeded random order: (tokens (n, length), labels (n,))."""
        K = self.num_labels
        counts = [n // K + (1 if k < n % K else 0) for k in range(K)]
        xs = [c.sample(m, length, seed=[seed, k]) for k, (c, m) in enumerate(zip(self.chains, counts, strict=True))]
        x = np.concatenate(xs)
        y = np.repeat(np.arange(K), counts)
        order = np.random.default_rng([seed, 99]).permutation(n)
        return x[order], y[order]

    def log_likelihoods(self, x: np.ndarray) -> np.ndarray:
        """(n, K): log p(sequence | label k) under the true chains."""
        cols = []
        for c in self.chains:
            ll = np.log(c.stationary[x[:, 0]]) + np.log(c.transition[x[:, :-1], x[:, 1:]]).sum(axis=1)
            cols.append(ll)
        return np.stack(cols, axis=1)

    def bayes_accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy of the Bayes-optimal classifier (knows the generator) on these sequences: the ceiling."""
        return float((self.log_likelihoods(x).argmax(axis=1) == y).mean())


def _split_size(cfg: RunConfig, split: str) -> int:
    n = cfg.data.num_sequences
    return {"train": n, "validation": max(256, n // 16), "test": max(1024, n // 8)}[split]


@lru_cache(maxsize=4)
def _task(vocab: int, seed: int, num_labels: int) -> SentimentTask:
    from workbench.data import _chain

    return SentimentTask.make(_chain(vocab, seed), num_labels, seed)


def sentiment_task(cfg: RunConfig) -> SentimentTask:
    return _task(cfg.data.vocab_size, cfg.data.seed, cfg.task.num_labels)


@lru_cache(maxsize=8)
def _sample(vocab: int, seed: int, num_labels: int, split: str, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    code = SPLITS.index(split) + 11  # seeds of their own: the LM's train/eval sequences use other ones
    return _task(vocab, seed, num_labels).sample(n, length, seed=seed * 1000 + code)


def task_arrays(cfg: RunConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic sentiment split as numpy arrays (tokens (n, seq_len), labels (n,))."""
    d = cfg.data
    return _sample(d.vocab_size, d.seed, cfg.task.num_labels, split, _split_size(cfg, split), cfg.model.seq_len)


def dataset(cfg: RunConfig, split: str) -> Dataset:
    """The worker's data: (x, y) pairs, y a label for task.kind classify, the shifted tokens for lm.

    split: train, eval (= validation) or test.
    """
    from workbench.config import is_import_string
    from workbench.data import build_dataset, load_factory

    if cfg.task.kind == "lm":
        return build_dataset(cfg, "eval" if split in ("validation", "test") else split)
    if is_import_string(cfg.data.source):  # your own labelled data: build(cfg, split) -> Dataset of (x, label)
        return load_factory(cfg.data.source)(cfg, split)  # split: train, eval or test
    split = "validation" if split == "eval" else split
    x, y = task_arrays(cfg, split)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def chance_accuracy(cfg: RunConfig) -> float:
    """Accuracy of guessing: the labels are balanced, so 1 / num_labels."""
    return 1.0 / cfg.task.num_labels


def bayes_accuracy(cfg: RunConfig, split: str = "test") -> float:
    x, y = task_arrays(cfg, split)
    return sentiment_task(cfg).bayes_accuracy(x, y)


# ---------------------------------------------------------------------------------------------------------
# the classifier


class GPTClassifier(GPT):
    """The reference GPT with a classification head on the mean of its final hidden states.

    A subclass (not a wrapper) so a checkpoint of the language model loads into it name for name, and code
    that walks ``model.blocks`` finds them. The LM head is dropped: the score head replaces it.
    """

    def __init__(self, cfg: GPTConfig, num_labels: int):
        super().__init__(cfg)
        del self.head  # was tied to tok_emb; the embedding itself stays
        self.score = nn.Linear(cfg.d_model, num_labels)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.score.bias)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) final hidden states: GPT.forward up to the LM head."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(
        self, idx: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) tokens, labels (B,). Returns (logits (B, num_labels), mean cross-entropy or None).

        Mean pooling, not the last token: the label is a property of the whole sequence, and the mean keeps
        every position's evidence one step from the head."""
        logits = self.score(self.features(idx).mean(dim=1))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss

    def flops_per_token(self) -> int:
        """As GPT's, without the token table: here it only embeds (a lookup), it no longer un-embeds."""
        c = self.cfg
        n = self.num_params(non_embedding=True) - self.tok_emb.weight.numel()
        return gpt_flops_per_token(n, c.n_layer, c.n_head, c.d_model, c.seq_len)


def bare_model(cfg: RunConfig) -> nn.Module:
    """The model a config describes, freshly initialised (no init_from, no peft)."""
    from workbench.models import build_model, gpt_config

    if cfg.task.kind == "classify":
        return GPTClassifier(gpt_config(cfg), cfg.task.num_labels)
    return build_model(cfg)


def lora_modules(cfg: RunConfig) -> list[str]:
    """peft's target_modules: the GPT's Linear names for peft.target ([attn, mlp] -> q k v o fc1 fc2)."""
    return sorted({name for t in cfg.peft.target for name in LORA_TARGETS.get(t, (t,))})


def wrap_lora(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """LoRA adapters on the chosen Linears through peft; the classification head trains in full.

    peft freezes every base weight and adds W + (alpha / r) B A per target, A (r, in) random and B (out, r)
    zero, so the wrapped model starts out computing exactly what the pretrained one did."""
    from peft import LoraConfig, get_peft_model  # imported here: peft pulls in transformers (seconds)

    lc = LoraConfig(
        r=cfg.peft.r,
        lora_alpha=cfg.peft.alpha,
        target_modules=lora_modules(cfg),
        lora_dropout=0.0,
        bias="none",
        modules_to_save=["score"] if cfg.task.kind == "classify" else None,
    )
    return get_peft_model(model, lc)


def lora_param_count(cfg: RunConfig) -> int:
    """Trainable parameters of a LoRA model, by formula: r (in + out) per adapted Linear, plus the head."""
    d, r = cfg.model.d_model, cfg.peft.r
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
    n = cfg.model.n_layer * sum(r * (i + o) for name, (i, o) in shapes.items() if name in lora_modules(cfg))
    if cfg.task.kind == "classify":
        n += d * cfg.task.num_labels + cfg.task.num_labels
    return n


def read_weights(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """The model's state dict in a save_state folder (safetensors, or torch.load with weights_only)."""
    st = os.path.join(ckpt_dir, "model.safetensors")
    if os.path.isfile(st):
        from safetensors.torch import load_file

        return load_file(st)
    return torch.load(os.path.join(ckpt_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True)


def _run_path(run: str | Run) -> str:
    return os.path.abspath(getattr(run, "path", run))


def load_model(run: str | Run, merge: bool = True) -> nn.Module:
    """A run's model from its latest checkpoint, on the CPU in eval mode.

    A LoRA run is rebuilt with its adapters and, with merge=True, merged (W += (alpha / r) B A) and
    unwrapped into a plain module: what export, quantize and prune need, and what a next init_from loads.
    """
    path = _run_path(run)
    cfg = RunConfig.from_yaml(os.path.join(path, "config.yaml"))
    ckpt = model_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path!r} holds no checkpoint with model weights (checkpoints/step_N/)")
    model = bare_model(cfg)
    if cfg.peft.method == "lora":
        model = wrap_lora(cfg, model)
    sd = read_weights(ckpt)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # the tied LM head is saved once, as tok_emb.weight (safetensors refuses shared tensors)
    missing = [k for k in missing if not k.endswith("head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match its config: missing {missing}, unexpected {unexpected}")
    if cfg.peft.method == "lora" and merge:
        model = model.merge_and_unload()
    model.requires_grad_(False)
    return model.eval()


def run_config(run: str | Run) -> RunConfig:
    return RunConfig.from_yaml(os.path.join(_run_path(run), "config.yaml"))


def active(cfg: RunConfig) -> bool:
    """True when the config asks for anything of this module (else the worker builds the plain model)."""
    return bool(cfg.init_from) or cfg.task.kind != "lm" or cfg.peft.method != "none"


def build(cfg: RunConfig) -> nn.Module:
    """The model to train: the config's architecture, weights from init_from, then peft's wrapping.

    Called on every rank right after set_seed, so fresh parts (a new head, LoRA's A) match across ranks.
    """
    model = bare_model(cfg)
    if cfg.init_from:
        src = load_model(cfg.init_from).state_dict()
        own = model.state_dict()
        # A head trained for another task (or another label count) does not fit: it starts fresh.
        same_task = run_config(cfg.init_from).task == cfg.task
        take = {k: v for k, v in src.items() if k in own and (same_task or not k.startswith("score."))}
        fresh = [k for k in own if k not in take and not k.endswith("head.weight")]
        if any(not k.startswith("score.") for k in fresh):
            raise RuntimeError(f"init_from {cfg.init_from!r} lacks weights for {fresh}")
        model.load_state_dict(take, strict=False)
    if cfg.peft.method == "frozen":
        # linear probing: the backbone is a fixed feature extractor, only the head learns
        model.requires_grad_(False)
        model.score.requires_grad_(True)
    elif cfg.peft.method == "lora":
        model = wrap_lora(cfg, model)
    return model


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------
# distillation


def load_teacher(cfg: RunConfig, device: torch.device) -> nn.Module | None:
    """distill.teacher's model, frozen in eval mode on this rank's device (not wrapped: it never trains)."""
    if not cfg.distill.teacher:
        return None
    return load_model(cfg.distill.teacher).to(device)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard-label loss.

    Both distributions are softened by the temperature T; the T^2 keeps the soft term's gradients on the
    same scale as the hard one's as T changes. Logits of any shape (..., classes): the KL is averaged over
    every prediction (each sequence for classify, each token for lm)."""
    C = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, C) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, C) / temperature, dim=-1)
    soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    return alpha * soft + (1.0 - alpha) * hard_loss


def distill_step_loss(cfg: RunConfig, teacher: nn.Module):
    """loss(model, x, y) for the worker's micro-step when a teacher is set."""
    T, a = cfg.distill.temperature, cfg.distill.alpha

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, hard = model(x, y)
        with torch.no_grad():
            t_logits = teacher(x)[0]
        return distill_loss(logits, t_logits, hard, T, a)

    return loss


# ---------------------------------------------------------------------------------------------------------
# metrics


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """accuracy and F1 from a (true, predicted) confusion matrix.

    F1: of label 1 (the "positive" class) when there are two labels, as usual for a binary task; the
    unweighted mean over labels (macro-F1) for more."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    tp = np.diag(confusion)
    pred, true = confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(pred + true > 0, 2 * tp / (pred + true), 0.0)
    return {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "f1": float(f1[1]) if len(f1) == 2 else float(f1.mean()),
    }


def evaluate(
    acc: Any, model: nn.Module, dl: Any, num_labels: int, max_batches: int | None, ctx: Any
) -> dict[str, float]:
    """loss, accuracy and F1 of a classifier over a prepared DataLoader (max_batches per rank, or all).

    Predictions are gathered with gather_for_metrics, which drops the samples Accelerate repeats to even
    out the last batch across ranks, so every test sequence counts exactly once."""
    model.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64, device=acc.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
    count = 0
    with torch.no_grad(), ctx:
        for i, (x, y) in enumerate(dl):
            if max_batches is not None and i >= max_batches:
                break
            logits = model(x)[0].float()
            ce = F.cross_entropy(logits, y, reduction="none")
            pred, y, ce = acc.gather_for_metrics((logits.argmax(dim=-1), y, ce))
            confusion.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
            loss_sum += ce.double().sum()
            count += len(y)
    model.train()
    out = classification_metrics(confusion.cpu().numpy())
    out["loss"] = float(loss_sum) / max(count, 1)
    return out


def eval_event(
    acc: Any, model: nn.Module, dl: Any, cfg: RunConfig, ctx: Any, split: str = "eval", max_batches: int | None = None
) -> dict[str, float]:
    """{eval_loss, eval_accuracy, eval_f1} (or test_...) for a metric event."""
    m = evaluate(acc, model, dl, cfg.task.num_labels, max_batches, ctx)
    return {f"{split}_loss": m["loss"], f"{split}_accuracy": m["accuracy"], f"{split}_f1": m["f1"]}


def first_event(cfg: RunConfig, effective: dict[str, Any]) -> dict[str, Any]:
    """Keys for a run's first metric event: trainable_params, and for the synthetic task its chance level
    and Bayes-optimal test accuracy (the ceiling drawn above the accuracy curve)."""
    out: dict[str, Any] = {"trainable_params": effective["trainable_params"]}
    if cfg.task.kind == "classify" and cfg.data.source == "synthetic":
        out["chance_accuracy"] = chance_accuracy(cfg)
        out["bayes_accuracy"] = bayes_accuracy(cfg, "test")
    return out
