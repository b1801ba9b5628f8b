"""Out to Hugging Face: a finished run as a ``save_pretrained`` folder that transformers' ``from_pretrained``,
``AutoTokenizer`` and ``pipeline()`` open.

    report = wb.export_hf(run)                  # RUN/export/hf
    workbench export RUN --hf [--out DIR] [--adapter]

The folder holds config.json, model.safetensors, generation_config.json and, where the run has text, its tokenizer
as a ``PreTrainedTokenizerFast`` folder (tokenizer.json, tokenizer_config.json, special tokens set):

- a Hugging Face run (``model.arch: hf:...``) exports as its own type (LlamaForCausalLM, BertForMaskedLM, ... and
  AutoModelForSequenceClassification for a classifier, its labels named as the data named them), its weights the
  checkpoint's;
- the built-in GPT exports as ``GPT2LMHeadModel`` (models/gpt2.py: the same architecture, q/k/v side by side in
  c_attn); a GPT that GPT-2 cannot hold (the mean-pooled classifier) is refused with the reason;
- the tokenizer: data.source files ships the run's own tokenizer with ``<|endoftext|>`` as bos/eos, ``<pad>``,
  ``<mask>`` and ``<cls>``; the byte-level text source ships a tokenizer whose 256 ids are the bytes of the text
  (no merges, no special tokens); the synthetic language has no text, so no tokenizer is written;
- peft runs (LoRA, AdaLoRA, adapter) export merged; with ``adapter=True`` the folder holds the unmerged base and
  ``adapter/`` a peft adapter folder, loadable onto it with ``PeftModel.from_pretrained`` (the GPT's LoRA on q, k, v
  becomes one LoRA of three times the rank on GPT-2's c_attn: models/gpt2.py). Prefix-Tuning cannot merge (its
  prefixes are inputs): it exports with ``adapter=True`` only;
- sharded checkpoints (zero3, tp) export as ddp ones: ``load_model`` gathers them.

The export loads its own folder back with ``from_pretrained`` and reports the max |logit difference| against the
run's model over a batch (``report.parity``: below PARITY_TOLERANCE; the CLI exits 1 otherwise).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from workbench.data.codec import Codec, byte_level_tokenizer
from workbench.data.files import PAD, SPECIAL_TOKENS, offline
from workbench.factory import is_hf
from workbench.finetune.load import load_model, logits_of, run_config, run_path

if TYPE_CHECKING:
    from workbench.config import RunConfig
    from workbench.runs import Run

__all__ = ["HFExportReport", "export_hf"]

PARITY_TOLERANCE = 1e-5  # max |logit difference| of the reloaded folder, fp32
SPECIAL_NAMES = {"eos_token": SPECIAL_TOKENS[0], "bos_token": SPECIAL_TOKENS[0], "unk_token": SPECIAL_TOKENS[0],
                 "pad_token": SPECIAL_TOKENS[1], "mask_token": SPECIAL_TOKENS[2], "cls_token": SPECIAL_TOKENS[3]}  # fmt: skip


@dataclass
class HFExportReport:
    path: str
    model_class: str
    tokenizer: str  # what the folder's tokenizer is, or why there is none
    max_abs_diff: float  # the reloaded folder's logits against the run's model
    adapter_path: str | None = None

    @property
    def parity(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE

    def table(self) -> str:
        ok = "ok" if self.parity else f"ABOVE the {PARITY_TOLERANCE:g} tolerance"
        lines = [f"Hugging Face folder ({self.model_class}): {self.path}",
                 f"tokenizer: {self.tokenizer}",
                 f"reloaded with from_pretrained: max |logit difference| {self.max_abs_diff:.2e} ({ok})"]  # fmt: skip
        if self.adapter_path:
            lines.append(f"peft adapter: {self.adapter_path} (PeftModel.from_pretrained(base, that folder))")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"parity": self.parity}

    def __repr__(self) -> str:
        return self.table()


def export_hf(run: str | Run, out: str | None = None, adapter: bool = False) -> HFExportReport:
    """Write a finished run as a save_pretrained folder (see the module's docstring); returns the report."""
    offline()
    run_dir = run_path(run)
    cfg = run_config(run_dir)
    out = os.path.abspath(out or os.path.join(run_dir, "export", "hf"))
    hf_run = is_hf(cfg.model.arch)
    if adapter and cfg.peft.method in ("none", "frozen"):
        raise ValueError(f"peft.method is {cfg.peft.method!r}: there is no adapter to export (drop --adapter)")
    if hf_run and cfg.peft.method == "prefix" and not adapter:
        raise ValueError("Prefix-Tuning cannot merge into the weights (its prefixes are inputs): export it with "
                         "--adapter, which writes the base model and the peft adapter folder")  # fmt: skip
    model = load_model(run_dir, merge=not adapter)
    codec = Codec.for_run(cfg, run_dir, _vocab(model, cfg))
    os.makedirs(out, exist_ok=True)
    adapter_path = None
    if hf_run:
        if cfg.task.kind == "classify":
            _name_labels(model.hf, run_dir)  # a PeftModel hands .config through to the transformers model
        hf, adapter_path = _hf_folder(model, out, adapter)
    elif adapter:  # the GPT's LoRA: the unmerged base as GPT-2, its adapters as GPT-2's (models/gpt2.py)
        from workbench.models.gpt2 import gpt2_lora_adapter

        hf = _gpt2_folder(model.get_base_model(), codec, out)
        adapter_path = os.path.join(out, "adapter")
        gpt2_lora_adapter(model, hf, adapter_path)
    else:
        hf = _gpt2_folder(model, codec, out)
    _generation_config(hf).save_pretrained(out)
    tokenizer = _save_tokenizer(cfg, run_dir, codec, out)
    reference = load_model(run_dir) if adapter else model  # the adapters merged: what the folder + adapter computes
    diff = _reload_diff(reference, cfg, out, adapter_path)
    return HFExportReport(out, type(hf).__name__, tokenizer, diff, adapter_path)


def _vocab(model: nn.Module, cfg: RunConfig) -> int:
    hf = getattr(model, "hf", None)
    if hf is not None:
        return int(hf.get_input_embeddings().weight.shape[0])
    return int(getattr(getattr(model, "cfg", None), "vocab_size", cfg.data.vocab_size))


def _gpt2_folder(model: nn.Module, codec: Codec, out: str) -> Any:
    from workbench.models.gpt2 import gpt2_refusal, to_gpt2

    why = gpt2_refusal(model)
    if why:
        raise ValueError(f"this run cannot export as GPT2LMHeadModel: {why}")
    pad = PAD if codec.kind == "tokenizer" else None
    hf = to_gpt2(model, codec.eos_id, pad)
    hf.save_pretrained(out)
    return hf


def _name_labels(hf: Any, run_dir: str) -> None:
    """A classifier's config.id2label / label2id: the data's string labels where it had them (else LABEL_i)."""
    import json

    split = os.path.join(run_dir, "data", "split.json")
    names = None
    if os.path.isfile(split):
        with open(split) as f:
            names = json.load(f).get("label_names")
    config = getattr(hf, "config", None)
    if names and config is not None and len(names) == config.num_labels:
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}


def _hf_folder(model: nn.Module, out: str, adapter: bool) -> tuple[Any, str | None]:
    """The transformers model's own save_pretrained; with adapter, the peft adapter first, then the base unloaded."""
    hf = model.hf
    if not adapter:
        hf.save_pretrained(out)
        return hf, None
    adapter_path = os.path.join(out, "adapter")
    hf.save_pretrained(adapter_path)
    base = hf.unload() if hasattr(hf, "unload") else hf.get_base_model()  # the base weights, adapters taken out
    base.save_pretrained(out)
    model.hf = base
    return base, adapter_path


def _generation_config(hf: Any) -> Any:
    from transformers import GenerationConfig

    # no max_length: pipeline() and generate() warn when it meets their max_new_tokens; the context is the
    # config's (n_positions, max_position_embeddings)
    return GenerationConfig.from_model_config(hf.config)


def _save_tokenizer(cfg: RunConfig, run_dir: str, codec: Codec, out: str) -> str:
    """The run's tokenizer as a PreTrainedTokenizerFast folder in out; returns what it is."""
    if codec.kind == "ids":
        return f"none: {codec.description}"
    from transformers import PreTrainedTokenizerFast

    if codec.kind == "bytes":
        tok, special = byte_level_tokenizer(), {}
    else:
        tok = codec.tokenizer
        special = {k: v for k, v in SPECIAL_NAMES.items() if tok.token_to_id(v) is not None}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg.model.seq_len, **special)
    fast.save_pretrained(out)
    if codec.kind == "bytes":
        return "byte level: the 256 token ids are the bytes of the UTF-8 text (no merges, no special tokens)"
    names = ", ".join(f"{k.removesuffix('_token')} {v}" for k, v in special.items())
    return f"the run's tokenizer ({tok.get_vocab_size()} tokens; {names})"


def _reload_diff(model: nn.Module, cfg: RunConfig, out: str, adapter_path: str | None) -> float:
    """from_pretrained(out) (and the adapter onto it) against the run's model, over a batch of 3 sequences."""
    import transformers

    auto = {"classify": transformers.AutoModelForSequenceClassification, "mlm": transformers.AutoModelForMaskedLM}
    back = auto.get(cfg.task.kind, transformers.AutoModelForCausalLM).from_pretrained(out).eval()
    if adapter_path:
        from peft import PeftModel

        back = PeftModel.from_pretrained(back, adapter_path).eval()
    vocab = _vocab(model, cfg)
    low = 4 if vocab > 8 else 0  # past the special ids: a classifier's padding would be masked
    x = torch.randint(low, vocab, (3, min(32, cfg.model.seq_len)), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        kw = {"attention_mask": torch.ones_like(x)} if cfg.task.kind == "classify" else {}
        got = back(input_ids=x, **kw).logits
        want = logits_of(model(x))
    return float((got.float() - want.float()).abs().max()) if got.shape == want.shape else float("inf")
