"""bench/stream_memory.py: the /proc reading it takes per stream, and its probe (the
sitecustomize.py it puts on a traced gateway's PYTHONPATH) writing a snapshot on SIGUSR1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

from bench.stream_memory import SITECUSTOMIZE, dump, smaps


def test_smaps_reads_this_process() -> None:
    m = smaps(os.getpid())
    assert m["VmRSS"] > 0
    assert 0 < m["Anonymous"] <= m["Rss"]


def test_the_probe_dumps_a_snapshot_and_object_counts(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(
        os.environ,
        PYTHONPATH=str(tmp_path / "probe"),
        PYTHONTRACEMALLOC="1",
        STREAM_MEMORY_DUMP=str(tmp_path / "dump"),
    )
    code = (
        "import time\nclass Held: pass\nkeep = [(Held(), bytearray(1000)) for _ in range(100)]\n"
        "print('up', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "up\n"
        snap, types = dump(p.pid, tmp_path / "dump", 0)
        assert isinstance(snap, tracemalloc.Snapshot)
        assert types.get("Held", 0) == 100  # gc tracks instances; bytearrays it does not
        assert sum(s.size for s in snap.statistics("filename")) >= 100 * 1000
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
