"""Text in and out of a run's model: the run's own tokenizer, bytes, or bare token ids.

    codec = Codec.for_run(cfg, run_dir)
    ids = codec.encode("import json\\n")
    text = codec.decode(ids)

What a run's tokens mean depends on its data.source:

    files       the tokenizer trained (or given) for the run, saved as RUN/tokenizer.json; its end-of-text token
                (``<|endoftext|>``, id 0) ends a generation
    text        bytes: token id = byte value (0-255), UTF-8; no special tokens, so nothing but the length ends a
                generation
    synthetic   the synthetic language (and your own data): tokens with no text, written as their ids ("3 14 15")
                and read back the same way

``byte_level_tokenizer()`` is the ``text`` source's vocabulary as a `tokenizers` Tokenizer (GPT-2's byte-to-unicode
alphabet, id = byte, no merges): what a Hugging Face export of a byte-level run ships, so ``AutoTokenizer``
encodes text exactly as training read it.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

from workbench.data.files import SPECIAL_TOKENS

if TYPE_CHECKING:
    from workbench.config import RunConfig

__all__ = ["Codec", "byte_level_tokenizer", "bytes_to_unicode"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values onto printable unicode characters (tokenizers' ByteLevel)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def byte_level_tokenizer() -> Any:
    """A `tokenizers` Tokenizer whose ids are the bytes of the text (id = byte value, 256 tokens, no merges, no
    special tokens): the ``text`` source's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class Codec:
    """encode(text) -> token ids, decode(ids) -> text, for one run; ``eos_id`` ends a generation (or None)."""

    def __init__(self, kind: str, vocab_size: int, tokenizer: Any = None, eos_id: int | None = None) -> None:
        self.kind = kind  # "tokenizer" | "bytes" | "ids"
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.eos_id = eos_id

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: str, vocab_size: int) -> Codec:
        """The codec of a run folder's tokens (see the module's docstring); vocab_size: the model's vocabulary."""
        if cfg.data.source == "files":
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(os.path.join(run_dir, "tokenizer.json"))
            eos = tok.token_to_id(SPECIAL_TOKENS[0])
            split = os.path.join(run_dir, "data", "split.json")
            if os.path.isfile(split):
                with open(split) as f:
                    eos = json.load(f).get("special_ids", {}).get("eot", eos)
            return cls("tokenizer", vocab_size, tok, eos)
        if cfg.data.source == "text":
            return cls("bytes", vocab_size)
        return cls("ids", vocab_size)

    @property
    def description(self) -> str:
        return {
            "tokenizer": "the run's tokenizer (RUN/tokenizer.json)",
            "bytes": "bytes: token id = byte value, UTF-8, no special tokens",
            "ids": "token ids with no text (the synthetic language, or your own data): written as numbers",
        }[self.kind]

    def encode(self, text: str) -> list[int]:
        if self.kind == "tokenizer":
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if self.kind == "bytes":
            return list(text.encode("utf-8"))
        if not re.fullmatch(r"\s*(\d+\s*)*", text):
            raise ValueError(
                f"this run's tokens have no text ({self.description}): give the prompt as token ids, e.g. '3 14 15'"
            )
        return [int(t) for t in text.split()]

    def decode(self, ids: list[int]) -> str:
        """The text of these ids; an incomplete UTF-8 sequence at the end reads as U+FFFD (complete it first)."""
        if self.kind == "tokenizer":
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        if self.kind == "bytes":
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(f" {i}" for i in ids)

    def check(self, ids: list[int]) -> None:
        """ValueError unless every id is in the model's vocabulary."""
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the model's vocabulary [0, {self.vocab_size})")
