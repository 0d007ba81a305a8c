"""A real redis-server for the fleet's store tests (test_redis_store, test_votes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import start_redis


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = start_redis(tmp_path)
    try:
        yield server.url
    finally:
        server.stop()
