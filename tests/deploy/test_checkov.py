"""checkov (in .venv-checkov: scripts/dev test installs it) scans the Dockerfiles and the
Terraform: no failed check, and every skipped one carries its reason in a
`#checkov:skip=CKV_...:reason` comment and is listed here, so a new skip is a reviewed change.

Offline: --skip-download and BC_SKIP_MAPPING keep checkov from fetching its guideline links
from Prisma Cloud; where the kernel lets us (root, or user namespaces), it runs in a network
namespace of its own (`unshare -n`: loopback only), so any attempt would fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, tool

# check id -> resources skipped (by its comment in the file, which says why)
EXPECTED_SKIPS = {
    "CKV_AWS_29": 3,  # Redis at rest: true in the primary; secondaries inherit (conditional)
    "CKV_AWS_30": 3,  # Redis in transit: likewise
    "CKV_AWS_191": 3,  # Redis KMS key: set in the primary; secondaries may not set one
    "CKV2_AWS_28": 3,  # WAF in front of the ALB: the operator's choice
    "CKV2_AWS_23": 1,  # regional A records are aliases to the ALB (a module output)
}


def _offline_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture(scope="module")
def report() -> list[dict[str, Any]]:
    checkov = tool("checkov", ROOT / ".venv-checkov" / "bin" / "checkov")
    p = subprocess.run(
        [
            *_offline_prefix(),
            checkov,
            "--skip-download",
            "-d",
            str(DEPLOY),
            "--framework",
            "dockerfile",
            "terraform",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"},
    )
    assert p.returncode in (0, 1), p.stderr  # 1: failed checks, looked at below
    out = json.loads(p.stdout)
    return out if isinstance(out, list) else [out]


def test_checkov_scans_dockerfiles_and_terraform(report: list[dict[str, Any]]) -> None:
    scanned = {r["check_type"]: r["summary"] for r in report}
    assert set(scanned) == {"dockerfile", "terraform"}
    assert scanned["dockerfile"]["resource_count"] == 2  # Dockerfile.gateway, .backend
    for kind, summary in scanned.items():
        assert summary["parsing_errors"] == 0, kind
        assert summary["passed"] > 50, kind


def test_no_failed_check(report: list[dict[str, Any]]) -> None:
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for r in report
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)


def test_every_skip_is_explained_and_expected(report: list[dict[str, Any]]) -> None:
    skipped: dict[str, int] = {}
    for r in report:
        for c in r["results"]["skipped_checks"]:
            reason = c["check_result"].get("suppress_comment", "")
            assert len(reason) > 20, f"{c['check_id']} on {c['resource']}: no reason given"
            skipped[c["check_id"]] = skipped.get(c["check_id"], 0) + 1
    assert skipped == EXPECTED_SKIPS
