"""workbench export --hf and workbench generate on real (short, one-process) runs: the GPT as GPT2LMHeadModel at
the same logits, a byte-level run's tokenizer, a Hugging Face LoRA run merged and as a peft adapter, the tokenizer
round-trip and pipeline("text-generation"); `workbench serve` of an HF run answers the openai client."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import torch

import workbench as wb
from workbench.data.files import stdlib_corpus
from workbench.hf_export import export_hf

pytestmark = pytest.mark.slow
TINY_LLAMA = {"model.arch": "hf:llama", "model.n_layer": 2, "model.n_head": 4, "model.d_model": 32,
              "model.hf_config": {"num_key_value_heads": 2, "intermediate_size": 64}}  # fmt: skip


def finished(cfg):
    assert cfg.validate() == [], cfg.validate()
    r = wb.launch(cfg)
    r.wait(timeout=600)
    assert r.status == "finished", r.error
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A GPT on the synthetic language, a GPT on bytes, a LoRA Llama on BPE text: one process each, side by side."""
    from tests.conftest import QUICKSTART

    folder = tmp_path_factory.mktemp("hfexport")
    corpus = stdlib_corpus(str(folder / "corpus.txt"), ("json",))
    base = wb.RunConfig.from_yaml(QUICKSTART).override({"max_steps": 4, "log_every": 2, "eval_every": 0,
        "grad_accum_steps": 1, "parallel.num_processes": 1, "runs_dir": str(folder / "runs")})  # fmt: skip
    cfgs = {
        "gpt": base.override({"name": "gpt"}),
        "bytes": base.override({"name": "bytes", "data.source": "text", "data.path": corpus}),
        "gptlora": base.override(
            {"name": "gptlora", "peft.method": "lora", "peft.r": 4, "peft.target": ["attn"], "optimizer.lr": 3e-2}
        ),  # fmt: skip
        "llama": base.override(
            {
                **TINY_LLAMA,
                "name": "llama",
                "data.source": "files",
                "data.path": corpus,
                "data.tokenizer": "bpe:300",
                "peft.method": "lora",
                "peft.r": 4,
            }
        ),  # fmt: skip
    }
    for c in cfgs.values():
        assert c.validate() == [], c.validate()
    launched = {k: wb.launch(c) for k, c in cfgs.items()}
    for r in launched.values():
        r.wait(timeout=600)
        assert r.status == "finished", r.error
    return launched


def logits(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out[0]


def test_the_gpt_exports_as_gpt2_with_the_same_logits_through_the_cli(runs, tmp_path):
    import transformers

    out = str(tmp_path / "gpt-hf")
    p = subprocess.run(["workbench", "export", runs["gpt"].path, "--hf", "--out", out], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "GPT2LMHeadModel" in p.stdout and "none: token ids" in p.stdout
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(os.listdir(out))
    g = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(g).__name__ == "GPT2LMHeadModel" and g.config.activation_function == "gelu"
    x = torch.randint(0, 64, (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((g(x).logits - logits(wb.load_model(runs["gpt"]), x)).abs().max()) <= 1e-5


def test_a_byte_level_run_ships_a_tokenizer_of_bytes(runs, tmp_path):
    import transformers

    r = export_hf(runs["bytes"], str(tmp_path / "bytes-hf"))
    assert r.parity and r.model_class == "GPT2LMHeadModel" and "byte level" in r.tokenizer
    tok = transformers.AutoTokenizer.from_pretrained(r.path)
    s = "def loads(s, *, cls=None):  # é"
    assert tok(s)["input_ids"] == list(s.encode()) and tok.decode(tok(s)["input_ids"]) == s
    g = transformers.AutoModelForCausalLM.from_pretrained(r.path)
    gen = transformers.pipeline("text-generation", model=g, tokenizer=tok)("import json\n", max_new_tokens=6,
                                                                          do_sample=False)  # fmt: skip
    assert len(gen[0]["generated_text"]) > len("import json\n")


def test_a_lora_llama_exports_merged_and_as_a_peft_adapter(runs, tmp_path):
    import transformers
    from peft import PeftModel

    merged = export_hf(runs["llama"], str(tmp_path / "merged"))
    assert merged.parity and merged.model_class == "LlamaForCausalLM" and merged.adapter_path is None
    tok = transformers.AutoTokenizer.from_pretrained(merged.path)
    s = "def loads(s, *, cls=None):"
    assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<pad>"
    ad = export_hf(runs["llama"], str(tmp_path / "adapter"), adapter=True)
    assert ad.parity and os.path.isfile(os.path.join(ad.adapter_path, "adapter_config.json"))
    base = transformers.AutoModelForCausalLM.from_pretrained(ad.path)
    back = PeftModel.from_pretrained(base, ad.adapter_path).eval()
    x = torch.randint(4, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((back(input_ids=x).logits - logits(wb.load_model(runs["llama"]), x)).abs().max()) <= 1e-5


def test_the_gpts_lora_becomes_a_peft_adapter_of_gpt2(runs, tmp_path):
    """q, k, v's adapters as one LoRA of rank 3r on c_attn, o's on attn.c_proj: the base plus the adapter computes
    the merged model."""
    import transformers
    from peft import PeftModel

    ad = export_hf(runs["gptlora"], str(tmp_path / "gptlora"), adapter=True)
    assert ad.parity and ad.model_class == "GPT2LMHeadModel", ad
    base = transformers.AutoModelForCausalLM.from_pretrained(ad.path).eval()
    x = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(0))
    merged = wb.load_model(runs["gptlora"])
    with torch.no_grad():
        before = float((base(x).logits - logits(merged, x)).abs().max())
        back = PeftModel.from_pretrained(base, ad.adapter_path).eval()
        after = float((back(x).logits - logits(merged, x)).abs().max())
    assert after <= 1e-5 < before  # the adapter is what moves the base to the trained model


def test_refusals_name_the_reason(runs, quickstart):
    from workbench.models import build_model
    from workbench.models.gpt2 import gpt2_refusal

    why = gpt2_refusal(build_model(quickstart.override({"task.kind": "classify", "task.num_labels": 3})))
    assert "last token" in why
    with pytest.raises(ValueError, match="no adapter"):
        export_hf(runs["gpt"], adapter=True)


def test_generate_greedy_is_the_models_own_argmax_continuation(runs):
    from workbench.models.generation import Sampling, stream_tokens
    from workbench.textgen import TextGenerator

    text = wb.generate(runs["gpt"], "1 2 3", max_new_tokens=6, temperature=0)
    model = wb.load_model(runs["gpt"])
    want = list(stream_tokens(model, [1, 2, 3], Sampling(max_new_tokens=6, temperature=0)))
    assert text == "".join(f" {t}" for t in want)
    p = subprocess.run(["workbench", "generate", runs["gpt"].path, "--prompt", "1 2 3", "--max-new-tokens", "6",
                        "--temperature", "0"], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0 and p.stdout.strip() == "1 2 3" + text, p.stderr
    llama = TextGenerator.from_run(runs["llama"])
    c = llama.complete("import json\n", Sampling(max_new_tokens=5, temperature=0))
    assert c.completion_tokens <= 5 and c.prompt_tokens == len(llama.codec.encode("import json\n"))


def test_serve_an_hf_run_to_the_openai_client(runs):
    openai = pytest.importorskip("openai")
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    srv = subprocess.Popen(["workbench", "serve", runs["llama"].path, "--port", str(port)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        for _ in range(240):
            try:
                model_id = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                time.sleep(0.25)
        assert model_id == "llama"
        c = client.completions.create(model=model_id, prompt="import json\n", max_tokens=6, temperature=0)
        chunks = client.completions.create(model=model_id, prompt="import json\n", max_tokens=6, temperature=0,
                                           stream=True)  # fmt: skip
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == c.choices[0].text
        with pytest.raises(openai.APIStatusError) as e:
            client.completions.create(model=model_id, prompt="x " * 500, max_tokens=4)
        assert e.value.status_code == 400 and e.value.body["code"] == "context_length_exceeded"
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def test_sharded_checkpoints_export_like_ddp_ones(tmp_path):
    """zero3 and tp save DCP shards, one file per rank: load_model gathers them into the weights training ended
    with (the digest every rank recorded), and the export holds them."""
    import json

    from tests.conftest import QUICKSTART
    from workbench.parallel.common import state_digest

    base = wb.RunConfig.from_yaml(QUICKSTART).override({"max_steps": 3, "log_every": 3, "eval_every": 0,
        "grad_accum_steps": 1, "runs_dir": str(tmp_path / "runs")})  # fmt: skip
    cfgs = [base.override({"name": "zero3", "parallel.strategy": "zero3"}),
            base.override({"name": "tp", "parallel.strategy": "tp", "parallel.tp_size": 2})]  # fmt: skip
    for r in [wb.launch(c) for c in cfgs]:
        r.wait(timeout=600)
        assert r.status == "finished", r.error
        with open(os.path.join(r.path, "final_rank0.json")) as f:
            trained = json.load(f)["params_sha256"]
        assert state_digest(wb.load_model(r).state_dict()) == trained
        assert export_hf(r, str(tmp_path / f"{r.name}-hf")).parity


def test_a_parameter_server_checkpoint_loads(tmp_path):
    """ps saves its model in rank 0's ps_server.pt, not through save_state: load_model (and so generate, serve,
    export) reads the weights training ended with from there."""
    import json

    from tests.conftest import QUICKSTART
    from workbench.parallel.common import state_digest

    cfg = wb.RunConfig.from_yaml(QUICKSTART).override({"name": "ps", "parallel.strategy": "ps", "max_steps": 3,
        "log_every": 3, "eval_every": 0, "grad_accum_steps": 1, "runs_dir": str(tmp_path / "runs")})  # fmt: skip
    r = wb.launch(cfg)
    assert r.wait(timeout=600) == "finished", r.error
    with open(os.path.join(r.path, "final_rank0.json")) as f:
        trained = json.load(f)["params_sha256"]
    assert state_digest(wb.load_model(r).state_dict()) == trained


def test_a_bert_classifier_exports_with_its_label_names(tmp_path):
    import json

    import transformers

    from tests.conftest import QUICKSTART

    rows = [{"text": f"{w} line number {i} of words", "label": w} for i in range(60) for w in ("alpha", "beta")]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = wb.RunConfig.from_yaml(QUICKSTART).override({"name": "bert", "model.arch": "hf:bert", "model.n_layer": 2,
        "model.n_head": 4, "model.d_model": 32, "model.seq_len": 16, "task.kind": "classify", "task.num_labels": 2,
        "data.source": "files", "data.path": str(data), "data.tokenizer": "bpe:300", "max_steps": 3, "log_every": 3,
        "eval_every": 3, "micro_batch_size": 4, "grad_accum_steps": 1, "parallel.num_processes": 1,
        "runs_dir": str(tmp_path / "runs")})  # fmt: skip
    r = finished(cfg)
    rep = export_hf(r, str(tmp_path / "bert-hf"))
    assert rep.parity and rep.model_class == "BertForSequenceClassification", rep
    back = transformers.AutoModelForSequenceClassification.from_pretrained(rep.path)
    assert back.config.id2label == {0: "alpha", 1: "beta"}
