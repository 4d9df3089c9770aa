"""The server (issue: split inference as a service): a finished tiny d1 run behind HTTP. Served features equal the
in-process neck path on the decoded latent; concurrent requests are batched and get their own features; hostile or
oversized requests get one-line 4xx answers; the edge client round trip; the load and fault test."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers.config import ROOT, TINY_D1, hydra_cfg

from latentbridge import routes
from latentbridge.codecs import bitstream as B
from latentbridge.workflows.train import run as train_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    with hydra_cfg([*TINY_D1, "data.train_size=32", "data.batch_size=16"], tmp) as cfg:
        train_run(cfg)
    return tmp / "run"


@pytest.fixture(scope="module")
def served(run_dir):
    from fastapi.testclient import TestClient

    from latentbridge.serve.app import create_app
    from latentbridge.serve.service import Service

    service = Service.load(run_dir, device="cpu", max_pixels=256 * 256)
    with TestClient(create_app(service, max_request_bytes=64 << 10, max_wait_ms=50.0)) as client:
        yield service, client


def _streams(service, n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [B.encode_image(service.module.codec, torch.rand(1, 3, size, size, generator=g), service.lmbda)
            for _ in range(n)]  # fmt: skip


def _features(response):
    from latentbridge.serve.app import features_from_response

    assert response.status_code == 200, response.text
    return features_from_response(response.content)


def test_served_features_are_the_neck_path_on_the_decoded_latent(served):
    service, client = served
    (data,) = _streams(service, 1)
    got = _features(client.post("/v1/latent", content=data))
    y_hat, _ = B.decode_latent(service.module.codec, data, service.lmbda)
    with torch.no_grad():
        assert torch.equal(got, routes.neck(service.parts["neck"], y_hat))
        recon = _features(client.post("/v1/latent?path=reconstruction", content=data))
        assert torch.equal(recon, routes.reconstruction(service.parts["reconstruction"], y_hat))
    response = client.post("/v1/latent", content=data)
    assert response.headers["X-LatentBridge-Bytes"] == str(len(data))
    assert float(response.headers["X-LatentBridge-Bpp"]) == pytest.approx(8 * len(data) / 32**2)


def test_concurrent_requests_are_batched_and_each_gets_its_own_features(served):
    service, client = served
    streams = _streams(service, 12, seed=1)
    before = client.get("/healthz").json()
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda d: client.post("/v1/latent", content=d), streams))
    after = client.get("/healthz").json()
    assert after["batched_requests"] - before["batched_requests"] == 12
    assert after["batches"] - before["batches"] < 12  # some requests shared a forward
    for data, response in zip(streams, responses):
        y_hat, _ = B.decode_latent(service.module.codec, data, service.lmbda)
        with torch.no_grad():
            torch.testing.assert_close(_features(response), routes.neck(service.parts["neck"], y_hat))


def test_hostile_and_oversized_requests_get_one_line_4xx_answers_and_the_server_carries_on(served):
    service, client = served
    (data,) = _streams(service, 1)
    bs = B.Bitstream.from_bytes(data)
    forged = B.Bitstream(bs.codec_id, bs.config_hash, bs.lmbda, 256, 256, [[b""], [b""]]).to_bytes()
    cases = {
        forged: (400, "bitstream string 0 (0 bytes) is not a rANS coding (32-bit words, >=8)"),
        B.Bitstream(*list(vars(bs).values())[:3], 512, 512, bs.strings).to_bytes(): (400, "more than max_pixels"),
        data[:-1] + bytes([data[-1] ^ 1]): (400, "checksum mismatch"),
        b"": (400, "empty body"),
        b"\0" * (65 << 10): (413, "over max_request_bytes=65536"),
    }
    for body, (status, reason) in cases.items():
        response = client.post("/v1/latent", content=body)
        assert response.status_code == status and reason in response.json()["error"]
        assert "\n" not in response.json()["error"]
    assert client.post("/v1/latent?path=nope", content=data).status_code == 400
    response = client.post("/v1/generate?prompt=what%20is%20it", content=data)
    assert response.status_code == 501 and "no MLLM" in response.json()["error"]
    assert client.post("/v1/latent", content=data).status_code == 200  # the server carries on
    info = client.get("/v1/info").json()
    assert info["codec"]["name"] == "mini" and info["limits"]["max_pixels"] == 256 * 256
    assert set(info["versions"]) >= {"torch", "compressai", "latentbridge"}


def test_the_edge_client_and_the_load_test_against_a_real_server_process(run_dir, tmp_path):
    """Two terminals: ``latentbridge-serve`` and ``latentbridge-codec encode --send``; then the load and fault
    test (scripts/load_test_serve.py): every valid request answered, hostile ones refused, the server alive."""
    report = tmp_path / "load.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "load_test_serve.py"), "--run", str(run_dir), "--clients", "4",
           "--seconds", "2", "--json", str(report)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    figures = json.loads(report.read_text())
    assert figures["server_alive"] and all(p["valid_ok"] == p["valid_requests"] > 0 for p in figures["paths"].values())
    assert all("400" in p["hostile_status"] for p in figures["paths"].values())
