"""The fleet document a gateway's workers last routed on, kept where a worker started later
reads it: one that replaces a worker that died starts on the fleet's state, not on the file.

Why: a worker is forked from the parent, which holds only the config file. A replacement used
to route on the file's routing (an operator's drain or weight undone for its share of the
traffic) until its first sync, and with Redis away until Redis came back; and seeding an
empty Redis it put the file's document there. With this it adopts the last fleet document at
once, and settles it with Redis as any document it holds (``RedisStateStore._mine``).

The parent (gateway.server) names the file in ``ENV_FLEET_CACHE``, in a directory of its own
(mode 0700) that lives as long as the gateway: a gateway started anew starts from its file, as
before. With ``redis.state_file`` the file is that one, kept after the gateway stops, one
worker or several: a gateway restarted while Redis is away then routes on the fleet's last
document, where it routed on its file (a region drained for maintenance took traffic again
from every gateway restarted during a Redis outage). Writes go to a temporary file renamed
over the last, so a reader never sees half of one; a file that does not read as one (or none)
is no document, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway import checks
from gateway.fleet.settle import Stored

log = logging.getLogger("geogate.fleet")
ENV_FLEET_CACHE = "_GEOGATE_FLEET_CACHE"  # not GEOGATE_: that prefix is a config override
FILE_NAME = "fleet.json"


@contextlib.contextmanager
def kept(restarted: bool, shared: bool, state_file: Path | None = None) -> Iterator[Path | None]:
    """In the parent, around its workers' lives: ``state_file`` (a fleet's, kept after), or
    the file, named for them, where a worker may start while the gateway runs (``restarted``:
    several workers, one replacing another that died; granian's, which SIGHUP restarts);
    else none (one uvicorn or hypercorn worker: this process itself)."""
    os.environ.pop(ENV_FLEET_CACHE, None)  # not one inherited from whoever started us
    if shared and state_file is not None:
        os.environ[ENV_FLEET_CACHE] = str(state_file)
        try:
            yield state_file
        finally:
            os.environ.pop(ENV_FLEET_CACHE, None)
        return
    if not restarted:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="geogate-fleet-"))
    os.environ[ENV_FLEET_CACHE] = str(directory / FILE_NAME)
    try:
        yield directory / FILE_NAME
    finally:
        os.environ.pop(ENV_FLEET_CACHE, None)
        shutil.rmtree(directory, ignore_errors=True)


def _path() -> Path | None:
    named = os.environ.get(ENV_FLEET_CACHE)
    return Path(named) if named else None


def save(stored: Stored, fleet: str) -> None:
    """Keep ``stored``, the document of ``fleet`` (its Redis and deployment: ``fleet_of``), for
    workers started later; a failure is logged, never raised."""
    path = _path()
    if path is None or stored.doc is None:
        return
    data = {
        "fleet": fleet,
        "doc": stored.doc,
        "version": stored.version,
        "changed_at": stored.changed_at,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        # 0600: an upstream's URL may carry its password, and redis.state_file outlives the
        # gateway's own 0700 directory.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(json.dumps(data))
            f.flush()
            os.fsync(f.fileno())  # on disk before it is named: it is to outlive a crash
        tmp.replace(path)
    except OSError as exc:
        log.warning(
            "could not keep the fleet config in %s (a worker or gateway started later routes "
            "on the file's config until Redis answers): %s",
            path,
            exc,
        )


def fleet_of(redis_url: str, deployment: str) -> str:
    """Which fleet a document is of: a worker started after a reload whose config names
    another Redis or deployment (a new fleet, as README has one made) must not carry the old
    fleet's document into it."""
    return f"{checks.redact_url(redis_url)} {deployment}"


def memory_fleet(file_doc: dict[str, Any]) -> str:
    """The in-memory store's "fleet": its file's routing. A worker started in place of one
    that died, or by granian's SIGHUP, takes the operator changes (admin API) the one before
    made, which were lost with it: a drain undone, unsaid. Only while the file's routing is
    what they were made on: an edited file (granian's SIGHUP reads it again) starts anew."""
    digest = hashlib.sha256(json.dumps(file_doc, sort_keys=True).encode()).hexdigest()
    return f"memory {digest[:16]}"


def load(fleet: str) -> Stored | None:
    """What the gateway's workers last routed on in ``fleet``, or None."""
    path = _path()
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        doc, version, changed_at = data["doc"], data["version"], data["changed_at"]
        kept_of = str(data["fleet"])
        if kept_of != fleet:
            # In memory, an edited file (granian's SIGHUP read it again): the changes made on
            # the old one are not carried over, as memory_fleet says; nor from memory to a
            # fleet (a gateway given a redis.url): no mistake to warn of. Between two fleets
            # it is said: the Redis URL spelled another way (localhost for 127.0.0.1, a /0
            # added) passed it over without a word, and a drained region took traffic again
            # from every gateway restarted while Redis was away, which the file is for.
            if not (fleet.startswith("memory ") or kept_of.startswith("memory ")):
                log.warning(
                    "not routing on the fleet config kept in %s: it is of fleet %r, this "
                    "gateway's is %r (redis.url and redis.deployment, as written); it routes "
                    "on its file's config until Redis answers",
                    path,
                    kept_of[:200],
                    fleet,
                )
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(doc, dict) or not isinstance(version, int) or version < 1:
        return None
    when = float(changed_at) if isinstance(changed_at, int | float) else None
    return Stored(doc, version, when)
