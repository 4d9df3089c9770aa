"""The HTTP server (issue: split inference as a service): FastAPI + uvicorn, with our own dynamic batcher.

    POST /v1/latent[?path=neck|reconstruction]   body: a bitstream -> safetensors {"features": (1, tokens, width)}
    POST /v1/generate?prompt=...                 body: a bitstream -> {"answer", "bytes", "bpp"} (with an MLLM)
    GET  /healthz                                -> {"status": "ok", "batches", "requests"}
    GET  /v1/info                                -> codec, rate point, signature, limits, versions

Why FastAPI + uvicorn and not LitServe: LitServe hands its workers JSON or a form (``_prepare_request``), so a
bitstream would travel base64-encoded in JSON (79 bytes for a 46-byte mini stream); it served 16% more requests/s
in ``scripts/benchmark_serving_libraries.py`` (README "Serving"), but replicas add throughput, not the bytes a
device must send. Here the body is the bitstream as sent, decoding runs in a thread pool and only the model's
forward is batched. A bad request gets a 4xx with the decoder's one-line reason and never enters a batch; a
request that takes longer than ``timeout_s`` gets a 504.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from latentbridge.core.errors import ConfigError, LatentBridgeError
from latentbridge.serve.batcher import DynamicBatcher
from latentbridge.serve.service import PATHS, Service

log = logging.getLogger("latentbridge.serve")


def create_app(
    service: Service,
    max_request_bytes: int = 4 << 20,
    max_batch_size: int = 16,
    max_wait_ms: float = 5.0,
    timeout_s: float = 30.0,
    decode_threads: int = 4,
) -> Any:
    """The FastAPI app serving ``service``."""

    batchers = {
        path: DynamicBatcher(lambda items, p=path: _forward(service, items, p), max_batch_size, max_wait_ms)
        for path in PATHS
    }
    decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="latentbridge-decode")
    counts = {"requests": 0, "rejected": 0}

    async def lifespan(app: Any):  # noqa: ANN202
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            await b.stop()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="LatentBridge", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        counts["rejected"] += 1
        return JSONResponse({"error": message}, status_code=status)

    async def body_of(request: Request) -> bytes | JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_request_bytes):
            return error(413, f"request body over max_request_bytes={max_request_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                return error(413, f"request body over max_request_bytes={max_request_bytes}")
            chunks.append(chunk)
        if not size:
            return error(400, "empty body: POST the bitstream's bytes")
        return b"".join(chunks)

    async def decoded_and_features(request: Request, path: str) -> tuple[Any, Any] | JSONResponse:
        counts["requests"] += 1
        if path not in PATHS:
            return error(400, f"path must be one of {', '.join(PATHS)}")
        data = await body_of(request)
        if isinstance(data, JSONResponse):
            return data
        loop = asyncio.get_running_loop()
        try:
            decoded = await loop.run_in_executor(decoder, service.decode, data)
        except LatentBridgeError as e:
            return error(400, str(e))
        features = await batchers[path].submit(decoded)
        return decoded, features

    async def with_timeout(work: Any) -> Any:
        try:
            return await asyncio.wait_for(work, timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"request took longer than timeout_s={timeout_s}")

    @app.post("/v1/latent")
    async def latent(request: Request, path: str = "neck") -> Any:
        started = time.perf_counter()
        out = await with_timeout(decoded_and_features(request, path))
        if isinstance(out, JSONResponse):
            return out
        decoded, features = out
        from safetensors.torch import save

        headers = {
            "X-LatentBridge-Bytes": str(decoded.nbytes),
            "X-LatentBridge-Bpp": f"{decoded.bpp:.6f}",
            "X-LatentBridge-Shape": "x".join(map(str, features.shape)),
            "X-LatentBridge-Seconds": f"{time.perf_counter() - started:.6f}",
        }
        return Response(save({"features": features.contiguous()}), media_type="application/octet-stream",
                        headers=headers)  # fmt: skip

    @app.post("/v1/generate")
    async def generate(request: Request, prompt: str, max_new_tokens: int = 64) -> Any:
        if service.reader is None:
            counts["requests"] += 1
            return error(501, "this server has no MLLM (start it with mllm=<LLaVA-1.5 id or dir>)")
        out = await with_timeout(decoded_and_features(request, "neck"))
        if isinstance(out, JSONResponse):
            return out
        decoded, features = out
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(
                batchers["neck"].pool, service.generate, features, prompt, max_new_tokens
            )
        except ConfigError as e:
            return error(400, str(e))
        log.info("generate: %d bytes (%.4f bpp), %d-character prompt", decoded.nbytes, decoded.bpp, len(prompt))
        return {"answer": answer, "bytes": decoded.nbytes, "bpp": decoded.bpp}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        b = batchers["neck"]
        return {"status": "ok", "batches": b.batches, "batched_requests": b.items, **counts}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return service.info()

    return app


def _forward(service: Service, items: list[Any], path: str) -> list[Any]:
    try:
        return service.features(items, path)
    except Exception as e:  # noqa: BLE001 - one line to the clients of this batch, the trace to the log
        log.exception("forward of a batch of %d failed", len(items))
        return [RuntimeError(f"the model failed on this batch ({type(e).__name__})")] * len(items)


def features_from_response(body: bytes) -> Any:
    """The client side of /v1/latent: the safetensors payload -> the features tensor."""
    from safetensors.torch import load

    return load(io.BytesIO(body).getvalue())["features"]
