"""``/v1/directions``: list, upload (raw safetensors body, size-limited) and remove named directions."""

from __future__ import annotations

import asyncio

from fastapi import Depends, FastAPI, Request

from polysteer.modalities.text.serve.errors import ApiError, require_key
from polysteer.modalities.text.serve.schemas import DirectionInfo, DirectionList


def install(app: FastAPI) -> None:
    """Add the direction routes to ``app`` (all behind ``require_key``)."""
    @app.get("/v1/directions", dependencies=[Depends(require_key)])
    async def list_directions(request: Request) -> DirectionList:
        return DirectionList(data=request.app.state.registry.infos())

    @app.post("/v1/directions", dependencies=[Depends(require_key)])
    async def upload_direction(request: Request, name: str, force: bool = False) -> DirectionInfo:
        """Body: the safetensors file itself (``curl --data-binary @dir.safetensors``)."""
        registry = request.app.state.registry
        data = await _read_limited(request, registry.max_upload_bytes)
        return await asyncio.to_thread(registry.add_bytes, name, data, force)

    @app.delete("/v1/directions/{name}", dependencies=[Depends(require_key)])
    async def delete_direction(name: str, request: Request) -> dict:
        try:
            request.app.state.registry.remove(name)
        except KeyError:
            raise ApiError(404, f"no direction named {name!r}", "not_found_error") from None
        return {"id": name, "object": "direction", "deleted": True}


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"direction file is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"direction file is over the {limit}-byte limit")
        chunks.append(chunk)
    if not size:
        raise ApiError(400, "empty upload: send the safetensors file as the request body")
    return b"".join(chunks)
