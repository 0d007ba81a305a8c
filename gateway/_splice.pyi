"""Types of gateway._splice, the C extension in gateway/_splice.c (why it is C: its header)."""

from collections.abc import Callable
from typing import Final

RUNNING: Final[int]
END: Final[int]
END_EXTRA: Final[int]
UPSTREAM_CLOSED: Final[int]
UPSTREAM_FAILED: Final[int]
BAD_FRAMING: Final[int]
CLIENT_GONE: Final[int]
CLOSED: Final[int]
YIELDED: Final[int]
LOCAL_FAILED: Final[int]
READ_BYTES: Final[int]

def carries_token(data: bytes, /) -> bool: ...

class Poller:
    """The relays of one event loop, on one epoll descriptor."""

    def fileno(self) -> int: ...
    def dispatch(self) -> int: ...

class Relay:
    """One streamed body, upstream socket to client socket, re-framed per read."""

    def __init__(
        self,
        poller: Poller,
        upstream_fd: int,
        client_fd: int,
        on_done: Callable[[], object],
        on_token: Callable[[], object] | None = None,
    ) -> None: ...
    @property
    def status(self) -> int: ...
    @property
    def error(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def reads(self) -> int: ...
    @property
    def last(self) -> float: ...
    @property
    def pending(self) -> int: ...
    @property
    def watching(self) -> bool: ...
    def close(self) -> None: ...
