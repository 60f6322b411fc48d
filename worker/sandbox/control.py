"""The test control plane under ``/_sandbox``: read bookkeeping, swap faults. No auth, no faults."""

from __future__ import annotations

import json

from aiohttp import web

from worker.sandbox.faults import FaultConfig
from worker.sandbox.state import STATE_KEY

CONTROL_PREFIX = "/_sandbox"


async def json_object(request: web.Request) -> dict[str, object] | None:
    """The request body as a JSON object, or None when it is not valid JSON or not an object."""
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def control_state(request: web.Request) -> web.Response:
    """GET /_sandbox/state: read-only bookkeeping for tests; ``ids=1``/``times=1`` add detail."""
    state = request.app[STATE_KEY]
    return web.json_response(
        state.snapshot(ids=request.query.get("ids") == "1", times=request.query.get("times") == "1")
    )


async def control_faults(request: web.Request) -> web.Response:
    """GET or POST /_sandbox/faults: read or replace the fault config at runtime."""
    state = request.app[STATE_KEY]
    if request.method == "POST":
        body = await json_object(request)
        if body is None:
            return web.json_response({"message": "Invalid JSON body"}, status=400)
        try:
            state.replace_faults(FaultConfig.from_json(body))
        except (TypeError, ValueError) as exc:
            return web.json_response({"message": str(exc)}, status=400)
    return web.json_response(state.faults.to_json())


def add_control_routes(app: web.Application) -> None:
    app.router.add_get(f"{CONTROL_PREFIX}/state", control_state)
    app.router.add_get(f"{CONTROL_PREFIX}/faults", control_faults)
    app.router.add_post(f"{CONTROL_PREFIX}/faults", control_faults)
