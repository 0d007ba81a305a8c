#!/usr/bin/env python3
"""A copy of this tree with the request path's modules compiled to C by mypyc, to measure
against the interpreted tree: ``bench/ab.py --targets nginx,geogate,geogate@DIR``.

Round eight listed compiling the hot modules as a direction not built; round ten measured it.
mypyc ships with mypy (a lint dependency here) and needs a C compiler and the interpreter's
headers. It turns each typed module into an extension module next to its source, which the
import system takes first; the rest of the tree stays interpreted. Code built this way checks
annotated types at run time, so what it refuses is a type the annotations got wrong (one in
gateway.h1.scope, fixed).

  .venv/bin/python bench/compiled_tree.py /tmp/compiled [--modules gateway/http/relay.py,...]

DIR must not exist yet: the tree at HEAD (``git archive``, so uncommitted changes are not in
it) is unpacked there and built in place (about 35 s on this VM for the default modules); a
build that fails leaves no DIR. The extension modules are built for the interpreter that runs
this script: another one (``geogate@DIR%python3.12``) would ignore them and run the sources.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a request and a streamed chunk run through, from bench/perf_split.py --py-frames: the
# proxy's front and back halves, the relay, the exchange, the upstream client, the request
# cycle. Not gateway.h1.conn: gateway.h1.capped subclasses its protocol at run time, which a
# class compiled by mypyc does not allow.
HOT_MODULES = (
    "gateway/http/relay.py",
    "gateway/http/upstream.py",
    "gateway/http/forward.py",
    "gateway/http/intake.py",
    "gateway/http/exchange.py",
    "gateway/http/headers.py",
    "gateway/http/watchdog.py",
    "gateway/client/conn.py",
    "gateway/client/pool.py",
    "gateway/h1/cycle.py",
    "gateway/h1/scope.py",
)
BUILD_TIMEOUT_S = 900


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="where the compiled tree goes (must not exist)")
    ap.add_argument("--modules", default=",".join(HOT_MODULES), help="comma-separated paths")
    args = ap.parse_args()
    mypyc = Path(sys.executable).with_name("mypyc")
    if not mypyc.exists():
        ap.error(f"no mypyc beside {sys.executable}: pip install mypy")
    if args.dir.exists():
        ap.error(f"{args.dir} exists: name a new folder")
    modules = [m for m in args.modules.split(",") if m]
    for m in modules:  # at HEAD, which is what is built
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"HEAD:{m}"])
        if known.returncode != 0:
            ap.error(f"no module {m} at HEAD in {ROOT}")
    args.dir.mkdir(parents=True)
    try:
        why = build(args.dir, mypyc, modules)
    except subprocess.TimeoutExpired:
        why = f"the build took over {BUILD_TIMEOUT_S} s"
    if why is not None:
        shutil.rmtree(args.dir)  # nothing half-built left to refuse next time
        raise SystemExit(f"compiled_tree: {why}")
    print(f"{args.dir}: {len(modules)} modules compiled by mypyc")


def build(where: Path, mypyc: Path, modules: list[str]) -> str | None:
    """HEAD unpacked into ``where`` and ``modules`` compiled in place; what failed, or None."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True)
    if archive.returncode != 0:
        return f"git archive HEAD failed: {archive.stderr.decode(errors='replace').strip()}"
    tar = subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, capture_output=True)
    if tar.returncode != 0:
        return f"tar failed: {tar.stderr.decode(errors='replace').strip()}"
    built = subprocess.run(
        [str(mypyc), *modules], cwd=where, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if built.returncode != 0:
        last = (built.stdout + built.stderr).strip().splitlines()[-1:] or ["no output"]
        return f"mypyc failed: {last[0]}"
    return None


if __name__ == "__main__":
    main()
