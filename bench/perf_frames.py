"""A Python proxy's CPU under load, by Python function: what ``bench/perf_split.py --py-frames``
adds to its split by binary.

py-spy sees Python frames only, and on uvloop most of its samples land in ``Runner.run``
(bench/results/round7/profile_streaming.md); cProfile costs more per call than the calls it
measures. perf sees everything, but a Python frame is one C function, the interpreter's, to
it. CPython 3.12 and later, run with ``-X perf`` (``PYTHONPERFSUPPORT=1``), enter each Python
function through a small trampoline of its own and name them in ``/tmp/perf-PID.map``, so a
sample's call chain says which Python function it was under: ``py::Qualname:/path/file.py``.

The interpreter is built without frame pointers, so the chains are unwound from a copy of the
stack (``--call-graph dwarf``). The trampolines carry no unwind tables: perf stops at the
first one it meets, the innermost Python frame, which is the one this attributes a sample to
(its own time, with the C it called: a ``transport.write`` and the kernel's send under it
count for the function that wrote). Samples with no Python frame are the event loop's own:
libuv's poll, its reads, the scheduler. The trampolines and the unwinding cost CPU: a target
run so is slower than without, so compare the split within a run, not its total with others.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.ab import interpreters

PERF_SUPPORT_ENV = "PYTHONPERFSUPPORT"  # CPython >= 3.12: as `-X perf`
MIN_PYTHON = (3, 12)
# Bytes of stack copied per sample: enough to unwind from a leaf (in the kernel, libc or the
# interpreter) to the innermost Python frame. More only makes perf.data bigger.
DWARF_STACK_BYTES = 8192
RECORD_ARGS = ("--call-graph", f"dwarf,{DWARF_STACK_BYTES}")
NO_FRAME = "(no Python frame: the event loop, its reads and waits)"
KINDS = ("kernel", "interpreter", "native")
PY_FRAME = re.compile(r"^py::(?P<name>.+):(?P<file>[^:]+?)(?:\+0x[0-9a-f]+)?$")
FRAME = re.compile(r"^\s*[0-9a-f]+\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")
SCRIPT_TIMEOUT_S = 600
REPORTED_FUNCTIONS = 30  # in the markdown; the JSON keeps every function


def frame_targets(ap: argparse.ArgumentParser, targets: list[str]) -> set[str]:
    """The geogate targets on CPython 3.12+, which --py-frames splits by Python function (the
    rest keep the split by binary: a geogate on 3.11 beside them prices the other interpreter
    and the trampolines together); one line and exit 2 where there is none."""
    ours = [t for t in targets if t.startswith("geogate")]
    try:
        versions = interpreters(ours)
    except (OSError, subprocess.TimeoutExpired) as exc:
        ap.error(f"a geogate target's interpreter did not run: {exc}")
    found = {
        t for t, v in versions.items() if tuple(int(x) for x in v.split(".")[:2]) >= MIN_PYTHON
    }
    if not found:
        ap.error(
            "--py-frames: no geogate target runs on CPython 3.12 or later (perf trampolines); "
            "name one: geogate%/path/to/python3.12"
        )
    return found


def leaf_kind(dso: str) -> str:
    """Where a sample's own instruction was: the kernel, the interpreter (libpython, or a
    trampoline in a perf map), or other native code (uvloop, httptools, libc, ...)."""
    if "kernel" in dso:
        return "kernel"
    if "libpython" in dso or "/perf-" in dso or Path(dso).name.startswith("python3"):
        return "interpreter"
    return "native"


def function_name(name: str, file: str) -> str:
    """``Qualname (path)``: the path from the last ``gateway``, ``bench``, ``backend``,
    ``geodb`` or ``asyncio`` folder in it (the project's code in any tree, and asyncio's), or
    from a package's folder under ``site-packages``; else the file's name alone (the rest of
    the standard library: "other: NAME" in ``by_layer``)."""
    parts = Path(file).parts
    for anchor in ("gateway", "bench", "backend", "geodb", "site-packages", "asyncio"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            rel = parts[i + 1 :] if anchor == "site-packages" else parts[i:]
            return f"{name} ({'/'.join(rel)})"
    return f"{name} ({parts[-1] if parts else file})"


def innermost(frames: list[tuple[str, str]]) -> str:
    """The sample's innermost Python function, from its frames (symbol, binary) leaf first."""
    for sym, _dso in frames:
        m = PY_FRAME.match(sym)
        if m:
            return function_name(m.group("name"), m.group("file"))
    return NO_FRAME


def tally(script: str) -> collections.Counter[tuple[str, str]]:
    """Samples by (innermost Python function, kind of leaf), from ``perf script``'s text: per
    sample its frames, leaf first, one per line, and a blank line."""
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    for block in script.split("\n\n"):
        frames = []
        for line in block.splitlines():  # a header line, where perf prints one, is no frame
            m = FRAME.match(line)
            if m:
                frames.append((m.group("sym"), m.group("dso")))
        if frames:
            found[(innermost(frames), leaf_kind(frames[0][1]))] += 1
    return found


def script(data: Path) -> str:
    """``perf script`` of a recording with call chains; inlined frames are not resolved (they
    cost perf minutes and this needs the binary and the Python frame only). Exits, in one
    line, when perf fails or takes too long."""
    cmd = ["perf", "script", "-i", str(data), "--no-inline", "-F", "ip,sym,dso"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"perf script on {data.name}: no answer in {SCRIPT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise SystemExit(f"perf script on {data.name} failed: {why}")
    return done.stdout


def clear_maps(pids: list[int], keep: Path | None) -> None:
    """Remove the perf maps that ``-X perf`` left for ``pids`` (CPython writes
    ``/tmp/perf-PID.map`` and never removes it), copied into ``keep`` first where given: a
    kept perf.data names its Python frames only with them."""
    for pid in pids:
        m = Path(f"/tmp/perf-{pid}.map")
        if not m.exists():
            continue
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(m, keep / m.name)
        m.unlink()


def by_function(
    samples: collections.Counter[tuple[str, str]], per_sample_us: float
) -> list[dict[str, object]]:
    """Every function, most samples first, each as µs per stream (or request), in all and by
    kind of leaf."""
    whole: collections.Counter[str] = collections.Counter()
    for (fn, _kind), n in samples.items():
        whole[fn] += n
    rows: list[dict[str, object]] = []
    for fn, n in whole.most_common():
        row: dict[str, object] = {"function": fn, "samples": n, "us": round(n * per_sample_us, 1)}
        for kind in KINDS:
            row[kind] = round(samples.get((fn, kind), 0) * per_sample_us, 1)
        rows.append(row)
    return rows


def summary(samples: collections.Counter[tuple[str, str]], per_sample_us: float) -> dict[str, Any]:
    """``by_function`` and ``by_layer`` for a target's results; nothing for a target whose
    samples were not split (no Python frames asked for)."""
    if not samples:
        return {}
    return {
        "by_function": by_function(samples, per_sample_us),
        "by_layer": by_layer(samples, per_sample_us),
    }


def layer(function: str) -> str:
    """A function's part of the stack, from its path: ``gateway/h1``, ``asyncio``, ..."""
    m = re.search(r"\(([^()]*)\)$", function)
    if function == NO_FRAME or m is None:
        return function
    parts = m.group(1).split("/")
    if parts[0] in ("gateway", "bench", "backend") and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0] if len(parts) > 1 else "other: " + parts[0]


def by_layer(
    samples: collections.Counter[tuple[str, str]], per_sample_us: float
) -> dict[str, float]:
    """µs per stream by part of the stack, largest first."""
    found: collections.Counter[str] = collections.Counter()
    for (fn, _kind), n in samples.items():
        found[layer(fn)] += n
    return {k: round(n * per_sample_us, 1) for k, n in found.most_common()}


def report(target: str, result: dict[str, Any], unit: str) -> list[str]:
    """The markdown for one target's ``by_layer`` and ``by_function`` (bench/perf_split.py)."""
    lines = [
        "",
        f"By Python function, {target} (`-X perf`: slower than without; each sample to its "
        f"innermost Python frame, with the C and kernel work it called; µs per {unit}):",
        "",
        "| part of the stack | µs |",
        "|---|---|",
    ]
    lines += [f"| {k} | {u:.0f} |" for k, u in result["by_layer"].items()]
    lines += ["", "| function | µs | kernel | interpreter | other native |"]
    lines += ["|---|---|---|---|---|"]
    lines += [
        f"| `{r['function']}` | {r['us']:.0f} | {r['kernel']:.0f} | {r['interpreter']:.0f} "
        f"| {r['native']:.0f} |"
        for r in result["by_function"][:REPORTED_FUNCTIONS]
    ]
    return lines
