"""deploy/terraform/aws, planned by Terraform itself: the GPU hosts' autoscaling sizes
(min_size <= desired_capacity <= max_size, per region in the example) and the hosts' grant on
the model's bucket. The region module is planned whole with the real AWS provider where a
local copy of it is installed (a filesystem mirror: no download), offline (fake keys, no
account lookup, and where the kernel allows, a network namespace of its own); the example's
`regions` is checked from its variables.tf alone, which needs no provider. Each skips where
terraform (or the provider) is not installed; the grant's shape is also read without them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.deploy.test_aws_hosts import (
    EXAMPLE,
    REGION,
    TF_ENV,
    _data,
    _statements,
    _unquote,
    terraform_with_region_variables,
)
from tests.deploy.test_checkov import _offline_prefix

# Where a provider may be installed for `terraform init -plugin-dir` (the unpacked layout:
# registry.terraform.io/hashicorp/aws/<version>/<os_arch>/).
PLUGIN_DIR = Path(os.environ.get("GEOGATE_TF_PLUGIN_DIR", "/opt/tf-plugins"))
OFFLINE_PROVIDER = """provider "aws" {
  region                      = "ap-southeast-1"
  access_key                  = "AKIAIOSFODNN7EXAMPLE"
  secret_key                  = "offline"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
}
"""
MODULE_VALUES: dict[str, Any] = {
    "region_id": "ap-southeast",
    "vpc_id": "vpc-0ap",
    "public_subnet_ids": ["subnet-0apa", "subnet-0apb"],
    "private_subnet_ids": ["subnet-0apc", "subnet-0apd"],
    "ami_id": "ami-0123456789abcdef0",
    "model_path": "/opt/models/llama-3.1-8b-instruct",
    "model_name": "llama-3.1-8b-instruct",
    "gateway_image": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/geogate-gateway:0.1.0",
    "backend_image": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/geogate-backend:0.1.0",
    "gateway_config": '[gateway]\nregion = "ap-southeast"\n',
    "certificate_arn": "arn:aws:acm:ap-southeast-1:123456789012:certificate/ap",
    "alb_logs_bucket": "my-alb-logs-ap-southeast-1",
    "prometheus_cidrs": ["10.10.5.20/32"],
    "redis_auth_token": "0123456789abcdef",
    "redis_auth_ssm_parameter": "/geogate/redis-auth-token",
    "ops_token": "0123456789abcdef",
    "ops_token_ssm_parameter": "/geogate/ops-token",
    "kms_key_arn": "arn:aws:kms:ap-southeast-1:123456789012:key/ap",
    "redis_client_cidrs": ["10.30.0.0/16"],
}
SIZES_OK = [(1, 1, 4), (0, 0, 0), (1, 4, 4)]
SIZES_REFUSED = [(3, 2, 4), (1, 5, 4), (5, 5, 4)]
# The model's bucket as each module call of the grant's plan names it.
MODEL_URIS = {
    "prefix": "s3://my-models/llama-3.1-8b-instruct/",
    "bucket": "s3://my-models/",
    "none": "",
}


def _terraform(cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    terraform = shutil.which("terraform")
    assert terraform
    return subprocess.run(
        [*_offline_prefix(), terraform, *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **TF_ENV},
    )


def _hcl(values: dict[str, Any], indent: str = "  ") -> str:
    """name = value lines; JSON's strings, numbers and lists are HCL's too (no "${" here)."""
    return "".join(f"{indent}{k} = {json.dumps(v)}\n" for k, v in values.items())


@pytest.fixture(scope="module")
def region_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of modules/region, initialised with the installed AWS provider."""
    if not shutil.which("terraform"):
        pytest.skip("terraform is not installed")
    version = _terraform(Path.cwd(), "version", "-json")
    found = json.loads(version.stdout or "{}").get("terraform_version", "0")
    if tuple(int(n) for n in re.findall(r"\d+", found)[:2]) < (1, 6):  # `terraform test`'s
        pytest.skip(f"terraform {found}: `terraform test` needs 1.6 or later")
    if not (PLUGIN_DIR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip(f"no AWS provider in {PLUGIN_DIR} (GEOGATE_TF_PLUGIN_DIR) to plan offline")
    tmp = tmp_path_factory.mktemp("plan")
    shutil.copytree(REGION, tmp / "region", ignore=shutil.ignore_patterns(".terraform*"))
    p = _terraform(tmp / "region", "init", "-input=false", "-no-color", f"-plugin-dir={PLUGIN_DIR}")
    assert p.returncode == 0, p.stdout + p.stderr
    return tmp / "region"


def _message(text: str) -> str:
    return " ".join(re.sub(r"[│╷╵]", " ", text).split())


# --- autoscaling sizes -----------------------------------------------------------------------


def _test_files(region: Path, cases: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[str, str]]:
    """`terraform test` (plans only) of the module with MODULE_VALUES: one file per case, each
    run of it planned with its values. A failed run skips the rest of its file, not the other
    files: file name -> (pass or fail, its output)."""
    tests = region / "tests"
    shutil.rmtree(tests, ignore_errors=True)
    tests.mkdir()
    for name, runs in cases.items():
        text = OFFLINE_PROVIDER + "variables {\n" + _hcl(MODULE_VALUES) + "}\n"
        for i, values in enumerate(runs):
            variables = "  variables {\n" + _hcl(values, "    ") + "  }\n"
            text += f'run "r{i}" {{\n  command = plan\n{variables}}}\n'
        (tests / f"{name}.tftest.hcl").write_text(text)
    p = _terraform(region, "test", "-no-color")
    sections = re.split(r"^tests/(\S+)\.tftest\.hcl\.\.\. in progress$", p.stdout, flags=re.M)
    out = {}
    for name, body in zip(sections[1::2], sections[2::2], strict=True):
        m = re.search(rf"^tests/{re.escape(name)}\.tftest\.hcl\.\.\. (pass|fail)$", body, re.M)
        assert m, body
        out[name] = (m.group(1), body + p.stderr)
    assert set(out) == set(cases), p.stdout + p.stderr
    return out


def test_the_module_plans_sizes_in_order_and_refuses_the_others(region_copy: Path) -> None:
    """min_size <= desired_capacity <= max_size. AWS refused the others only when the apply
    reached the autoscaling group, after the plan had passed and other resources changed.
    With a scaling policy Terraform leaves the count to it, and still refuses a desired count
    out of range: it would be used again once the policy is switched off."""
    sizes = ("min_size", "desired_capacity", "max_size")
    ok = [dict(zip(sizes, s, strict=True)) for s in SIZES_OK]
    ok.append({"target_requests_per_host": 120})
    refused = {f"refused{i}": dict(zip(sizes, s, strict=True)) for i, s in enumerate(SIZES_REFUSED)}
    refused["policy"] = {"target_requests_per_host": 120, "min_size": 2, "desired_capacity": 1}
    # in order, but 0 hosts under target tracking: no requests per host to scale out on
    zero = {"target_requests_per_host": 120, "min_size": 0, "desired_capacity": 0}
    cases = {"ok": ok, "zero": [zero], **{k: [v] for k, v in refused.items()}}
    results = _test_files(region_copy, cases)
    status, output = results["ok"]
    assert status == "pass" and output.count("... pass") == len(ok) + 1, output
    status, output = results["zero"]
    assert status == "fail" and (
        "GPU hosts of ap-southeast: with target_requests_per_host, min_size must be 1 or more "
        "(got 0)"
    ) in _message(output), output
    for name, values in refused.items():
        status, output = results[name]
        assert status == "fail" and "Resource precondition failed" in output, (values, output)
        lo, want, hi = (values.get(s, d) for s, d in zip(sizes, (1, 1, 4), strict=True))
        assert (
            "GPU hosts of ap-southeast: min_size <= desired_capacity <= max_size is required; "
            f"got min_size {lo}, desired_capacity {want}, max_size {hi}."
        ) in _message(output), output


def test_each_size_is_a_whole_number_of_hosts(tmp_path: Path) -> None:
    for name in ("min_size", "max_size", "desired_capacity"):
        for bad in (-1, 1.5):
            p = terraform_with_region_variables(
                tmp_path / f"{name}{bad}", {name: bad}, "plan", "-input=false", "-no-color"
            )
            assert p.returncode != 0, (name, bad)
            message = _message(p.stderr)
            assert f"{name}: a whole number of hosts, 0 or more (got {bad})." in message


def _example_regions() -> dict[str, dict[str, Any]]:
    tfvars = hcl2.loads((EXAMPLE / "terraform.tfvars.example").read_text())
    regions = tfvars["regions"].items()
    return {_unquote(k): {a: _unquote(x) for a, x in v.items()} for k, v in regions}


def _plan_example_variables(tmp: Path, regions: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The example's variables.tf alone, with terraform.tfvars.example as the operator copies
    it (tokens as TF_VAR_ would give them; no route53.json yet) and these regions."""
    if not shutil.which("terraform"):
        pytest.skip("terraform is not installed")
    tmp.mkdir()
    shutil.copy(EXAMPLE / "variables.tf", tmp / "variables.tf")
    shutil.copy(EXAMPLE / "terraform.tfvars.example", tmp / "terraform.tfvars")
    extra = {"ops_token": "0" * 16, "redis_auth_token": "0" * 16, "geodns_file": ""}
    (tmp / "override.auto.tfvars.json").write_text(json.dumps({**extra, "regions": regions}))
    for command in (["init", "-input=false"], ["plan", "-input=false", "-lock=false"]):
        p = _terraform(tmp, *command, "-no-color")
        if p.returncode != 0:
            return p
    return p


def test_the_example_refuses_a_region_whose_sizes_are_out_of_order(tmp_path: Path) -> None:
    regions = _example_regions()
    assert {(r["min_size"], r["desired_capacity"], r["max_size"]) for r in regions.values()} == {
        (1, 1, 4)
    }
    p = _plan_example_variables(tmp_path / "ok", regions)
    assert p.returncode == 0, p.stdout + p.stderr
    regions["us-east"].update(min_size=2, desired_capacity=1)
    regions["ap-southeast"].update(desired_capacity=6)
    p = _plan_example_variables(tmp_path / "bad", regions)
    assert p.returncode != 0
    message = _message(p.stderr)
    assert "Invalid value for variable" in message
    assert (
        "regions: each region's GPU hosts need min_size <= desired_capacity <= max_size; not so "
        "in ap-southeast (min_size 1, desired_capacity 6, max_size 4), us-east (min_size 2, "
        "desired_capacity 1, max_size 4)."
    ) in message, message


# --- the model's bucket ----------------------------------------------------------------------


def _glob(pattern: str, value: str) -> bool:
    """IAM's wildcards: * any run of characters, ? one."""
    regex = "".join({"*": ".*", "?": "."}.get(c, re.escape(c)) for c in pattern)
    return re.fullmatch(regex, value) is not None


def _as_list(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else v


def allows(policy: dict[str, Any], action: str, resource: str, **context: str) -> bool:
    """Whether the policy's Allow statements grant the request (no Deny in these documents);
    a condition on a key the request lacks does not hold, as in IAM."""
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow"
        assert set(s) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, s
        if not any(_glob(a.lower(), action.lower()) for a in _as_list(s["Action"])):
            continue
        if not any(_glob(r, resource) for r in _as_list(s["Resource"])):
            continue
        holds = True
        for op, keys in s.get("Condition", {}).items():
            for key, values in keys.items():
                match = {"StringLike": _glob, "StringEquals": str.__eq__}[op]
                got = context.get(key)
                holds &= got is not None and any(match(v, got) for v in _as_list(values))
        if holds:
            return True
    return False


@pytest.fixture(scope="module")
def model_grants(region_copy: Path) -> dict[str, dict[str, Any]]:
    """The hosts' boot policy as the AWS provider renders it in a plan, for each of
    MODEL_URIS: one root module calling the region module once for each (one plan)."""
    root = region_copy.parent / "grants"
    root.mkdir()
    calls = "".join(
        f'module "{name}" {{\n  source = "../region"\n'
        + _hcl({**MODULE_VALUES, "region_id": f"r-{name}", "model_s3_uri": uri})
        + "}\n"
        for name, uri in MODEL_URIS.items()
    )
    (root / "main.tf").write_text(OFFLINE_PROVIDER + calls)
    init = _terraform(root, "init", "-input=false", "-no-color", f"-plugin-dir={PLUGIN_DIR}")
    assert init.returncode == 0, init.stdout + init.stderr
    p = _terraform(root, "plan", "-input=false", "-no-color", "-lock=false", "-out=plan.bin")
    assert p.returncode == 0, p.stdout + p.stderr
    show = _terraform(root, "show", "-json", "plan.bin")
    assert show.returncode == 0, show.stderr
    modules = json.loads(show.stdout)["planned_values"]["root_module"]["child_modules"]
    return {
        name: json.loads(r["values"]["policy"])
        for name in MODEL_URIS
        for m in modules
        for r in m["resources"]
        if r["address"] == f"module.{name}.aws_iam_role_policy.boot"
    }


def test_the_hosts_list_and_read_the_models_prefix_only(
    model_grants: dict[str, dict[str, Any]],
) -> None:
    """The boot's `aws s3 sync s3://my-models/llama-3.1-8b-instruct/ <model_path>` lists with
    that prefix (ListObjectsV2, s3:ListBucket on the bucket) and gets each key under it. The
    hosts could list the whole bucket (every other model's keys) with the old grant."""
    bucket, prefix = "my-models", "llama-3.1-8b-instruct/"
    assert MODEL_URIS["prefix"] == f"s3://{bucket}/{prefix}"
    policy = model_grants["prefix"]
    ls = ("s3:ListBucket", f"arn:aws:s3:::{bucket}")
    assert allows(policy, *ls, **{"s3:prefix": prefix})
    for key in ("config.json", "model-00001-of-00004.safetensors", "original/params.json"):
        assert allows(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/{prefix}{key}"), key
    assert not allows(policy, *ls)  # no prefix: the whole bucket
    for other in ("", "other-model/", "llama-3.1-8b-instruct-private/", "llama"):
        assert not allows(policy, *ls, **{"s3:prefix": other}), other
    for arn in (f"{bucket}/other/x", f"{bucket}-private/{prefix}x", f"{bucket}/{prefix[:-1]}"):
        assert not allows(policy, "s3:GetObject", f"arn:aws:s3:::{arn}"), arn
    # Each action on the ARN it applies to: ListBucket on the bucket, GetObject on objects.
    s3 = [s for s in policy["Statement"] if s["Sid"].startswith("ModelWeights")]
    assert sorted((s["Action"], s["Resource"]) for s in s3) == [
        ("s3:GetObject", f"arn:aws:s3:::{bucket}/{prefix}*"),
        ("s3:ListBucket", f"arn:aws:s3:::{bucket}"),
    ]
    # s3://bucket/ names the whole bucket: every prefix, every object of it, no other bucket's.
    policy = model_grants["bucket"]
    assert allows(policy, *ls) and allows(policy, *ls, **{"s3:prefix": "x/"})
    assert allows(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}/x/y")
    assert not allows(policy, "s3:GetObject", f"arn:aws:s3:::{bucket}-private/x")
    assert not allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}-private")
    # No model_s3_uri: the model is on the AMI or a snapshot, and no S3 grant at all.
    assert not [s for s in model_grants["none"]["Statement"] if "s3:" in str(s["Action"])]


def test_the_list_grant_names_the_prefix_as_written() -> None:
    """The same, read from hosts.tf (no terraform needed): ListBucket alone on the bucket's
    ARN under an s3:prefix condition, GetObject alone on the prefix's objects."""
    (boot,) = [b for (kind, name), b in _data(REGION).items() if name == "boot"]
    s3 = {_unquote(s["sid"]): s for s in _statements(boot) if "ModelWeights" in s["sid"]}
    assert set(s3) == {"ModelWeightsList", "ModelWeightsRead"}
    listing, read = s3["ModelWeightsList"], s3["ModelWeightsRead"]
    assert [_unquote(a) for a in listing["actions"]] == ["s3:ListBucket"]
    assert [_unquote(r) for r in listing["resources"]] == ["arn:aws:s3:::${local.model_bucket}"]
    ((condition,),) = [d['"condition"']["content"] for d in listing["dynamic"]]
    assert (_unquote(condition["test"]), _unquote(condition["variable"])) == (
        "StringLike",
        "s3:prefix",
    )
    assert [_unquote(v) for v in condition["values"]] == ["${local.model_prefix}*"]
    assert [_unquote(a) for a in read["actions"]] == ["s3:GetObject"]
    assert [_unquote(r) for r in read["resources"]] == [
        "arn:aws:s3:::${local.model_bucket}/${local.model_prefix}*"
    ]
