"""WAN emulation in user space: a TCP relay that delays each direction by half a round trip.

There is no netem on this machine (no root, no qdisc), so ``geogate world`` puts one of these
between each client site and each region. Every chunk read on one side is written to the
other ``one_way_ms`` later, in order, so a request/response exchange costs one RTT on top of
whatever the server takes. Connection set-up is not delayed (the relay connects upstream at
once): the emulated paths behave like warm, already-open connections, which is what a
gateway's pooled upstream connections are and flatters the direct topologies, never geogate.

Run standalone (one process for all of a world's relays, so the clients' and gateways' CPU
does not jitter the delays): ``python -m gateway.cli.relay [--ports-file F]
LISTEN:TARGET:RTT_MS ...``. LISTEN 0: the relay binds a port of the kernel's choosing and
writes every listening port, in the order given, to F (one JSON list, written whole once all
are listening): a port picked by the parent could be taken before the relay binds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.cli.procs import ExitedAtStart, NotReady, log_tail

CHUNK = 65536
HOST = "127.0.0.1"


@dataclass(frozen=True)
class RelaySpec:
    listen_port: int
    target_port: int
    rtt_ms: float

    def arg(self) -> str:
        return f"{self.listen_port}:{self.target_port}:{self.rtt_ms:.3f}"

    @staticmethod
    def parse(text: str) -> RelaySpec:
        listen, target, rtt = text.split(":")
        return RelaySpec(int(listen), int(target), float(rtt))


class _Lateness:
    """How late this process's timers fire, smoothed, so that each chunk's sleep is that much
    shorter. asyncio's timers come up to a millisecond late (epoll waits in whole ms, rounded
    up) and later on a busy machine, once per direction: uncorrected, an exchange took 1-2.5 ms
    longer than its RTT (the medians `pytest tests/gateway/cli/test_relay.py -s` prints).
    Corrected, a chunk whose timer happens to fire on time would leave early, by up to the
    correction: it waits out the rest with a second, uncorrected sleep. Busy-waiting the last
    stretch instead was exact but kept the relay process spinning through a world's thousands
    of chunks a second."""

    ALPHA = 0.2  # weight of the newest observation: settles within ~10 chunks

    def __init__(self) -> None:
        self.s = 0.0

    def observe(self, late_s: float) -> None:
        self.s += self.ALPHA * (max(0.0, late_s) - self.s)


_lateness = _Lateness()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy src to dst, each chunk ``delay_s`` after it arrived; EOF travels with the same
    delay. A reader task timestamps chunks, a writer task releases them when due, so a slow
    writer never adds to the delay of the chunks behind it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def release() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time() - _lateness.s
            if wait > 0:
                asked = loop.time() + wait
                await asyncio.sleep(wait)
                _lateness.observe(loop.time() - asked)
            if (left := due - loop.time()) > 0:
                # The timer was on time and the correction too much: wait out the rest, so no
                # chunk leaves before its time (this sleep may be late; it is not observed).
                await asyncio.sleep(left)
            if not data:
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    writer = asyncio.ensure_future(release())
    try:
        while True:
            data = await src.read(CHUNK)
            queue.put_nowait((loop.time() + delay_s, data))
            if not data:
                break
        await writer
    except (ConnectionError, OSError):
        writer.cancel()
    finally:
        with contextlib.suppress(Exception):
            dst.close()


async def serve(specs: list[RelaySpec]) -> list[asyncio.Server]:
    servers = []
    for spec in specs:
        delay_s = spec.rtt_ms / 2000.0

        async def handle(
            r: asyncio.StreamReader,
            w: asyncio.StreamWriter,
            target: int = spec.target_port,
            delay: float = delay_s,
        ) -> None:
            try:
                ur, uw = await asyncio.open_connection(HOST, target)
            except OSError:  # the region is down: the client sees a reset, as over a WAN
                w.close()
                return
            await asyncio.gather(_pipe(r, uw, delay), _pipe(ur, w, delay))

        servers.append(await asyncio.start_server(handle, HOST, spec.listen_port))
    return servers


def bound_ports(servers: list[asyncio.Server]) -> list[int]:
    """The port each server listens on (the kernel's choice where its spec asked for 0)."""
    return [int(s.sockets[0].getsockname()[1]) for s in servers]


def write_ports(path: Path, ports: list[int]) -> None:
    """Written whole or not at all (a rename): the parent polls for the file and reads it once."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ports), encoding="utf-8")
    os.replace(tmp, path)


def read_ports(path: Path) -> list[int] | None:
    """What write_ports wrote; None until it has."""
    try:
        return [int(p) for p in json.loads(path.read_text(encoding="utf-8"))]
    except FileNotFoundError:
        return None


def wait_ports(
    path: Path, proc: subprocess.Popen[bytes], log: Path | None = None, timeout: float = 30.0
) -> list[int]:
    """The relays' ports, once the relay process has bound them all and written the list; one
    line naming ``log`` (the relay's output) and its last line if it does not."""
    deadline = time.monotonic() + timeout

    def see() -> str:
        return "see its log" if log is None else log_tail(log)

    while time.monotonic() < deadline:
        if (ports := read_ports(path)) is not None:
            return ports
        if proc.poll() is not None:
            raise ExitedAtStart(
                f"the relay process exited at start with status {proc.returncode}; {see()}"
            )
        time.sleep(0.05)
    raise NotReady(f"the relay process wrote no {path.name} in {timeout:g} s; {see()}")


async def _main(specs: list[RelaySpec], ports_file: Path | None) -> None:
    ports = bound_ports(await serve(specs))
    # printed first: the line is in the log by the time the parent finds the file
    print(f"relays ready on {' '.join(map(str, ports))}", flush=True)
    if ports_file is not None:
        write_ports(ports_file, ports)
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    ports_file = None
    if argv[:1] == ["--ports-file"]:
        ports_file, argv = Path(argv[1]), argv[2:]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main([RelaySpec.parse(a) for a in argv], ports_file))


if __name__ == "__main__":
    main(sys.argv[1:])
