"""The guard's own answers (guard.py, access.py): JSON, marked ``X-LLMOS-Guard: refused`` so that the runtime's
self-test can tell them from the engine's. Standard library only: it runs inside the engine's process."""

from __future__ import annotations

GUARD_HEADER = "X-LLMOS-Guard"
GUARD_REFUSED = b"refused"


async def respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (GUARD_HEADER.lower().encode(), GUARD_REFUSED), *headers]})
    await send({"type": "http.response.body", "body": body})
