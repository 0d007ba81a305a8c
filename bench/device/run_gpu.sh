#!/bin/bash
# The model server's GPU checks on the device tool's H200 (or H100), run there from the repository
# root as: bash bench/device/run_gpu.sh, with .devbin carried:
#   (a) tests/backend: tests/backend/test_gpu.py's CUDA-only tests and the CUDA branches elsewhere;
#   (b) bench/gpu.py on the 1b model, none/nf4/int8 (README, "Model server performance"): greedy
#       = model.generate, then the server through the openai client (streaming, 16 streams, a
#       client that leaves after 3 chunks, /metrics' NVML gauges), its results checked below.
# The image has python3 3.12 with torch (cu130), transformers, accelerate, nvidia-ml-py, aiohttp,
# httpx, pytest, pytest-timeout, hypothesis, jinja2, prometheus-client, uvloop; the rest travels:
#   .devbin/whl/   wheels for CPython 3.12 manylinux x86_64, made here with
#                  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#                    --platform manylinux_2_28_x86_64 (… _2_27, _2_17, 2014, 1, _2_24) -d .devbin/whl <each>
#                  of: bitsandbytes==0.50.2 openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2
#                  truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1 h2==4.4.1 hpack==4.2.0
#                  hyperframe==6.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
#                  typing-inspection==0.4.5 pytest-asyncio==1.5.0 aiodns==4.0.4 pycares==5.2.1
#                  cffi==2.1.1 pycparser==3.12 (.venv's versions). bitsandbytes' wheel (43 MB) is
#                  repacked under its own name keeping only libbitsandbytes_cuda13*.so and _cpu.so
#                  (the image's torch is cu130), their lines dropped from RECORD: 7 MB.
#   .devbin/whl-extra/  typing_extensions==4.16.0 anyio==4.16.0 idna==3.20: installed only where the
#                  image's own is missing or older than a carried wheel's Requires-Dist asks.
# (nothing outside that machine can be reached, so nothing is installed from a registry there).
# Writes $OUT/env.txt, pytest_backend.txt, gpu_log.txt, checks.txt and gpu_r23/{gpu.json,gpu.md,
# server.log}. About 3-4 minutes (tests/backend took 70 s on a 2-core CPU here); at most ~7:
# TESTS_TIMEOUT (180 s) and BENCH_TIMEOUT (210 s) cap the two parts.
# Exit: 0 all passed; 1 tests failed; 2 the benchmark or a check of its results failed; 3 both;
# 10 the install failed; 11 an import failed.
set -o pipefail
cd "$(dirname "$0")/../.." || exit 10
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devbin/whl/*.whl || exit 10
# Requires-Dist of the carried wheels against the image's own packages: a newer one from
# whl-extra where the image's is too old, a warning for anything else unmet.
extra=$(python3 - .devbin/whl .devbin/whl-extra <<'EOF'
import glob, importlib.metadata as md, re, sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.version import Version

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def meta(w):
    z = zipfile.ZipFile(w)
    return Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
carried = {norm(meta(w)["Name"]): w for w in glob.glob(sys.argv[1] + "/*.whl")}
extras = {norm(m["Name"]): (Version(m["Version"]), w) for w in glob.glob(sys.argv[2] + "/*.whl") for m in [meta(w)]}
install = set()
for name, w in sorted(carried.items()):
    for r in map(Requirement, meta(w).get_all("Requires-Dist") or []):
        if r.marker and not r.marker.evaluate({"extra": ""}):
            continue
        dep = norm(r.name)
        if dep in carried:
            continue
        try:
            have = md.version(r.name)
        except md.PackageNotFoundError:
            have = None
        if have is not None and r.specifier.contains(have, prereleases=True):
            continue
        x = extras.get(dep)
        if x and r.specifier.contains(x[0], prereleases=True):
            install.add(x[1])
            print(f"{name} needs {r}; the image has {have}: installing {x[1]}", file=sys.stderr)
        else:
            print(f"WARNING: {name} needs {r}; the image has {have}", file=sys.stderr)
print(" ".join(sorted(install)))
EOF
) 2>/tmp/run_gpu_extra.txt || { extra=; echo 'the requirement check failed (going on without whl-extra)' >>/tmp/run_gpu_extra.txt; }
if [ -n "$extra" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $extra || exit 10
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
    cat /tmp/run_gpu_extra.txt
    python3 --version; nproc; uname -r
    nvidia-smi | head -15
    python3 - <<'EOF'
import importlib
for name in ("torch", "transformers", "accelerate", "tokenizers", "pynvml", "pydantic", "openai",
             "pytest", "pytest_asyncio", "typing_extensions", "anyio"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), m.__file__)
    except Exception as exc:
        print(name, "FAILED:", repr(exc))
try:
    import torch
    print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
    import bitsandbytes
    from bitsandbytes import cextension as c
    lib = c.__dict__.get("lib")
    path = getattr(lib.__dict__.get("_lib"), "_name", None) if lib is not None else None
    print("bitsandbytes", bitsandbytes.__version__, c.BNB_BACKEND, type(lib).__name__, path)
except Exception as exc:
    print("torch/bitsandbytes FAILED:", repr(exc))
EOF
} 2>&1 | tee "$OUT/env.txt"
python3 -c "import backend.cli, backend.server, bench.gpu, tests.support, openai, pytest_asyncio, bitsandbytes; print('imports ok')" 2>&1 | tee -a "$OUT/env.txt" || exit 11

# (a) the model server's tests, all of them (on an H200 in 2 minutes: a failure's traceback
# names what broke, and the rest still run); -rs lists any skip (test_gpu.py's mean no GPU was
# seen; a traceback that quotes the loader's message must not read as one)
timeout -k 15 "${TESTS_TIMEOUT:-180}" python3 -m pytest -q -p no:cacheprovider tests/backend --timeout 300 -rs -W ignore::DeprecationWarning 2>&1 | tee "$OUT/pytest_backend.txt"
rc_tests=${PIPESTATUS[0]}
if grep -q "^SKIPPED.*test_gpu.py.*needs a CUDA GPU" "$OUT/pytest_backend.txt"; then
    echo "test_gpu.py was skipped: no CUDA GPU seen"; rc_tests=1
fi

# (b) the benchmark: --budget-s stops new stages past 150 s (1b, three modes and the server ran
# in 52-72 s before: bench/results/gpu.md, gpu_1b_final.md)
timeout -k 15 "${BENCH_TIMEOUT:-210}" python3 bench/gpu.py --out "$OUT/gpu_r23" --presets 1b --modes none,nf4,int8 --budget-s 150 2>&1 | tee "$OUT/gpu_log.txt"
rc_bench=${PIPESTATUS[0]}
python3 - "$OUT/gpu_r23/gpu.json" <<'EOF' 2>&1 | tee "$OUT/checks.txt"
import json, sys

doc = json.load(open(sys.argv[1]))
bad = 0
def check(name, ok, value=""):
    global bad
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value}")

check("no errors", not doc["errors"], [(e["stage"], e["error"]) for e in doc["errors"]])
check("nothing skipped", not doc["skipped"], doc["skipped"])
check("bitsandbytes", not str(doc["env"].get("bitsandbytes", "")).startswith("unavailable"), doc["env"].get("bitsandbytes"))
runs = {r["quantize"]: r for r in doc["runs"]}
for mode in ("none", "nf4", "int8"):
    r = runs.get(mode)
    check(f"1b {mode} ran", r is not None)
    if r:
        g = r.get("greedy", {})
        check(f"1b {mode} greedy alone = generate", g.get("batch1_equal") is True, g)
        print(f"     ttft_ms {r.get('ttft_ms')} tok/s b1 {r.get('tok_s_batch1')} b16 {r.get('tok_s_batch16')}")
s = doc.get("server") or {}
check("server ran", bool(s))
if s:
    cs = s.get("chat_stream") or {}
    check("chat finish_reason", (s.get("chat") or {}).get("finish_reason") in ("length", "stop"), s.get("chat"))
    check("stream: role delta first", cs.get("first_delta_role") == "assistant", cs.get("first_delta_role"))
    check("stream: usage chunk", bool(cs.get("usage_chunk")), cs.get("usage_chunk"))
    check("stream text = non-streamed", cs.get("same_text_as_non_streaming") is True)
    check("completions stream = whole", s.get("completions_stream_equals_whole") is True)
    c16 = s.get("concurrent_16") or {}
    check("16 streams all complete", c16.get("all_complete") is True, c16)
    cancel = s.get("cancel") or {}
    made = cancel.get("tokens_generated")  # 0 is a pass (stopped at once); missing is not
    check("client leaving stops generation",
          made is not None and made < 100 and cancel.get("running_after") == 0, cancel)
    m = s.get("metrics") or {}
    check("NVML gauges in /metrics", m.get("geogate_backend_gpu_utilization_perc") is not None
          and m.get("geogate_backend_gpu_memory_used_bytes") is not None, m)
print("checks:", "all ok" if not bad else f"{bad} FAILED")
sys.exit(1 if bad else 0)
EOF
rc_checks=${PIPESTATUS[0]}
echo "tests rc=$rc_tests bench rc=$rc_bench checks rc=$rc_checks"
rc=0
[ "$rc_tests" -ne 0 ] && rc=1
[ "$rc_bench" -ne 0 ] || [ "$rc_checks" -ne 0 ] && rc=$((rc | 2))
exit $rc
