"""A stand-in for vLLM's OpenAI server for the runtime's unit tests (no model, starts in a second).

Implements what the runtime uses: /health, /metrics, /v1/models, /v1/completions (streaming too, one chunk every
``--chunk-delay`` s), /v1/load_lora_adapter and /v1/unload_lora_adapter (a path containing "reject" is refused).
``--api-key`` guards /v1/* like vLLM's. Run as ``python fake_engine.py [vLLM-style args] --port N``; unknown arguments are ignored like a real engine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiohttp import web


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default="fake")
    p.add_argument("--chunk-delay", type=float, default=0.05)
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--exit-code", type=int, default=None, help="exit with this code instead of serving")
    p.add_argument("--api-key", default=None, help="like vLLM: /v1/* needs 'Authorization: Bearer <key>'")
    args, _unknown = p.parse_known_args(argv)
    if args.exit_code is not None:
        print("fake engine: failing on purpose", file=sys.stderr)
        sys.exit(args.exit_code)

    loras: dict[str, str] = {}

    async def health(_r):
        return web.Response(text="")

    async def metrics(_r):
        return web.Response(text="# HELP vllm:fake a fake engine metric\n# TYPE vllm:fake gauge\nvllm:fake 1.0\n")

    async def models(_r):
        data = [{"id": args.served_model_name, "object": "model"}] + [{"id": n, "object": "model"} for n in loras]
        return web.json_response({"object": "list", "data": data})

    async def completions(request: web.Request):
        body = await request.json()
        model = body.get("model")
        if model != args.served_model_name and model not in loras:
            return web.json_response({"error": {"message": f"The model `{model}` does not exist.", "code": 404}},
                                     status=404)
        n = int(body.get("max_tokens", 4))
        if not body.get("stream"):
            return web.json_response({"object": "text_completion", "model": model,
                                      "choices": [{"index": 0, "text": "x" * n, "finish_reason": "length"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await asyncio.sleep(args.chunk_delay)
            fin = "length" if i == n - 1 else None
            ev = {"object": "text_completion", "model": model,
                  "choices": [{"index": 0, "text": "x", "finish_reason": fin}]}
            await resp.write(f"data: {json.dumps(ev)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def load_lora(request: web.Request):
        body = await request.json()
        if "reject" in body["lora_path"]:
            return web.json_response({"error": {"message": "No adapter found for <path>", "code": 404}}, status=404)
        if body["lora_name"] in loras and not body.get("load_inplace"):
            return web.json_response({"error": {"message": "already loaded", "code": 400}}, status=400)
        loras[body["lora_name"]] = body["lora_path"]
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def unload_lora(request: web.Request):
        body = await request.json()
        if body["lora_name"] not in loras:
            return web.json_response({"error": {"message": "cannot be found", "code": 404}}, status=404)
        del loras[body["lora_name"]]
        return web.Response(text="Success")

    async def serve() -> None:
        await asyncio.sleep(args.startup_delay)
        @web.middleware
        async def api_key(request: web.Request, handler):
            if args.api_key and request.path.startswith("/v1") and \
                    request.headers.get("Authorization") != f"Bearer {args.api_key}":
                return web.json_response({"error": "Unauthorized"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[api_key])
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/completions", completions)
        app.router.add_post("/v1/load_lora_adapter", load_lora)
        app.router.add_post("/v1/unload_lora_adapter", unload_lora)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main(sys.argv[1:])
