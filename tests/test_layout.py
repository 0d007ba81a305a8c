"""The house rules of DESIGN.md §5 and §7 that a machine can check: every gateway module has a
test file of its own (or names the feature test that covers it), no module over 400 lines, no
function over 80, no import cycle. The layer rule itself is import-linter's (pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "geodb", "backend")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# Modules exercised through real processes rather than a unit test of their own: each names
# the feature test that covers it, which must exist.
COVERED_BY_FEATURE_TESTS = {
    "gateway/defaults.py": "tests/gateway/test_config.py",  # constants, checked with the config
    "gateway/config_file.py": "tests/gateway/test_config.py",  # the schema is tested through it
    "gateway/config_routing.py": "tests/gateway/test_config.py",  # the schema's routing part
    "gateway/errors.py": "tests/gateway/http/test_errors.py",  # the tree, mapped to HTTP there
    "gateway/cli/commands.py": "tests/gateway/cli/test_main.py",
    "gateway/cli/ctl_fleet.py": "tests/gateway/cli/test_ctl.py",  # both ways, real processes
    "gateway/cli/demo.py": "tests/gateway/cli/test_main.py",
    "gateway/cli/errors.py": "tests/gateway/cli/test_main.py",
    "gateway/cli/world_run.py": "tests/gateway/cli/test_world.py",  # a small world, for real
    "gateway/cli/world_report.py": "tests/gateway/cli/test_world.py",  # its table, from that run
    "gateway/fleet/store.py": "tests/gateway/fleet/test_memory.py",  # Protocols only
    "gateway/fleet/config_io.py": "tests/gateway/fleet/test_fleet.py",  # real redis-server
    "gateway/http/app.py": "tests/gateway/http/test_proxy.py",
    "gateway/http/asgi.py": "tests/gateway/http/test_proxy.py",
    "gateway/http/upstream.py": "tests/gateway/http/test_failover.py",  # the attempts, for real
    "gateway/watch/load_poller.py": "tests/gateway/test_load_routing.py",
    "gateway/watch/geoip_reload.py": "tests/gateway/test_geo_routing.py",
}
# Long on purpose: a table, not logic.
LONG_FUNCTIONS_ALLOWED = {
    ("gateway/cli/main.py", "_parser"),  # the CLI's argument table
    ("gateway/metrics.py", "__init__"),  # metric declarations
}


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_every_gateway_module_has_a_test_file() -> None:
    missing = []
    for path in _modules("gateway"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        rel = _rel(path)
        own = ROOT / "tests" / path.parent.relative_to(ROOT) / f"test_{path.name}"
        cover = COVERED_BY_FEATURE_TESTS.get(rel)
        if own.exists():
            assert cover is None, f"{rel} has its own test now: drop it from the allowlist"
        elif cover is None or not (ROOT / cover).exists():
            missing.append(f"{rel} (no {_rel(own)})")
    assert not missing, "modules without tests: " + ", ".join(missing)


def test_allowlist_names_modules_that_exist() -> None:
    gone = [m for m in COVERED_BY_FEATURE_TESTS if not (ROOT / m).exists()]
    assert not gone, f"allowlisted modules that no longer exist: {gone}"


def test_modules_and_functions_are_small() -> None:
    too_long = []
    for package in PACKAGES:
        for path in _modules(package):
            text = path.read_text(encoding="utf-8")
            rel = _rel(path)
            if len(text.splitlines()) > MAX_MODULE_LINES:
                too_long.append(f"{rel}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS_ALLOWED:
                        too_long.append(f"{rel}:{node.lineno} {node.name}(): {n} lines")
    assert not too_long, "over the size limits: " + "; ".join(too_long)


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.add(" <-> ".join(sorted((module, imported))))
    assert not cycles, "import cycles: " + "; ".join(sorted(cycles))
