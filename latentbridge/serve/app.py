"""The HTTP server (issue: split inference as a service): FastAPI + uvicorn, with our own fair dynamic batcher.

    POST /v1/latent[?path=neck|reconstruction]   body: a bitstream -> safetensors {"features": (1, tokens, width)}
    POST /v1/generate?prompt=...                 body: a bitstream -> {"answer", "bytes", "bpp"} (with an MLLM)
    GET  /healthz                                -> {"status": "ok", "batches", "requests", ...}
    GET  /v1/info                                -> codec, rate point, accepted image sizes, limits, versions

Why FastAPI + uvicorn and not LitServe: LitServe hands its workers JSON or a form (``_prepare_request``), so a
bitstream would travel base64-encoded in JSON (79 bytes for a 46-byte mini stream); it served 16% more requests/s
in ``scripts/benchmark_serving_libraries.py`` (README "Serving"), but replicas add throughput, not the bytes a
device must send. Here the body is the bitstream as sent, decoding runs in a thread pool and only the model's
forward is batched.

Under attack (issue: the service under attack), each request is checked before it costs anything:
- admission: at most ``max_queue`` requests in the server (503 + Retry-After beyond), at most ``max_per_client``
  from one client address (429 + Retry-After; 0 = no limit), refused before the body is read;
- the body: at most ``max_request_bytes`` (413); the header: this codec's, the path's image size (the neck takes
  exactly the run's size), ``max_pixels``, signed when ``key_file`` is set (400, before entropy decoding);
- decoding and batching take waiting requests round-robin by client (``batcher.FairQueue``): a flood from one
  client does not queue the others behind it; a request that timed out (504 after ``timeout_s``) is dropped from
  both queues before its work starts (an entropy decode already running cannot be interrupted; its cost is bounded
  by the checks above and at most ``decode_threads`` run at once);
- a batch whose forward fails is retried item by item: one bad request never fails another;
- a client error (400, 413, 429) is answered after ``refusal_delay_s``: a client that keeps sending bad or excess
  requests waits for its own refusals (a closed-loop attacker's rate drops to its connections / the delay), so the
  event loop and the GIL stay free for everyone else; a well-behaved client never waits for it;
- ``/v1/generate``: ``max_new_tokens`` and the prompt's length are capped (``max_new_tokens_limit``,
  ``max_prompt_chars``).
Every error a client sees is one line of JSON (``{"error": ...}``) with a 4xx/5xx status; the log has one line per
refused request (a traceback only when the model itself fails).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from latentbridge.core.errors import ConfigError, LatentBridgeError
from latentbridge.serve.batcher import DynamicBatcher, FairQueue
from latentbridge.serve.service import PATHS, Service

log = logging.getLogger("latentbridge.serve")


class Refused(Exception):
    """A request answered with a one-line error (status, message, extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Admission:
    """How many requests are in the server, in all and per client address; refusals before any work."""

    def __init__(self, max_queue: int, max_per_client: int, retry_after_s: float) -> None:
        self.max_queue, self.max_per_client, self.retry_after = int(max_queue), int(max_per_client), retry_after_s
        self.total, self.by_client = 0, Counter()

    def enter(self, client: str) -> None:
        retry = {"Retry-After": f"{max(1, round(self.retry_after))}"}
        if self.max_per_client and self.by_client[client] >= self.max_per_client:
            raise Refused(429, f"too many concurrent requests from this client (max_per_client={self.max_per_client})",
                          retry)  # fmt: skip
        if self.total >= self.max_queue:
            raise Refused(503, f"server busy: {self.total} requests in progress (max_queue={self.max_queue})", retry)
        self.total += 1
        self.by_client[client] += 1

    def leave(self, client: str) -> None:
        self.total -= 1
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]


class FairDecoder:
    """Entropy decoding off the event loop: ``threads`` workers take waiting requests round-robin by client and
    skip those whose request already ended (timed out)."""

    def __init__(self, fn: Callable[..., Any], threads: int) -> None:
        self.fn, self.threads = fn, int(threads)
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="latentbridge-decode")
        self.queue: FairQueue | None = None
        self.tasks: list[asyncio.Task] = []
        self.skipped = 0

    def start(self) -> None:
        self.queue = FairQueue()
        self.tasks = [asyncio.get_running_loop().create_task(self._worker()) for _ in range(self.threads)]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def decode(self, client: str, *args: Any) -> Any:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.put(client, (args, future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            args, future = await self.queue.get()
            if future.done():  # its request ended (timeout): no work for a client that left
                self.skipped += 1
                continue
            try:
                result = await loop.run_in_executor(self.pool, self.fn, *args)
            except Exception as e:  # noqa: BLE001 - handed to the request that asked
                result = e
            if not future.done():
                future.set_result(result)


def create_app(
    service: Service,
    max_request_bytes: int = 4 << 20,
    max_batch_size: int = 16,
    max_wait_ms: float = 5.0,
    timeout_s: float = 30.0,
    decode_threads: int = 4,
    max_queue: int = 256,
    max_per_client: int = 0,
    retry_after_s: float = 1.0,
    max_new_tokens_limit: int = 256,
    max_prompt_chars: int = 2000,
    refusal_delay_s: float = 0.0,
    decode_workers: int = 0,
) -> Any:
    """The FastAPI app serving ``service`` (the limits: ``conf/serve.yaml``). ``decode_workers`` > 0: entropy decoding
    in that many processes (``serve/decoding.py``), else in ``decode_threads`` threads of this process."""

    batchers = {
        path: DynamicBatcher(lambda items, p=path: service.features(items, p), max_batch_size, max_wait_ms)
        for path in PATHS
    }
    pool = None
    if decode_workers > 0:
        from latentbridge.serve.decoding import DecodePool

        pool = DecodePool(service, decode_workers)
        pool.warm_up()
    decoder = FairDecoder(pool.decode if pool else service.decode, decode_workers or decode_threads)
    admission = Admission(max_queue, max_per_client, retry_after_s)
    counts = {"requests": 0, "rejected": 0}

    async def lifespan(app: Any):  # noqa: ANN202
        decoder.start()
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            await b.stop()
        await decoder.stop()
        if pool is not None:
            pool.shutdown()

    app = FastAPI(title="LatentBridge", lifespan=lifespan)

    def refused(request: Request, e: Refused) -> JSONResponse:
        counts["rejected"] += 1
        client = request.client.host if request.client else "?"
        log.warning("%s %s from %s: %d %s", request.method, request.url.path, client, e.status, e.message)
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    async def slowly(response: JSONResponse) -> JSONResponse:
        """A client error (bad stream, body too large, too many requests) is answered after ``refusal_delay_s``: a
        client that keeps sending them slows itself down, not the server (well-behaved clients never wait)."""
        if refusal_delay_s > 0 and response.status_code in (400, 413, 429):
            await asyncio.sleep(refusal_delay_s)
        return response

    def endpoint(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Admission, the timeout, and one line of JSON for every failure (never an unhandled exception)."""

        @functools.wraps(fn)
        async def wrapped(request: Request, *args: Any, **kwargs: Any) -> Any:
            counts["requests"] += 1
            client = request.client.host if request.client else "?"
            try:
                admission.enter(client)
            except Refused as e:
                return await slowly(refused(request, e))
            try:
                return await asyncio.wait_for(fn(request, client, *args, **kwargs), timeout_s)
            except Refused as e:
                return await slowly(refused(request, e))  # the slot stays taken: max_per_client bounds these too
            except asyncio.TimeoutError:
                return refused(request, Refused(504, f"request took longer than timeout_s={timeout_s}"))
            except Exception as e:  # noqa: BLE001 - the model or the server failed on this request
                log.exception("%s %s from %s failed", request.method, request.url.path, client)
                return refused(request, Refused(500, f"the server failed on this request ({type(e).__name__})"))
            finally:
                admission.leave(client)

        sig = inspect.signature(fn)  # what FastAPI reads: the endpoint's own parameters, without ``client``
        wrapped.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "client"])
        return wrapped

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_request_bytes):
            raise Refused(413, f"request body over max_request_bytes={max_request_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                raise Refused(413, f"request body over max_request_bytes={max_request_bytes}")
            chunks.append(chunk)
        if not size:
            raise Refused(400, "empty body: POST the bitstream's bytes")
        return b"".join(chunks)

    async def decoded_and_features(request: Request, client: str, path: str) -> tuple[Any, Any]:
        if path not in PATHS:
            raise Refused(400, f"path must be one of {', '.join(PATHS)}")
        data = await body_of(request)
        decoded = await decoder.decode(client, data, path)
        if isinstance(decoded, LatentBridgeError):
            raise Refused(400, str(decoded))
        if isinstance(decoded, Exception):
            raise decoded
        try:
            features = await batchers[path].submit(decoded, client)
        except Exception as e:  # noqa: BLE001 - this request's own item failed (its batch was retried item by item)
            raise Refused(500, f"the model failed on this request ({type(e).__name__})") from None
        return decoded, features

    @app.post("/v1/latent")
    @endpoint
    async def latent(request: Request, client: str, path: str = "neck") -> Any:
        started = time.perf_counter()
        decoded, features = await decoded_and_features(request, client, path)
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
    @endpoint
    async def generate(request: Request, client: str, prompt: str, max_new_tokens: int = 64) -> Any:
        if service.reader is None:
            raise Refused(501, "this server has no MLLM (start it with mllm=<LLaVA-1.5 id or dir>)")
        if not 1 <= max_new_tokens <= max_new_tokens_limit:
            raise Refused(400, f"max_new_tokens must be in [1, {max_new_tokens_limit}] (max_new_tokens_limit)")
        if len(prompt) > max_prompt_chars:
            raise Refused(400, f"prompt of {len(prompt)} characters, over max_prompt_chars={max_prompt_chars}")
        decoded, features = await decoded_and_features(request, client, "neck")
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(
                batchers["neck"].pool, service.generate, features, prompt, max_new_tokens
            )
        except ConfigError as e:
            raise Refused(400, str(e)) from None
        log.info("generate: %d bytes (%.4f bpp), %d-character prompt", decoded.nbytes, decoded.bpp, len(prompt))
        return {"answer": answer, "bytes": decoded.nbytes, "bpp": decoded.bpp}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        b = batchers["neck"]
        return {
            "status": "ok",
            "batches": b.batches,
            "batched_requests": b.items,
            "retried_batches": sum(x.retried for x in batchers.values()),
            "in_progress": admission.total,
            "skipped_decodes": decoder.skipped,
            **counts,
        }

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        limits = {"max_queue": max_queue, "max_per_client": max_per_client, "max_request_bytes": max_request_bytes,
                  "timeout_s": timeout_s, "max_new_tokens_limit": max_new_tokens_limit,
                  "max_prompt_chars": max_prompt_chars}  # fmt: skip
        out = service.info()
        out["limits"].update(limits)
        return out

    return app


def features_from_response(body: bytes) -> Any:
    """The client side of /v1/latent: the safetensors payload -> the features tensor."""
    from safetensors.torch import load

    return load(io.BytesIO(body).getvalue())["features"]
