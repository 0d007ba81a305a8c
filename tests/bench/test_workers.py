"""bench/workers.py: the per-worker connection count reads the right sockets from /proc, and
the CPU layout gives the gateway its N CPUs and the rig the rest."""

from __future__ import annotations

import os
import socket

from bench.workers import cpus_for, established_on, socket_inodes


def test_an_accepted_connection_is_counted_for_the_process_that_holds_it() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                on_port = established_on(port)
                mine = socket_inodes(os.getpid()) & on_port
                # The accepted socket has the listener's port as its local port; the client's
                # socket (an ephemeral local port) is not counted as the server's.
                assert len(mine) == 1
                assert str(os.fstat(accepted.fileno()).st_ino) in mine
                assert str(os.fstat(client.fileno()).st_ino) not in on_port


def test_cpu_layout() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    everything = ",".join(map(str, cpus))
    assert cpus_for(False, 1) == (None, everything)
    # Not enough CPUs to keep the rig apart: nothing pinned.
    assert cpus_for(True, len(cpus)) == (None, everything)
    if len(cpus) >= 2:
        gateway, rig = cpus_for(True, 1)
        assert gateway == str(cpus[0])
        assert rig == ",".join(map(str, cpus[1:]))
