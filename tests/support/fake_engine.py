"""A stand-in for vLLM's OpenAI server for the runtime's unit tests and benches (no model, starts in a second).

Built like vLLM's server: a Starlette app on uvicorn (uvloop, httptools when installed), with ``--middleware``
applied the way vLLM applies it (a class is added with ``app.add_middleware``), so the runtime's guard
(llmos_runtime.guard) runs in front of it exactly as in the real engine.

Implements what the runtime uses: /health (answering after ``--health-delay`` s, like vLLM's under a saturated
event loop), /metrics (vLLM's running/waiting gauges and generation-token counter, one token per chunk),
/v1/models, /v1/completions (streaming too, one chunk every ``--chunk-delay`` s; the prompt "stall" first waits
``--stall-seconds`` without generating, like a hung engine core under a live API server), /v1/load_lora_adapter
and /v1/unload_lora_adapter (a path containing "reject" is refused), and SageMaker-like /adapters routes (so tests
can show they are closed). ``--api-key`` guards /v1/* like vLLM's; ``--ignore-middleware`` leaves ``--middleware``
out (an engine whose guard is not in force). The keep-alive is vLLM's: ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``, default 5.
Run as ``python fake_engine.py [vLLM-style args] --port N``; unknown arguments are ignored like a real engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import sys


def build_app(args: argparse.Namespace):
    from starlette.applications import Starlette
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    loras: dict[str, str] = {}
    stats = {"aborted": 0, "running": 0, "tokens": 0}

    async def health(_r: Request):
        await asyncio.sleep(args.health_delay)
        return Response()

    async def metrics(_r: Request):
        # Everything, whatever ?name[]= asks (as vLLM 0.32's /metrics route does): the runtime filters.
        return PlainTextResponse(
            "# HELP vllm:fake a fake engine metric\n# TYPE vllm:fake gauge\nvllm:fake 1.0\n"
            f"vllm:num_requests_running {stats['running']}\nvllm:num_requests_waiting 0\n"
            "vllm:kv_cache_usage_perc 0.0\n"
            f'vllm:generation_tokens_total{{model_name="{args.served_model_name}"}} {stats["tokens"]}\n'
            f"llmos_fake_aborted_total {stats['aborted']}\n")

    async def token(body: dict) -> None:
        if body.get("prompt") == "stall" and not body.get("stalled"):
            body["stalled"] = True
            await asyncio.sleep(args.stall_seconds)  # a hung engine: in flight, no token
        await asyncio.sleep(args.chunk_delay)
        stats["tokens"] += 1

    async def models(_r: Request):
        data = [{"id": args.served_model_name, "object": "model"}] + [{"id": n, "object": "model"} for n in loras]
        return JSONResponse({"object": "list", "data": data})

    async def completions(request: Request):
        body = await request.json()
        model = body.get("model")
        if model != args.served_model_name and model not in loras:
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist.", "code": 404}},
                                status_code=404)
        n = int(body.get("max_tokens", 4))
        if not body.get("stream"):
            stats["running"] += 1
            try:
                # a long non-streaming generation: aborted when the client leaves (like vLLM's)
                for _ in range(n):
                    await token(body)
                    if await request.is_disconnected():
                        stats["aborted"] += 1
                        return Response(status_code=499)
            finally:
                stats["running"] -= 1
            return JSONResponse({"object": "text_completion", "model": model,
                                 "choices": [{"index": 0, "text": "x" * n, "finish_reason": "length"}]})

        async def events():
            stats["running"] += 1
            try:
                for i in range(n):
                    await token(body)
                    fin = "length" if i == n - 1 else None
                    ev = {"object": "text_completion", "model": model,
                          "choices": [{"index": 0, "text": "x", "finish_reason": fin}]}
                    yield f"data: {json.dumps(ev)}\n\n".encode()
                yield b"data: [DONE]\n\n"
            finally:
                stats["running"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def load_lora(request: Request):
        body = await request.json()
        if "reject" in body["lora_path"]:
            return JSONResponse({"error": {"message": "No adapter found for <path>", "code": 404}}, status_code=404)
        if body["lora_name"] in loras and not body.get("load_inplace"):
            return JSONResponse({"error": {"message": "already loaded", "code": 400}}, status_code=400)
        loras[body["lora_name"]] = body["lora_path"]
        return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def unload_lora(request: Request):
        body = await request.json()
        if body["lora_name"] not in loras:
            return JSONResponse({"error": {"message": "cannot be found", "code": 404}}, status_code=404)
        del loras[body["lora_name"]]
        return PlainTextResponse("Success")

    async def sagemaker_adapters(request: Request):  # like vLLM's SageMaker routes: not under --api-key
        if request.method == "DELETE":
            loras.pop(request.path_params["name"], None)
        else:
            body = await request.json()
            loras[body["name"]] = body["src"]
        return PlainTextResponse("Success")

    app = Starlette(routes=[
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/load_lora_adapter", load_lora, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_lora, methods=["POST"]),
        Route("/adapters", sagemaker_adapters, methods=["POST"]),
        Route("/adapters/{name}", sagemaker_adapters, methods=["DELETE"]),
    ])

    if args.api_key:
        async def api_key(request: Request, call_next):
            if request.url.path.startswith("/v1") and \
                    request.headers.get("Authorization") != f"Bearer {args.api_key}":
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            return await call_next(request)

        app.add_middleware(BaseHTTPMiddleware, dispatch=api_key)
    for path in [] if args.ignore_middleware else args.middleware:  # what vLLM's --middleware does
        module, name = path.rsplit(".", 1)
        obj = getattr(importlib.import_module(module), name)
        if inspect.isclass(obj):
            app.add_middleware(obj)
        else:
            app.middleware("http")(obj)
    return app


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default="fake")
    p.add_argument("--chunk-delay", type=float, default=0.05)
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--exit-code", type=int, default=None, help="exit with this code instead of serving")
    p.add_argument("--api-key", default=None, help="like vLLM: /v1/* needs 'Authorization: Bearer <key>'")
    p.add_argument("--middleware", action="append", default=[], help="like vLLM's: an ASGI middleware import path")
    p.add_argument("--ignore-middleware", action="store_true", help="leave --middleware out (no guard)")
    p.add_argument("--health-delay", type=float, default=0.0, help="seconds /health takes to answer")
    p.add_argument("--stall-seconds", type=float, default=1e9, help="how long the prompt 'stall' generates nothing")
    args, _unknown = p.parse_known_args(argv)
    if args.exit_code is not None:
        print("fake engine: failing on purpose", file=sys.stderr)
        sys.exit(args.exit_code)

    import os
    import time

    import uvicorn

    time.sleep(args.startup_delay)
    # vLLM's settings: uvloop, the keep-alive of VLLM_HTTP_TIMEOUT_KEEP_ALIVE (default 5 s)
    uvicorn.run(build_app(args), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=int(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "5")), loop="auto",
                http="auto")


if __name__ == "__main__":
    main(sys.argv[1:])
