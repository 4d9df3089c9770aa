"""``latentbridge-serve run=<run dir>``: load the run once and serve it (conf/serve.yaml)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def serve(cfg: DictConfig) -> None:
    """Load the run, build the app, run uvicorn until interrupted."""
    import uvicorn

    from latentbridge.codecs.keys import read_key
    from latentbridge.serve.app import create_app
    from latentbridge.serve.service import Service

    service = Service.load(
        cfg.run,
        device=cfg.device,
        max_pixels=int(cfg.max_pixels),
        key=read_key(cfg.key_file, "key_file"),
        mllm=cfg.mllm,
        mllm_dtype=cfg.mllm_dtype,
    )
    app = create_app(
        service,
        max_request_bytes=int(cfg.max_request_bytes),
        max_batch_size=int(cfg.max_batch_size),
        max_wait_ms=float(cfg.max_wait_ms),
        timeout_s=float(cfg.timeout_s),
        decode_threads=int(cfg.decode_threads),
        max_queue=int(cfg.max_queue),
        max_per_client=int(cfg.max_per_client),
        retry_after_s=float(cfg.retry_after_s),
        max_new_tokens_limit=int(cfg.max_new_tokens_limit),
        max_prompt_chars=int(cfg.max_prompt_chars),
        refusal_delay_s=float(cfg.refusal_delay_s),
        decode_workers=int(cfg.decode_workers),
    )
    info: dict[str, Any] = service.info()
    print(
        f"serving {info['run']} ({info['scenario']}, codec {info['codec']['name']} lambda={info['codec']['lmbda']}, "
        f"{info['device']}) on http://{cfg.host}:{cfg.port}",
        flush=True,
    )
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level=cfg.log_level)
