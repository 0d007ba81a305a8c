"""The case files the edge Worker's tests check it against (edge/test/*-cases.json) are what
the Python router and signer say today, and the Worker's country and continent points
(edge/src/points.js) are geodb/data's CSVs: regenerated here and compared, so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from geodb.edge import EdgeResult, verify

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_edge_cases", ROOT / "scripts/gen_edge_cases.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_case_files_match_the_python_router_and_signer() -> None:
    for path, text in generator().outputs().items():
        rel = path.relative_to(ROOT)
        assert path.read_text(encoding="utf-8") == text, (
            f"{rel} is out of date with the Python code: run scripts/gen_edge_cases.py and "
            "commit the result (then the Worker's tests say whether it still agrees)"
        )


def test_the_cases_cover_every_kind_of_decision() -> None:
    cases = json.loads((ROOT / "edge/test/route-cases.json").read_text(encoding="utf-8"))
    seen = {(c["expect"]["outcome"], c["expect"]["reason"]) for c in cases}
    for reason in ("lowest-score", "p2c-in-band", "standby", "panic"):
        assert ("routed", reason) in seen
    assert ("no_candidate", "nothing usable") in seen
    assert ("model_not_found", "no upstream serves the model") in seen
    excluded = {e["reason"].split(" ")[0] for c in cases for e in c["expect"]["excluded"]}
    assert excluded == {"residency", "drained", "unhealthy"}


def test_every_sign_case_verifies() -> None:
    cases = json.loads((ROOT / "edge/test/sign-cases.json").read_text(encoding="utf-8"))
    for c in cases:
        f = dict(c["fields"])
        v = verify(c["header"], {f["kid"]: c["secret"]}, [f["aud"]], float(f["ts"]), 30.0)
        assert v.result is EdgeResult.OK and v.client is not None
        assert v.client.location.city == f["city"]


def test_the_worker_replaces_every_claim_the_gateway_drops_from_an_untrusted_peer() -> None:
    """edge/src/proxy.js's CLIENT_CLAIMS (a client's own words about itself, replaced by the
    Worker's) is a copy of gateway/http/headers.py's _EDGE_CLAIMS and then some (the
    forwarded-for family the gateway reads from a trusted proxy): a header added to one list
    and not the other reached a gateway as a claim the edge vouched for."""
    import re

    from gateway.http.headers import _EDGE_CLAIMS

    source = (ROOT / "edge/src/proxy.js").read_text(encoding="utf-8")
    found = re.search(r"const CLIENT_CLAIMS = new Set\(\[(.*?)\]\);", source, re.S)
    assert found is not None, "CLIENT_CLAIMS not found in edge/src/proxy.js"
    worker = set(re.findall(r'"([a-z0-9-]+)"', found[1]))
    gateway = {name.decode() for name in _EDGE_CLAIMS if not name.startswith(b"cf-")}
    assert gateway <= worker, sorted(gateway - worker)  # cf-*: the Worker drops them all
    assert {"x-forwarded-for", "x-forwarded-proto", "x-real-ip"} <= worker
