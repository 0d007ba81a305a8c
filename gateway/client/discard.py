"""An answer nobody reads (a 429, 502 or 503 the proxy fails over from): its body is dropped
and its connection goes back to the pool, rather than closed.

Closed, every refusal cost a connection: a backend shedding load with 429s, or a regional
gateway answering 503 at capacity to an edge one, got a new connection (across regions, a
TLS handshake) for each request it refused, and the gateway a port in TIME_WAIT for each,
some 28,000 of which to one address exhaust the ephemeral range, just when the upstream had
least to spare. Such an answer's body is an error's few bytes: they come with the head as a
rule, and are dropped at once; where they come apart (uvicorn, under vLLM, writes an answer's
head and body in two writes), a task reads them, so that the failover waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from gateway.client.conn import Conn

# The rest of a discarded answer must come within this and be at most this large, or its
# connection is closed: an upstream that stalls or sends a large body is not waited for.
DISCARD_WAIT_S: Final = 1.0
DISCARD_MAX_BYTES: Final = 64 * 1024

# The drains under way: the loop holds only weak references to its tasks.
_draining: set[asyncio.Task[None]] = set()


def drain(conn: Conn, put: Callable[[Conn], None]) -> None:
    """Drop the rest of ``conn``'s answer and hand it to ``put`` (the pool's, which closes a
    connection that is not reusable: ``Connection: close``, out of step); closed instead
    where the rest does not come within DISCARD_WAIT_S and DISCARD_MAX_BYTES."""
    if conn.complete:  # all of it came with the head: no task
        conn.chunks.clear()  # in place: the parser's body callback is this list's append
        conn.buffered = 0
        put(conn)
        return
    task = conn.loop.create_task(_drain(conn, put))
    _draining.add(task)
    task.add_done_callback(_draining.discard)


def draining() -> int:
    """How many discarded answers are still being read."""
    return len(_draining)


async def _drain(conn: Conn, put: Callable[[Conn], None]) -> None:
    size = 0
    try:
        async with asyncio.timeout(DISCARD_WAIT_S):
            while data := await conn.read():
                size += len(data)
                if size > DISCARD_MAX_BYTES:
                    conn.close()
                    return
    except asyncio.CancelledError:  # the loop stopping: nothing is left to pool it for
        conn.close()
        raise
    except Exception:  # a timeout, the connection lost or a bad answer: its end, no more
        conn.close()
        return
    put(conn)
