"""Listing jobs a page at a time, for every listing route (``GET /v1/jobs``, the dead letters).

A page is ``{"data": [...], "next_cursor": ...}``: the records as stored (never parsed), newest
first, and an opaque cursor for the next page (null on the last one).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated

from fastapi import Query, Response

from api.errors import invalid_field
from shared.async_store import AsyncJobStore

__all__ = ["Cursor", "Limit", "decode_cursor", "encode_cursor", "page_response"]

# The query parameters of a listing.
Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]


async def page_response(
    store: AsyncJobStore, index: str, limit: int, cursor: str | None
) -> Response:
    """One page of the jobs in ``index`` (a sorted set of job ids), after ``cursor``."""
    before = None if cursor is None else decode_cursor(cursor)
    records: list[bytes] = []
    last: tuple[int, str] | None = None
    # Entries whose record expired are dropped from the index as they are met.
    while len(records) < limit:
        page = await store.page(index, limit - len(records), before)
        if not page:
            last = None
            break
        raws = await store.get_many_raw([job_id for job_id, _ in page])
        gone = [job_id for (job_id, _), raw in zip(page, raws, strict=True) if raw is None]
        await store.forget(index, gone)
        records.extend(raw for raw in raws if raw is not None)
        last = before = (page[-1][1], page[-1][0])
    next_cursor = None if last is None or len(records) < limit else encode_cursor(last)
    body = (
        b'{"data":['
        + b",".join(records)
        + b'],"next_cursor":'
        + json.dumps(next_cursor).encode()
        + b"}"
    )
    return Response(content=body, media_type="application/json")


def encode_cursor(position: tuple[int, str]) -> str:
    """The cursor of a page that ends at ``position`` (the last entry's score and job id)."""
    return base64.urlsafe_b64encode(f"{position[0]}:{position[1]}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The position a cursor stands for; a 422 (on ``cursor``) for one this API never made."""
    try:
        score, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        return int(score), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_field(("query", "cursor"), "not a cursor this API returned") from None
