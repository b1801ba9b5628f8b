"""Your own text: local files read with `datasets`, a tokenizer from `tokenizers`, packed into sequences.

    data:
      source: files
      path: corpus/*.txt        # a path or a glob: .txt, .json/.jsonl, .csv, .parquet (one kind at a time)
      text_field: text          # the column of json / csv / parquet rows
      label_field: label        # task.kind classify
      tokenizer: bpe:2048       # bytes | bpe:<vocab> | <a tokenizer folder holding tokenizer.json>

A .txt file gives one row per paragraph (blank-line separated); the other kinds one row per record. The rows keep
their file order; the last EVAL_SHARE of them are held out for evaluation (task.kind classify: the last two
shares, validation then test), and status.json records the split. ``bpe:<vocab>`` trains a byte-level BPE on
the train rows only; ``bytes`` is the same tokenizer with no merges (256 byte tokens). Either way the four
special tokens come first (ids 0-3: end of text, padding, mask, classification) and the tokenizer is saved in the
run folder as tokenizer.json; ``init_from`` a run reuses that run's tokenizer, so token ids keep their meaning.

lm and mlm: each row's tokens plus an end-of-text separator, joined and cut into model.seq_len blocks; only
the last incomplete block is dropped (``pack`` returns how many tokens that was: nothing else is lost or
repeated). classify: one row per example, the classification token first, truncated or padded to seq_len.

Nothing touches the network: HF_DATASETS_OFFLINE=1 (without it `load_dataset` on a local file still sends a
request), and `datasets` keeps its cache in the run folder.
"""

from __future__ import annotations

import glob
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch.utils.data import Dataset

    from workbench.config import RunConfig

__all__ = [
    "EVAL_SHARE",
    "SPECIAL_TOKENS",
    "files_of",
    "pack",
    "prepare",
    "split_rows",
    "stdlib_corpus",
    "tokenizer_vocab",
]

SPECIAL_TOKENS = ("<|endoftext|>", "<pad>", "<mask>", "<cls>")
EOT, PAD, MASK, CLS = 0, 1, 2, 3
EVAL_SHARE = 0.1
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
MLM_SHARE = 0.15  # of the tokens a masked-language model predicts (BERT's recipe: 80% <mask>, 10% random, 10% kept)


def offline() -> None:
    """Nothing local may touch the network: set before `datasets` or `transformers` is imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def files_of(path: str) -> list[str]:
    """The files data.path names (a path or a glob), sorted."""
    return sorted(p for p in glob.glob(os.path.expanduser(path)) if os.path.isfile(p))


def tokenizer_vocab(cfg: RunConfig) -> int | None:
    """The vocabulary data.tokenizer gives, without torch: bytes 260, bpe:N N, a folder its tokenizer.json's."""
    t = cfg.data.tokenizer
    if not isinstance(t, str):
        return None
    if t == "bytes":
        return 256 + len(SPECIAL_TOKENS)
    if t.startswith("bpe:"):
        return int(t[4:]) if t[4:].isdigit() else None
    path = os.path.join(t, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tok = json.load(f)
    ids = set(tok.get("model", {}).get("vocab", {}).values()) | {a["id"] for a in tok.get("added_tokens", [])}
    return max(ids) + 1 if ids else None


def split_rows(n: int, task: str) -> dict[str, tuple[int, int]]:
    """Row ranges [start, end) of each split, in file order: the last EVAL_SHARE evaluates (classify: the last
    two shares, validation then test)."""
    k = max(1, round(n * EVAL_SHARE))
    if task == "classify":
        return {"train": (0, n - 2 * k), "eval": (n - 2 * k, n - k), "test": (n - k, n)}
    return {"train": (0, n - k), "eval": (n - k, n)}


def load_rows(cfg: RunConfig, cache_dir: str) -> list[dict[str, Any]]:
    """Every row of data.path's files, in file order, through `datasets` (offline, cached in cache_dir)."""
    offline()
    import datasets

    paths = files_of(cfg.data.path)
    builder = BUILDERS[os.path.splitext(paths[0])[1].lower()]
    kw = {"sample_by": "paragraph"} if builder == "text" else {}
    ds = datasets.load_dataset(builder, data_files=paths, split="train", cache_dir=cache_dir, **kw)
    return ds.to_list()


def _train_tokenizer(texts: list[str], vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_for(cfg: RunConfig, train_texts: list[str]) -> tuple[Any, dict[str, int]]:
    """(tokenizer, special ids): init_from's saved one, a folder's, or one trained on the train texts."""
    from tokenizers import Tokenizer

    t = cfg.data.tokenizer
    saved = os.path.join(cfg.init_from, "tokenizer.json") if cfg.init_from else None
    if saved and os.path.isfile(saved):
        tok = Tokenizer.from_file(saved)
    elif t == "bytes" or t.startswith("bpe:"):
        tok = _train_tokenizer(train_texts, tokenizer_vocab(cfg) or 256 + len(SPECIAL_TOKENS))
    else:
        tok = Tokenizer.from_file(os.path.join(t, "tokenizer.json"))
    return tok, special_ids(tok)


def special_ids(tok: Any) -> dict[str, int]:
    """End of text, padding, mask and classification ids: ours, or a foreign tokenizer's nearest names."""
    names = {"eot": (SPECIAL_TOKENS[0], "</s>", "[SEP]", "<eos>"), "pad": (SPECIAL_TOKENS[1], "[PAD]", "<pad>"),
             "mask": (SPECIAL_TOKENS[2], "[MASK]", "<mask>"), "cls": (SPECIAL_TOKENS[3], "[CLS]", "<s>", "<bos>")}  # fmt: skip
    out = {}
    for key, options in names.items():
        found = [i for i in (tok.token_to_id(n) for n in options) if i is not None]
        out[key] = found[0] if found else (out.get("eot", 0))
    return out


def pack(docs: list[list[int]], seq_len: int, eot: int) -> tuple[np.ndarray, int]:
    """Documents joined, each followed by `eot`, cut into (n, seq_len) blocks; returns (blocks, dropped) where
    dropped is the length of the incomplete last block: n * seq_len + dropped == the joined length."""
    import numpy as np

    lengths = [len(d) + 1 for d in docs]
    flat = np.empty(sum(lengths), dtype=np.int64)
    i = 0
    for d in docs:
        flat[i : i + len(d)] = d
        flat[i + len(d)] = eot
        i += len(d) + 1
    n = len(flat) // seq_len
    return flat[: n * seq_len].reshape(n, seq_len), len(flat) - n * seq_len


def _labels(rows: list[dict[str, Any]], field: str) -> list[int]:
    values = [r[field] for r in rows]
    names = label_names(rows, field)
    return values if names is None else [names.index(str(v)) for v in values]


def label_names(rows: list[dict[str, Any]], field: str) -> list[str] | None:
    """String labels' names in id order (sorted), or None when the labels are already integer ids."""
    values = [r[field] for r in rows]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    return sorted({str(v) for v in values})


def _rows_of(ids: list[list[int]], seq_len: int, cls: int, pad: int) -> np.ndarray:
    import numpy as np

    out = np.full((len(ids), seq_len), pad, dtype=np.int64)
    for i, d in enumerate(ids):
        row = [cls] + d[: seq_len - 1]
        out[i, : len(row)] = row
    return out


def prepare(cfg: RunConfig, run_dir: str) -> dict[str, Any]:
    """Read, tokenize and pack data.path once, into run_dir/data/<split>.npz, and save run_dir/tokenizer.json.
    Returns what status.json records about the split. (The worker runs it on rank 0 first; the others then
    find the files and read them.)"""
    import numpy as np

    out_dir = os.path.join(run_dir, "data")
    info_path = os.path.join(out_dir, "split.json")
    if os.path.isfile(info_path):
        with open(info_path) as f:
            return json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    d, task, T = cfg.data, cfg.task.kind, cfg.model.seq_len
    rows = load_rows(cfg, os.environ.get("WORKBENCH_CACHE_DIR") or os.path.join(out_dir, "cache"))
    texts = [str(r[d.text_field] or "") for r in rows]
    splits = split_rows(len(rows), task)
    tok, sp = tokenizer_for(cfg, texts[: splits["train"][1]])
    tok.save(os.path.join(run_dir, "tokenizer.json"))
    ids = [e.ids for e in tok.encode_batch(texts)]
    info: dict[str, Any] = {"files": files_of(d.path), "rows": len(rows), "special_ids": sp,
                            "rule": f"rows in file order; the last {EVAL_SHARE:.0%} evaluate"
                            + (" (classify: validation, then the last share tests)" if task == "classify" else "")}  # fmt: skip
    labels = _labels(rows, d.label_field) if task == "classify" else None
    if task == "classify" and (names := label_names(rows, d.label_field)) is not None:
        info["label_names"] = names  # an export names its classes (hf_export: config.id2label)
    for split, (a, b) in splits.items():
        if task == "classify":
            x, y = _rows_of(ids[a:b], T, sp["cls"], sp["pad"]), np.asarray(labels[a:b], dtype=np.int64)
            info[split] = {"rows": b - a, "sequences": len(x)}
        else:
            x, dropped = pack(ids[a:b], T, sp["eot"])
            y = x
            info[split] = {"rows": b - a, "sequences": len(x), "tokens": int(x.size), "dropped_tokens": dropped}
        np.savez(os.path.join(out_dir, f"{split}.npz"), x=x, y=y)
    with open(info_path, "w") as f:
        json.dump(info, f)
    return info


class MaskedBlocks:
    """Packed blocks with BERT's masking, drawn per item from (seed, index): the same masks in every layout
    and on every rank. Items (input ids, labels): labels -100 where nothing is predicted."""

    def __init__(self, blocks: Any, seed: int, vocab: int, sp: dict[str, int]) -> None:
        self.blocks, self.seed, self.vocab, self.mask_id = blocks, seed, vocab, sp["mask"]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        x = self.blocks[i].clone()
        r = torch.rand(x.shape, generator=g)
        picked = r < MLM_SHARE
        y = torch.where(picked, x, torch.full_like(x, -100))
        x = torch.where(r < MLM_SHARE * 0.8, torch.full_like(x, self.mask_id), x)
        swap = (r >= MLM_SHARE * 0.8) & (r < MLM_SHARE * 0.9)
        x = torch.where(swap, torch.randint(self.vocab, x.shape, generator=g), x)
        return x, y


def dataset(cfg: RunConfig, split: str, run_dir: str) -> Dataset:
    """The prepared split (train, eval or test) as a Dataset of (x, y)."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    with open(os.path.join(run_dir, "data", "split.json")) as f:
        sp = json.load(f)["special_ids"]
    arrays = np.load(os.path.join(run_dir, "data", f"{split}.npz"))
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    if cfg.task.kind == "mlm":
        # the model's vocabulary is the tokenizer's (models/hf_config.hf_vocab), validated before launch
        return MaskedBlocks(x, cfg.seed + (0 if split == "train" else 7), tokenizer_vocab(cfg), sp)
    return TensorDataset(x, y)


def stdlib_corpus(path: str, packages: tuple[str, ...] = ("json", "email", "logging", "http")) -> str:
    """Write the Python standard library's own sources of these packages into one text file at `path` (read in
    place from this Python's installation: real text on every machine, nothing downloaded). Returns path."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    with open(path, "w") as f:
        for pkg in packages:
            for p in sorted(glob.glob(os.path.join(stdlib, pkg, "*.py"))):
                with open(p, errors="replace") as src:
                    f.write(src.read() + "\n")
    return path
