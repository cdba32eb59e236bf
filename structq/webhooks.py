"""Checking a structq webhook as a receiver: Standard Webhooks signatures (HMAC-SHA256 over
``id.timestamp.body``, keyed with the base64 secret after ``whsec_``), with the standard library
alone."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence

import pydantic

from structq.errors import WebhookVerificationError
from structq.models import WebhookEvent

__all__ = ["verify_webhook"]

# How far a webhook's timestamp may be from now, either way (Standard Webhooks' default).
TOLERANCE_S = 300.0

_EVENT: pydantic.TypeAdapter[WebhookEvent] = pydantic.TypeAdapter(WebhookEvent)


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(text + "==")
        except (binascii.Error, ValueError):
            raise WebhookVerificationError("the webhook secret is not base64") from None
    if not key:
        raise WebhookVerificationError("the webhook secret is empty")
    return key


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | bytes | Sequence[str | bytes],
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> WebhookEvent:
    """The event of a webhook request (``JobEvent``: ``type``, ``timestamp``, ``data`` the job
    record; or ``BatchEvent``), once its signature is checked against ``secret`` (a
    ``whsec_...`` string, raw bytes, or several during a rotation) and its timestamp is within
    ``tolerance_s`` of now. ``body``: the request body exactly as received.
    ``WebhookVerificationError`` otherwise."""
    payload = body.encode() if isinstance(body, str) else bytes(body)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    signed = f"{msg_id}.{sent_at}.".encode() + payload
    expected = [
        base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()) for s in secrets
    ]
    presented = []
    for versioned in signatures.split():
        version, _, value = versioned.partition(",")
        if version == "v1":
            presented.append(value.encode())
    if not any(hmac.compare_digest(e, p) for e in expected for p in presented):
        raise WebhookVerificationError("no matching signature")
    try:
        return _EVENT.validate_python(json.loads(payload))
    except (ValueError, pydantic.ValidationError) as exc:
        raise WebhookVerificationError(f"the webhook body is not a structq event: {exc}") from None
