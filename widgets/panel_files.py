"""Model-size presets, and a config as a `workbench train` command line.

The command names a YAML file (the last saved or loaded one, else the quickstart) and sets only the keys that
differ from it, each written so that the CLI's YAML parse gives the same value back.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from widgets.controls import flat, yaml_value
from workbench.config import RunConfig
from workbench.factory import is_hf
from workbench.models.hf_config import hf_source

# model size presets: (n_layer, n_head, d_model, seq_len). "small" is 4 layers of width 128 at context 128:
# 818k parameters on the quickstart's 64-symbol synthetic vocabulary (wb.plan(cfg).num_params).
PRESETS = {
    "tiny": (2, 4, 64, 64),
    "small": (4, 4, 128, 128),
    "medium": (6, 6, 384, 256),
    "gpt2-small": (12, 12, 768, 1024),
}
PRESET_KEYS = ("model.n_layer", "model.n_head", "model.d_model", "model.seq_len")


# model.hf_config fields that resize a Hugging Face model beyond the preset's four keys
SIZE_FIELDS = frozenset({"num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings",
                         "intermediate_size", "n_layer", "n_head", "n_embd", "n_positions", "n_inner"})  # fmt: skip


def matching_preset(values: tuple[Any, ...], arch: str = "gpt", hf_config: Any = None) -> str:
    """The preset whose PRESET_KEYS values these are, or "custom": also "custom" when the model is not sized by
    those keys alone (a save_pretrained folder, your own factory, model.hf_config setting a size field)."""
    sized_by_keys = arch == "gpt" or (is_hf(arch) and hf_source(arch)[0] == "type")
    if not sized_by_keys or (isinstance(hf_config, dict) and SIZE_FIELDS & set(hf_config)):
        return "custom"
    return next((name for name, v in PRESETS.items() if v == values), "custom")


def cli_command(cfg: RunConfig, base_path: str, base: RunConfig) -> str:
    """`workbench train BASE_PATH --set key=value ...` that trains exactly cfg (base: BASE_PATH's config)."""
    old, new = flat(base.to_dict()), flat(cfg.to_dict())
    shown = os.path.relpath(base_path) if not os.path.isabs(base_path) else base_path
    parts = ["workbench", "train", shlex.quote(shown)]
    for key, v in new.items():
        if old.get(key) != v:
            parts += ["--set", shlex.quote(f"{key}={yaml_value(v)}")]
    return " ".join(parts)
