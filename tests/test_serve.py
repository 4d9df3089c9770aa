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


@pytest.mark.slow
def test_the_load_test_against_a_real_server_process_under_each_attack(run_dir, tmp_path):
    """The load and fault test (scripts/load_test_serve.py) against ``latentbridge-serve`` in its own process: the
    well-behaved client's figures alone and under each attack, the throughput figures; every attack refused or
    bounded (wrong-size streams: 400 from the header; the flood: 429 past the per-client bound), the server alive.
    (The timing goal is the script's --check, run by hand on a quiet machine: README "Serving".)"""
    report = tmp_path / "load.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "load_test_serve.py"), "--run", str(run_dir), "--attackers", "2",
           "--seconds", "1.5", "--flood-connections", "6", "--throughput", "--clients", "2", "--json", str(report),
           "--server-args", "max_per_client=4"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    figures = json.loads(report.read_text())
    assert figures["server_alive"] and set(figures["phases"]) == {"unloaded", "wrong_size", "poison", "flood"}
    for name, phase in figures["phases"].items():
        assert phase["client"]["sent"] > 0 and phase["client"]["ok"] == phase["client"]["sent"], (name, phase)
    assert set(figures["phases"]["wrong_size"]["attack"]["status"]) == {"400"}
    assert "429" in figures["phases"]["flood"]["attack"]["status"]
    assert all(p["valid_ok"] == p["valid_requests"] > 0 for p in figures["throughput"].values())


def _app(service, **limits):
    from fastapi.testclient import TestClient

    from latentbridge.serve.app import create_app

    return TestClient(create_app(service, **{"max_wait_ms": 50.0, **limits}))


def test_a_well_formed_stream_of_another_size_is_refused_from_its_header_before_decoding(served, monkeypatch):
    """The 41-byte stream that cost a second of decoding and failed its whole batch: now a 400 from the header."""
    service, client = served
    (data,) = _streams(service, 1)
    valid = B.decode_latent(service.module.codec, data, service.lmbda)[1]
    decodes = []
    real = service.module.codec.decompress_latent
    monkeypatch.setattr(service.module.codec, "decompress_latent", lambda *a: decodes.append(1) or real(*a))
    big = B.Bitstream(*list(vars(valid).values())[:3], 256, 256, valid.strings).to_bytes()  # right codec, valid CRC
    response = client.post("/v1/latent", content=big)
    assert response.status_code == 400 and not decodes
    assert response.json()["error"] == ("bitstream is a 256x256 image; this run's transform-neck (4x4 latent grid) "
                                        "takes exactly 32x32 images")  # fmt: skip
    assert client.get("/v1/info").json()["accepts"] == {"neck": {"height": 32, "width": 32},
                                                        "reconstruction": {"max_pixels": 256 * 256}}  # fmt: skip
    # the pixel path takes other sizes (it resizes to its encoder's input): a real 64x64 stream is decoded
    (other,) = _streams(service, 1, size=64)
    assert client.post("/v1/latent?path=reconstruction", content=other).status_code == 200
    assert client.post("/v1/latent", content=other).status_code == 400


def test_a_poisoned_item_never_fails_the_valid_requests_batched_with_it(served, monkeypatch):
    """An item that passes every check but makes the forward raise is batched with valid ones: the batch is retried
    item by item, each valid request gets its own features, the poisoned one a one-line 500."""
    from latentbridge.serve.service import Decoded

    service, _ = served
    streams = _streams(service, 7, seed=3)
    real = service.decode

    def decode(data, path="neck"):
        if data == b"poison":  # a latent of another grid: the neck raises on it
            return Decoded(torch.zeros(1, service.module.codec.latent_channels, 3, 3), None, 6, 0.0)
        return real(data, path)

    monkeypatch.setattr(service, "decode", decode)
    with _app(service, max_wait_ms=300.0) as client:
        bodies = [*streams[:4], b"poison", *streams[4:]]
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda d: client.post("/v1/latent", content=d), bodies))
        health = client.get("/healthz").json()
    assert health["retried_batches"] >= 1  # the poisoned item shared a batch, which failed and was retried
    for data, response in zip(bodies, responses):
        if data == b"poison":
            assert response.status_code == 500
            assert response.json() == {"error": "the model failed on this request (ValueError)"}
            continue
        y_hat, _ = B.decode_latent(service.module.codec, data, service.lmbda)
        with torch.no_grad():
            torch.testing.assert_close(_features(response), routes.neck(service.parts["neck"], y_hat))


def test_bounded_work_queue_and_client_limits_timeouts_drop_queued_decodes(served, monkeypatch):
    import time

    service, _ = served
    (data,) = _streams(service, 1)
    real = service.decode
    monkeypatch.setattr(service, "decode", lambda d, p="neck": (time.sleep(0.4), real(d, p))[1])
    with _app(service, max_queue=3, max_per_client=0, decode_threads=1) as client:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: client.post("/v1/latent", content=data), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and "max_queue=3" in busy.json()["error"]
    with _app(service, max_queue=100, max_per_client=2, decode_threads=1) as client:
        with ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(lambda _: client.post("/v1/latent", content=data), range(5)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(429) >= 1 and set(codes) <= {200, 429}, codes
    # requests that time out while their decode waits in the queue: their decode never runs
    with _app(service, timeout_s=0.2, decode_threads=1) as client:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: client.post("/v1/latent", content=data), range(4)))
        assert [r.status_code for r in responses] == [504] * 4
        assert all(r.json() == {"error": "request took longer than timeout_s=0.2"} for r in responses)
        time.sleep(0.6)
        assert client.get("/healthz").json()["skipped_decodes"] >= 2


def test_signed_streams_only_when_the_server_has_a_key(run_dir, monkeypatch):
    from latentbridge.serve.service import Service

    key = b"k" * 32
    service = Service.load(run_dir, device="cpu", max_pixels=256 * 256, key=key)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=g)
    signed, unsigned = (B.encode_image(service.module.codec, image, service.lmbda, key=k) for k in (key, None))
    decodes = []
    real = service.module.codec.decompress_latent
    monkeypatch.setattr(service.module.codec, "decompress_latent", lambda *a: decodes.append(1) or real(*a))
    with _app(service) as client:
        response = client.post("/v1/latent", content=unsigned)
        assert response.status_code == 400 and "authentication" in response.json()["error"] and not decodes
        assert client.post("/v1/latent", content=signed).status_code == 200 and decodes


def test_fair_queue_serves_the_least_waiting_client_first_and_equals_round_robin():
    import asyncio

    from latentbridge.serve.batcher import FairQueue

    async def order():
        q = FairQueue()
        for i in range(5):
            q.put("flood", f"f{i}")
        for i in range(2):
            q.put("a", f"a{i}")
            q.put("b", f"b{i}")
        q.put("user", "u0")
        return [await q.get() for _ in range(10)], await q.get(timeout=0.01)

    served, empty = asyncio.run(order())
    assert served == ["u0", "a0", "a1", "b0", "b1", "f0", "f1", "f2", "f3", "f4"] and empty is None


def test_decoding_in_worker_processes_serves_the_same_features_and_refusals(served):
    """decode_workers=1 (the server default): the bitstream is decoded in another process, on the CPU."""
    service, _ = served
    streams = _streams(service, 3, seed=5)
    (other,) = _streams(service, 1, size=64)
    with _app(service, decode_workers=1) as client:
        responses = [client.post("/v1/latent", content=d) for d in streams]
        refused = client.post("/v1/latent", content=other)
    for data, response in zip(streams, responses):
        y_hat, _ = B.decode_latent(service.module.codec, data, service.lmbda)
        with torch.no_grad():
            assert torch.equal(_features(response), routes.neck(service.parts["neck"], y_hat))
    assert refused.status_code == 400 and "takes exactly 32x32 images" in refused.json()["error"]


@pytest.mark.parametrize(("experiment", "size"), [("mini_d1_convnext", 32), ("mini_d1_tcm", 64)])
def test_a_neck_for_another_tower_or_codec_is_served_like_the_vit_one(experiment, size, tmp_path):
    """Paper 4.6: a run whose encoder is a CNN (the neck emits block k's feature map), or whose codec is the
    Transformer codec (TCM: one y string, slice-wise decoding), behind the same server."""
    from fastapi.testclient import TestClient

    from latentbridge.serve.app import create_app
    from latentbridge.serve.service import Service

    overrides = [*TINY_D1, f"experiment={experiment}", "data.train_size=32", "data.batch_size=16"]
    with hydra_cfg([*overrides, f"data.image_size={size}"], tmp_path) as cfg:
        train_run(cfg)
    service = Service.load(tmp_path / "run", device="cpu", max_pixels=256 * 256)
    expected = "feature_map" if "convnext" in experiment else "tokens"
    assert service.module.neck.layout == expected and service.module.codec.name in ("mini", "mini-tcm")
    with TestClient(create_app(service, max_request_bytes=64 << 10, max_wait_ms=50.0)) as client:
        (data,) = _streams(service, 1, size=size)
        got = _features(client.post("/v1/latent", content=data))
        y_hat, _ = B.decode_latent(service.module.codec, data, service.lmbda)
        with torch.no_grad():
            assert torch.equal(got, routes.neck(service.parts["neck"], y_hat))


def test_a_per_rate_run_refuses_a_stream_of_another_rate_from_its_header(served):
    """One neck per rate (paper 1): a stream of the same codec at another rate point is a one-line 400 before any
    entropy decoding (a rate-conditioned run answers every rate it covers: tests/test_d1_rates.py)."""
    from latentbridge.codecs.adapter import build_codec

    service, client = served
    codec = service.module.codec
    other = build_codec(codec.name, arch=codec.arch, lmbda=2 * service.lmbda).eval()
    other.update_tables()
    response = client.post("/v1/latent", content=B.encode_image(other, torch.rand(1, 3, 32, 32), 2 * service.lmbda))
    assert response.status_code == 400
    assert f"this decoder is lambda={service.lmbda:.6g}" in response.json()["error"]
