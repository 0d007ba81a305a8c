"""The ``/v1/*`` proxy's attempts (gateway.http.upstream's Attempts) in the request's task,
watched for the client leaving: cancelled when it does."""

from __future__ import annotations

import asyncio

from gateway.defaults import DISCONNECT_WATCH_DELAY_S
from gateway.http.asgi import DISCONNECT_HOOK, DisconnectHook, Message, Receive, Send
from gateway.http.exchange import Exchange
from gateway.http.upstream import Attempts, ClientGone
from gateway.runtime import Runtime


async def forward(rt: Runtime, ex: Exchange, receive: Receive, send: Send) -> int:
    """Run the attempts while watching for the client to leave; cancel them if it does.
    Returns the status the client got. The attempts run in this task: a task of their own
    plus ``asyncio.wait`` cost a few percent of a request's CPU (bench/results/profile.md).
    The watch cancels this task when the client leaves (ClientGone); a cancellation from
    outside (the drain's cut) stays one, answered (503) by gateway.http.intake if nothing was
    sent yet. Both engines run a request in an asyncio Task (granian's default task_impl:
    its "rust" one ignores cancel(), nor would gateway.http.gate's drain cut work)."""
    task = rt.current_task()
    assert task is not None, "forward runs in the request's task"
    active, gone = True, False
    watch: asyncio.Future[Message] | None = None
    later: asyncio.TimerHandle | None = None

    def left(_: object = None) -> None:
        nonlocal gone
        # Only while the attempts run: a callback that fires later (the watch cancelled
        # below, or a disconnect in the same loop turn as the end) must not cancel what
        # this task does next.
        if active:
            gone = True
            task.cancel()

    def start_watch() -> None:
        nonlocal watch
        watch = asyncio.ensure_future(receive(), loop=task.get_loop())  # any awaitable; no lookup
        watch.add_done_callback(left)

    hook: DisconnectHook | None = ex.scope.get("extensions", {}).get(DISCONNECT_HOOK)
    if hook is not None:  # the server tells us itself (gateway.h1): no task, no timer
        hook(left)
    else:
        # The watch starts after DISCONNECT_WATCH_DELAY_S: a task wrapping the server's
        # receive costs about 4 % of a fast request's CPU, and most answers come sooner than
        # that (a client that leaves meanwhile is noticed then, before any long generation).
        later = task.get_loop().call_later(DISCONNECT_WATCH_DELAY_S, start_watch)
    try:
        return await Attempts(rt, ex, send, task).run()
    except asyncio.CancelledError:
        if not gone:
            raise  # from elsewhere (the drain's cut): gateway.http.intake answers it
        task.uncancel()  # the cancellation was ours, and ends here
        raise ClientGone from None
    finally:
        active = False
        if hook is not None:
            hook(None)
        if later is not None:
            later.cancel()
        if watch is not None:
            watch.cancel()
