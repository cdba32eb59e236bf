"""``/v1/files``: upload a batch's input, read or delete a file, as OpenAI's Files API does
(the openai SDK's ``client.files`` works against it). Files belong to the API key that
uploaded them (or, for a batch's output and error files, that created the batch); others get
404. See ``api.files``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import CallerDep, authenticate
from api.files import Files
from shared.batches import FileObject
from shared.errors import PayloadTooLarge

__all__ = ["FilesDep", "router"]

router = APIRouter(prefix="/v1/files", tags=["files"], dependencies=[Depends(authenticate)])

# Room for the multipart envelope around the file itself.
_ENVELOPE_BYTES = 64 * 1024


async def _files(request: Request) -> Files:
    files: Files = request.app.state.files
    return files


FilesDep = Annotated[Files, Depends(_files)]


@router.post("")
async def upload_file(request: Request, files: FilesDep, caller: CallerDep) -> FileObject:
    """A JSONL file for a batch (``purpose=batch``), multipart as the openai SDK sends it,
    stored as it streams in; limits STRUCTQ_FILE_MAX_BYTES (413) and STRUCTQ_FILE_MAX_LINES
    (422)."""
    declared = request.headers.get("content-length", "")
    limit = request.app.state.settings.file_max_bytes
    if declared.isdigit() and int(declared) > limit + _ENVELOPE_BYTES:
        raise PayloadTooLarge(f"the file is larger than {limit} bytes (STRUCTQ_FILE_MAX_BYTES)")
    content_type = request.headers.get("content-type", "")
    return await files.upload(content_type, request.stream(), caller.owner)


@router.get("")
async def list_files(
    files: FilesDep,
    caller: CallerDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    after: str | None = None,
) -> dict[str, Any]:
    """The caller's files, newest first."""
    found = await files.list(caller.owner, limit + 1, after)
    if purpose is not None:
        found = [f for f in found if f.purpose == purpose]
    return {
        "object": "list",
        "data": [f.model_dump(mode="json") for f in found[:limit]],
        "has_more": len(found) > limit,
    }


@router.get("/{file_id}")
async def get_file(file_id: str, files: FilesDep, caller: CallerDep) -> FileObject:
    return await files.get(file_id, caller.scope)


@router.get("/{file_id}/content")
async def file_content(file_id: str, files: FilesDep, caller: CallerDep) -> StreamingResponse:
    """The file's bytes, streamed from storage a chunk at a time."""
    meta = await files.get(file_id, caller.scope)
    return StreamingResponse(
        files.store.read(meta.id),
        media_type="application/octet-stream",
        headers={"Content-Length": str(meta.bytes)},
    )


@router.delete("/{file_id}")
async def delete_file(file_id: str, files: FilesDep, caller: CallerDep) -> dict[str, Any]:
    meta = await files.delete(file_id, caller.scope)
    return {"id": meta.id, "object": "file", "deleted": True}
