"""workbench serve speaks OpenAI's completions protocol: the official `openai` client lists the model, gets
completions and streams (the stream joins into the completion), the usage counts are right, and bad requests get a
4xx with OpenAI's error body while the server goes on serving.

The server runs in this process on 127.0.0.1 over a freshly built byte-level GPT (no training needed for the
protocol); tests/test_hf_export.py serves a trained Hugging Face run through the CLI."""

from __future__ import annotations

import http.client
import json

import pytest
import torch

from workbench.data.codec import Codec
from workbench.models.generation import Sampling, stream_tokens
from workbench.serve import ServedModel, start
from workbench.textgen import TextGenerator

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server():
    from workbench.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, seq_len=64, n_layer=2, n_head=4, d_model=32)).eval()
    gen = TextGenerator(model, Codec("bytes", 256), 64, name="bytes-gpt")
    srv = start(ServedModel(model, "lm", 256, 64, name="runs/bytes-gpt", generator=gen))
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)


def test_models_lists_the_run(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["bytes-gpt"]
    assert client.models.retrieve("bytes-gpt").id == "bytes-gpt"


def test_completion_is_the_greedy_continuation_with_usage(client, server):
    c = client.completions.create(model="bytes-gpt", prompt="import json\n", max_tokens=8, temperature=0)
    model = server.runner.served.model
    want = list(stream_tokens(model, list(b"import json\n"), Sampling(max_new_tokens=8, temperature=0)))
    assert c.choices[0].text == bytes(want).decode("utf-8", errors="replace")
    assert c.usage.prompt_tokens == 12 and c.usage.completion_tokens == 8 and c.usage.total_tokens == 20
    assert c.choices[0].finish_reason == "length" and c.object == "text_completion"


def test_stream_joins_into_the_completion(client):
    kw = dict(model="bytes-gpt", prompt="def f(x):", max_tokens=12, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == whole
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_n_seed_stop_and_batched_prompts(client):
    kw = dict(model="bytes-gpt", max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    a = client.completions.create(prompt="abc", n=3, **kw)
    b = client.completions.create(prompt="abc", n=3, **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and [c.index for c in a.choices] == [0, 1, 2]
    greedy = client.completions.create(model="bytes-gpt", prompt="abc", max_tokens=10, temperature=0).choices[0].text
    stop = greedy[3:5] if len(greedy) >= 5 else greedy[-1:]
    cut = client.completions.create(model="bytes-gpt", prompt="abc", max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy[: greedy.index(stop)] and cut.choices[0].finish_reason == "stop"
    two = client.completions.create(model="bytes-gpt", prompt=["abc", [97, 98]], max_tokens=2, temperature=0)
    assert len(two.choices) == 2 and two.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    "kw, status, param",
    [
        ({"prompt": "x " * 40, "max_tokens": 4}, 400, "prompt"),  # 80 bytes > seq_len 64
        ({"prompt": "import", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "import", "temperature": -1}, 400, "temperature"),
        ({"prompt": "import", "top_p": 0}, 400, "top_p"),
        ({"prompt": "import", "n": 0}, 400, "n"),
        ({"prompt": "import", "logprobs": 2}, 400, "logprobs"),
        ({"prompt": [[300]]}, 400, "prompt"),
        ({"prompt": "import", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_requests_get_a_4xx_with_openais_error_body(client, kw, status, param):
    kw = {"model": "bytes-gpt", **kw}
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(**kw)
    assert e.value.status_code == status
    assert e.value.body["param"] == param and e.value.body["message"]


def test_bad_json_and_the_server_goes_on(server, client):
    host, port = server.url.removeprefix("http://").split(":")
    for body in (b"not json", b"[1, 2]", json.dumps({"prompt": "a"}).encode()):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.load(resp)
        assert resp.status == 400 and doc["error"]["type"] == "invalid_request_error", doc
        conn.close()
    assert client.completions.create(model="bytes-gpt", prompt="ok", max_tokens=2, temperature=0).choices
