"""Activations: the bytes autograd saves for backward, derived op by op from ``workbench/models/gpt.py`` and
checked against ``saved_tensors_hooks`` (``workbench/measure.py``) in ``tests/test_plan.py``."""

from __future__ import annotations

from workbench.models.shapes import TransformerShape
from workbench.plan.precision import Precision


def block_activation_bytes(
    s: TransformerShape,
    tokens: int,
    p: Precision,
    tp: int = 1,
    dropout: float = 0.0,
    cpu_dropout: bool = True,
    casts: bool = True,
) -> int:
    """Bytes one Block saves for backward for `tokens` tokens (micro_batch_size x seq_len), its Linears
    split `tp` ways (Colwise q/k/v/fc1, Rowwise o/fc2, no sequence parallelism). r = bytes of the residual
    stream (4; 2 under FSDP's bf16), a = bytes of the compute dtype (4 fp32, 2 bf16/fp16); per token:

      ln1, ln2       their input, the residual x (r·d), + mean and rstd (r each)  -> 2 x (r·d + 2r)
      q, k, v        ln1's output: one tensor; under autocast each Linear casts its input itself
                     (autocast caches casts of weights only), so three copies       -> a·d or 3·a·d
      attention      SDPA (flash kernel): q, k, v, its output (a·d/tp each) and the logsumexp (fp32, one per head)
      o              its input is SDPA's output itself: the kernel lays it out (B, T, H, Q), so the
                     transpose + reshape back to (B, T, d) is a view, not a copy                -> 0
      fc1            ln2's output                                                   -> a·d
      gelu, fc2      fc1's output and gelu's output                                 -> 2 x a·4d/tp
    Under autocast the casts of the four d x d and two 4d x d weights are saved too, once per autocast
    region (autocast caches them: a pipeline's micro-batches, all run in one region, share them).

    With model.dropout > 0 on CPU, SDPA takes its math path (the flash kernel has no dropout there), in fp32
    under autocast: copies of q, k, v (3 x 4d), the softmax, the dropout mask and the dropped probabilities
    (3 x 4·H·T, quadratic in T), then o's input (a·d: a copy, or its cast); and the two residual dropouts
    save their masks, in the dtype of their input (CPU dropout multiplies by a mask tensor) -> 2 x a·d.
    """
    a, d, r = p.act, s.d_model, p.resid
    qkv_in = (3 if p.autocast else 1) * a * d
    ln = 2 * (r * d + 2 * r)
    if dropout > 0:
        if cpu_dropout:
            m = 4 if p.autocast or a == 4 else a  # the math path runs in fp32 under autocast
            attn = (3 * m * d + 3 * m * s.n_head * s.seq_len + a * d) // tp
            masks = 2 * a * d
        else:  # GPUs keep the flash kernel (it drops inside, saving an RNG state); masks of 1 byte
            attn = (4 * a * d + 4 * s.n_head) // tp
            masks = 2 * d
        per_token = ln + qkv_in + attn + masks + a * d + 2 * a * 4 * d // tp
    else:
        per_token = ln + qkv_in + (4 * a * d + 4 * s.n_head) // tp + a * d + 2 * a * 4 * d // tp
    out = per_token * tokens
    if p.autocast and casts:
        out += a * (12 * d * d) // tp
    return out


def outer_activation_bytes(
    s: TransformerShape,
    batch: int,
    p: Precision,
    first: bool = True,
    last: bool = True,
    dropout: float = 0.0,
    ids: bool = True,
    casts: bool = True,
) -> int:
    """Bytes saved outside the Blocks: token ids (int64) for the embedding, the position ids (+ the mask of
    the embedding dropout), ln_f, the head's input, log_softmax's fp32 output (V per token; nll_loss saves
    the same tensor), the int64 targets and nll_loss's total_weight (one fp32). ids=False leaves out the
    token ids and targets (a pipeline stage holds them once for all its micro-batches)."""
    tokens = batch * s.seq_len
    out = 0
    if first:
        out += 8 * s.seq_len + (8 * tokens if ids else 0)  # embedding(pos) saves pos; embedding(idx) saves idx
        if dropout > 0:
            out += p.resid * s.d_model * tokens
    if last:
        out += (
            tokens * ((p.resid * s.d_model + 2 * p.resid) + p.act * s.d_model + 4 * s.vocab_size + (8 if ids else 0))
            + 4
        )
        if p.autocast and casts:
            out += p.act * s.vocab_size * s.d_model  # the head's (tied) weight, cast
    return out


class Activations:
    """Activation bytes of a rank as a function of micro_batch_size, from its layout ("spec"): blocks held,
    first/last stage, tp degree, pipeline micro-batches in flight, and how many processes pool their
    micro-batches into the batch this rank computes on (a tensor-parallel row, a pipeline). The planner's
    bisection over micro_batch_size reuses it without recounting the rest."""

    def __init__(
        self, s: TransformerShape, p: Precision, ckpt: bool, dropout: float, on_cpu: bool, pp_microbatches: int
    ):
        self.s, self.p, self.ckpt, self.dropout, self.on_cpu = s, p, ckpt, dropout, on_cpu
        self.m = pp_microbatches  # 0: no pipeline; else each pooled batch flows as m pipeline micro-batches
        self.fp16_scaler = False
        self._specs: dict[int, tuple] = {}
        self._default: tuple | None = None

    def set_spec(self, rank: int, spec: tuple) -> tuple:
        if self._default is None:
            self._default = spec
        elif spec != self._default:
            self._specs[rank] = spec
        return spec

    def spec(self, rank: int) -> tuple:
        return self._specs.get(rank, self._default)

    def one(self, layers: int, first: bool, last: bool, tp: int, batch: int, ids: bool, casts: bool = True) -> int:
        s, p = self.s, self.p
        if self.ckpt:
            # checkpoint(block, x, use_reentrant=False) keeps only each Block's input (the residual stream)
            per_block = p.resid * s.d_model * batch * s.seq_len
        else:
            per_block = block_activation_bytes(s, batch * s.seq_len, p, tp, self.dropout, self.on_cpu, casts)
        out = layers * per_block + outer_activation_bytes(s, batch, p, first, last, self.dropout, ids, casts)
        # fp16's GradScaler multiplies the loss by its scale, a tensor autograd saves
        return out + (4 if self.fp16_scaler and last else 0)

    delta = staticmethod(lambda B: 0)  # fine-tuning's difference from the full model (see finetuning.py)

    def bytes(self, spec: tuple, B: int) -> int:
        layers, first, last, tp, in_flight, pooled = spec
        batch = B * pooled
        if not self.m:
            return self.one(layers, first, last, tp, batch, True) + self.delta(B)
        # A pipeline stage holds `in_flight` micro-batches of batch/m sequences; the token ids (first stage)
        # and targets (last) are views into the one pooled batch, held once.
        mb = max(1, batch // self.m)
        ids = 8 * batch * self.s.seq_len * (int(first) + int(last))
        # The schedule runs all its micro-batches in one autocast region: the weight casts are made once.
        casts = self.one(layers, first, last, tp, mb, False) - self.one(layers, first, last, tp, mb, False, False)
        return in_flight * self.one(layers, first, last, tp, mb, False, False) + casts + ids


def lora_activations(
    s: TransformerShape, p: Precision, adapted: set[str], rank: int, B: int, classify: bool, nl: int
) -> int:
    """Bytes saved for one micro-batch by a LoRA model (peft: base weights frozen, W x + B A x per adapted
    Linear), walking the GPT in order, because what a frozen op saves depends on whether gradients flow
    through it yet: nothing before the first adapter needs a gradient (the embeddings are frozen too).

    A frozen Linear saves no input (its weight gets no gradient); for its input's gradient it needs its
    weight: under autocast that is the bf16 cast of the weight, saved (a·in·out). An adapter saves A's input
    (under autocast its own cast of it), A's output (r), and under autocast the casts of A and B.
    """
    a, r, d, T = p.act, p.resid, s.d_model, s.seq_len
    tokens = B * T
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
    out = 0  # the frozen embeddings save neither the token nor the position ids
    grad = False  # does the residual stream carry a gradient yet?

    def linear(name: str, x_grad: bool, input_saved: bool) -> tuple[int, bool]:
        i, o = shapes[name]
        b = 0
        if p.autocast and x_grad:
            b += a * i * o  # the frozen weight's cast, for the input's gradient
        if name in adapted:
            if p.autocast or not input_saved:
                b += a * i * tokens  # A's input (autocast casts it per Linear; in fp32 it may be saved already)
            b += a * rank * tokens  # B's input: A's output
            if p.autocast:
                b += a * rank * o  # B's cast (A's output carries a gradient)
                b += a * rank * i if x_grad else 0  # A's cast, only if A's input needs a gradient
        return b, x_grad or name in adapted

    for _ in range(s.n_layer):
        if grad:
            out += (r * d + 2 * r) * tokens  # ln1
        qkv_saved = False
        g = grad
        for n in ("q", "k", "v"):
            b, gn = linear(n, grad, qkv_saved)
            out += b
            qkv_saved = qkv_saved or (n in adapted)
            g = g or gn
        if g:
            out += (4 * a * d + 4 * s.n_head) * tokens  # SDPA's q, k, v, out, logsumexp
        b, g2 = linear("o", g, g)  # o's input is SDPA's output: saved already when attention saves
        out += b
        grad = g or g2
        if grad:
            out += (r * d + 2 * r) * tokens  # ln2
        b, g3 = linear("fc1", grad, False)
        out += b
        if g3:
            out += a * 4 * d * tokens  # gelu's input
        b, g4 = linear("fc2", g3, False)
        out += b
        grad = grad or g3 or g4
    if grad:
        out += (r * d + 2 * r) * tokens  # ln_f
    if classify:  # the trained head copy (modules_to_save): its input, and the loss
        out += B * (a * d + 4 * nl + 8) + (a * d * nl if p.autocast else 0) + 4
    else:  # the frozen, tied LM head: no input saved, its weight's cast under autocast; the loss
        out += tokens * (4 * s.vocab_size + 8) + 4 + (a * s.vocab_size * d if p.autocast and grad else 0)
    return out
