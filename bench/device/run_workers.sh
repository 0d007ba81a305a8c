#!/bin/bash
# bench/workers.py on the device tool's 16-core machine (bench/results/workers_device.md), run there
# from the repository root as: bash bench/device/run_workers.sh, with .devbin carried:
#   .devbin/whl/   geogate's dependencies as wheels for the device's Python (3.12 there):
#                  pip download --only-binary=:all: --python-version 3.12 --no-deps -d .devbin/whl <each>
#   .devbin/h2load and .devbin/lib/  Debian's h2load (nghttp2-client) and the shared libraries it links
# (nothing outside that machine can be reached, so nothing is installed from a registry there).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devbin/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PATH=$PWD/.devbin:$PATH LD_LIBRARY_PATH=$PWD/.devbin/lib PYTHONUNBUFFERED=1
chmod +x .devbin/h2load
python3 --version; nproc; uname -r; h2load --version | head -1; which taskset || echo no-taskset
ulimit -n 65536 2>/dev/null || ulimit -n
python3 -c "import gateway.http.app, granian, bench.workers; print('imports ok')" || exit 4
python3 bench/workers.py --workers 1,2,4,8 --conc 256 --duration 4 --pin --backends 6 --threads 2 --out $OUT/workers_device 2>&1 | tee $OUT/log.txt
rc=$?
for f in /tmp/geogate-workers-*/geogate-*.log; do echo "== $f"; tail -15 "$f"; done
exit $rc
