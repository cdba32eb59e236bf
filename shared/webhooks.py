"""Webhooks: the URL guard both sides run, the signature, and the delivery retry policy.

The guard (SSRF): a webhook URL must be http(s), and its host must resolve only to public
addresses. Every address the name resolves to is checked, so numeric spellings the resolver
accepts (``0x7f000001``, ``2130706433``, ``017700000001``) are caught as what they resolve to.
The gateway checks at submit time (422), the delivering worker again before each attempt, and
then connects to the very address it checked (no second lookup a DNS rebinding could change).

Signatures follow Standard Webhooks (standard-webhooks/standard-webhooks): headers
``webhook-id`` (stable across the retries of one delivery), ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``; during a secret
rotation one signature per secret, space-separated). Receivers verify with the
``standardwebhooks`` package.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from shared.errors import UnsafeUrl

__all__ = [
    "check_addresses",
    "parse_url",
    "resolve_checked",
    "sign",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL, or UnsafeUrl."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("the webhook URL must be http or https")
    if not parts.hostname:
        raise UnsafeUrl("the webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the webhook URL must not carry credentials")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not public, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _refusal(address.ipv4_mapped)
    for flag in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{flag}"):
            return flag.replace("_", "-")
    if not address.is_global:  # e.g. CGNAT 100.64.0.0/10, documentation ranges
        return "not globally routable"
    return None


def check_addresses(
    host: str, addresses: Sequence[str], allowed: Sequence[IPNetwork]
) -> list[IPAddress]:
    """The addresses, if every one is public or inside an allowed network; else UnsafeUrl."""
    checked = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        why = _refusal(address)
        if why is not None and not any(address in network for network in allowed):
            raise UnsafeUrl(
                f"the webhook host {host!r} resolves to {address}, which is {why}; webhooks "
                "go to public addresses only (see STRUCTQ_WEBHOOK_ALLOWED_NETWORKS)"
            )
        checked.append(address)
    if not checked:
        raise UnsafeUrl(f"the webhook host {host!r} resolves to no address")
    return checked


def resolve_checked(url: str, allowed: Sequence[IPNetwork]) -> tuple[str, str, int, IPAddress]:
    """(scheme, host, port, address to connect to) for ``url``, every address of the host
    checked; UnsafeUrl otherwise (an unknown host included)."""
    scheme, host, port = parse_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"the webhook host {host!r} does not resolve: {exc}") from None
    addresses = check_addresses(host, [str(info[4][0]) for info in infos], allowed)
    return scheme, host, port, addresses[0]


def sign(secrets: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header: one ``v1,`` signature per secret, space-separated."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


def now() -> datetime:
    return datetime.now(UTC)
