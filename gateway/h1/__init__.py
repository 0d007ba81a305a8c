"""The gateway's HTTP/1.1 protocol (gateway.h1.conn): the uvicorn engine's public listener and,
on every engine, the ops listener (``for_ops``); its request cycle (gateway.h1.cycle) and its
own answers (gateway.h1.refuse)."""

from __future__ import annotations

from gateway import defaults as d
from gateway.h1.conn import H1
from gateway.h1.pipe import Pipe
from gateway.h1.reclaim import Reclaimer

__all__ = ["H1", "Pipe", "capped", "for_ops"]


def capped(
    max_header_bytes: int,
    url_bytes: int,
    head_timeout_s: float,
    max_body_bytes: int,
) -> type[H1]:
    """The protocol class for uvicorn's ``http=``: heads over ``max_header_bytes`` +
    ``url_bytes``, or not complete within ``head_timeout_s``, are refused, and so are bodies
    whose bytes as read pass CHUNKED_OVERHEAD_MAX times ``max_body_bytes`` (the app refuses
    those whose data alone pass it)."""
    limits = {
        "head_limit": max_header_bytes + url_bytes,
        "max_header_bytes": max_header_bytes,
        "head_timeout_s": head_timeout_s,
        "raw_body_limit": d.CHUNKED_OVERHEAD_MAX * max_body_bytes + max_header_bytes,
        "reclaimer": Reclaimer(),
    }
    return type("H1", (H1,), limits)


def for_ops() -> type[H1]:
    """The ops listener's protocol (gateway.http.ops): the public one's caps on a head, which
    must come within OPS_HEAD_TIMEOUT_S, and its bodies' (an admin change's) as read."""
    return capped(d.MAX_HEADER_BYTES, d.MAX_URL_BYTES, d.OPS_HEAD_TIMEOUT_S, d.ADMIN_MAX_BODY_BYTES)
