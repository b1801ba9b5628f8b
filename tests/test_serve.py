"""workbench serve: the served logits are the model's own, bad requests get a 4xx, batching changes nothing.

Most tests serve a freshly built model in this process (no training needed to check the HTTP contract); one
trains a 2-step run on one process and serves it through the CLI, as a user would."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from workbench.serve import ServedModel, start


def post(url: str, body: bytes | dict, timeout: float = 30) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def served_model(quickstart, kind: str = "lm") -> ServedModel:
    from workbench.models import build_model

    cfg = quickstart.override({"task.kind": kind})
    torch.manual_seed(0)
    return ServedModel(build_model(cfg).eval(), kind, cfg.data.vocab_size, cfg.model.seq_len,
                       cfg.task.num_labels if kind == "classify" else None)  # fmt: skip


@pytest.fixture(scope="module")
def lm_server():
    import workbench as wb
    from tests.conftest import QUICKSTART

    server = start(served_model(wb.RunConfig.from_yaml(QUICKSTART)), max_body_bytes=64 * 1024)
    yield server
    server.shutdown()
    server.server_close()


def test_logits_equal_the_models_forward(lm_server):
    x = torch.randint(0, 64, (3, 64), generator=torch.Generator().manual_seed(1))
    status, doc = post(lm_server.url + "/v1/logits", {"tokens": x.tolist()})
    assert status == 200
    got = torch.tensor(doc["logits"])
    with torch.no_grad():
        ref = lm_server.runner.served.model(x)[0]
    assert got.shape == (3, 64, 64) and float((got - ref).abs().max()) < 1e-4


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"not json", 400, "not JSON"),
        (b'{"tokens": "not a list"}', 400, "list of token lists"),
        (b'{"tokenz": [[1]]}', 400, '"tokens" key'),
        (b'{"tokens": []}', 400, "non-empty"),
        (b'{"tokens": [[1, 2], [3]]}', 400, "different lengths"),
        (b'{"tokens": [[1.5, 2]]}', 400, "integers"),
        (b'{"tokens": [[true]]}', 400, "integers"),
        (b'{"tokens": [[64]]}', 400, "[0, 64)"),
        (b'{"tokens": [[-1]]}', 400, "[0, 64)"),
        (b'{"tokens": [[99999999999999999999999]]}', 400, "[0, 64)"),
        (json.dumps({"tokens": [[1] * 65]}).encode(), 400, "seq_len"),
        (json.dumps({"tokens": [[1]] * 65}).encode(), 400, "at most 64"),
        (json.dumps({"tokens": [[1] * 64] * 400}).encode(), 413, "at most 65536"),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_message(lm_server, body, status, words):
    got, doc = post(lm_server.url + "/v1/logits", body)
    assert got == status and words in doc["error"], doc
    assert post(lm_server.url + "/v1/logits", {"tokens": [[1, 2]]})[0] == 200  # and the server goes on


def test_health_and_unknown_paths(lm_server):
    with urllib.request.urlopen(lm_server.url + "/healthz", timeout=10) as resp:
        doc = json.load(resp)
    assert doc["status"] == "ok" and doc["task"] == "lm" and doc["max_length"] == 64 and doc["vocab_size"] == 64
    assert post(lm_server.url + "/v1/classify", {"tokens": [[1]]})[0] == 404  # a language model does not classify
    assert post(lm_server.url + "/v2/nothing", {"tokens": [[1]]})[0] == 404
    assert lm_server.server_address[0] == "127.0.0.1"


def test_classify_and_batching_change_no_answer(quickstart):
    served = served_model(quickstart, "classify")
    plain, batched = (
        start(served),
        start(served, batch_wait_ms=500),
    )  # only while requests are in flight: lone ones never wait
    try:
        xs = [torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(n)) for n in (1, 2, 3, 2)]
        xs.append(torch.randint(0, 64, (2, 8)))  # another length: its own forward pass inside the batch
        answers: dict[int, dict] = {}
        together = threading.Barrier(len(xs))

        def ask(i: int) -> None:
            # a keep-alive connection made first, so the requests arrive together (not spread out by the server
            # starting a thread per new connection, slow on a loaded machine)
            conn = http.client.HTTPConnection("127.0.0.1", batched.server_address[1], timeout=30)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            together.wait()
            conn.request("POST", "/v1/classify", body=json.dumps({"tokens": xs[i].tolist()}))
            answers[i] = json.load(conn.getresponse())
            conn.close()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert batched.runner.batches < len(xs)  # requests were really batched together
        for i, x in enumerate(xs):
            status, ref = post(plain.url + "/v1/classify", {"tokens": x.tolist()})
            assert status == 200 and ref["labels"] == answers[i]["labels"]
            p, q = torch.tensor(ref["probabilities"]), torch.tensor(answers[i]["probabilities"])
            assert p.shape == (len(x), 2) and float((p - q).abs().max()) < 1e-5
            assert torch.allclose(p.sum(dim=1), torch.ones(len(x)))
    finally:
        for s in (plain, batched):
            s.shutdown()
            s.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_a_trained_run(workdir, quickstart):
    import workbench as wb

    cfg = quickstart.override({"name": "served", "parallel.num_processes": 1, "max_steps": 2, "log_every": 1,
                               "eval_every": 0, "schedule.warmup_steps": 1})  # fmt: skip
    run = wb.launch(cfg)
    assert run.wait(timeout=300) == "finished", run.error
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    srv = subprocess.Popen([sys.executable, "-m", "workbench.cli", "serve", "served", "--port", str(port)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).close()
                break
            except OSError:
                assert srv.poll() is None, srv.stdout.read().decode()
                time.sleep(0.25)
        x = torch.randint(0, 64, (3, 64), generator=torch.Generator().manual_seed(2))
        status, doc = post(url + "/v1/logits", {"tokens": x.tolist()})
        with torch.no_grad():
            ref = wb.load_model(run.path)(x)[0]
        assert status == 200 and float((torch.tensor(doc["logits"]) - ref).abs().max()) < 1e-4
    finally:
        os.killpg(srv.pid, 15)
        srv.wait(10)


def test_cli_refuses_a_folder_that_is_not_a_run(workdir, capsys):
    from workbench.cli import main

    assert main(["serve", "nowhere", "--port", "0"]) != 0
    assert "not a run folder" in capsys.readouterr().err
