"""deploy/terraform/aws, the GPU hosts' boot script, user_data.sh.tftpl: rendered as
templatefile() renders it and run by bash with stand-ins for `aws` and `docker` (the host's real
tools), so the ECR logins, the tokens, the fleet's name and the containers' environment are
checked by running them. What a plan would do to the hosts is test_aws_hosts.py's."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import pytest
from redis.connection import parse_url

from tests.deploy.test_aws_hosts import EXAMPLE, REGION, USER_DATA, _locals

# redis-py's parse_url is unannotated: typed here as what it returns, Redis's connection
# keyword arguments by name.
redis_url_parts = cast("Callable[[str], dict[str, Any]]", parse_url)

# --- the boot script, run -------------------------------------------------------------------

IDENT = "[a-z_][a-z0-9_]*"


def render(template: str, values: dict[str, str]) -> str:
    """templatefile() for user_data.sh.tftpl: `%{ if x != "" ~}...%{ endif ~}` (the `~`
    strips the directive's line break), `${x}`, and `$${` for a literal `${`.
    test_the_renderer_matches_terraform compares it with Terraform's own."""

    def cond(m: re.Match[str]) -> str:
        return m.group(2) if values[m.group(1)] != "" else ""

    text = re.sub(
        rf'%\{{ if ({IDENT}) != "" ~\}}\n(.*?)%\{{ endif ~\}}\n', cond, template, flags=re.S
    )
    assert "%{" not in text, "a template directive this renderer does not know"
    text = re.sub(rf"(?<!\$)\$\{{({IDENT})\}}", lambda m: values[m.group(1)], text)
    return text.replace("$${", "${")


SSM = {
    # ElastiCache allows # & $ ^ ! < > - (variables.tf); the encoding is checked on more.
    "/geogate/redis-auth-token": "Tk#1%41?x:y&z+w!$~^=&p",
    "/geogate/ops-token": "ops-0123456789abcdef",
}


# hosts.tf's local, as Terraform hands it to the template: the test reads it, not a copy.
HOST_READY_TIMEOUT_S = int(_locals(REGION)["host_ready_timeout_s"])
BOOT_MARGIN_S = 300  # the template's BOOT_MAX_S: the hook's timeout and 5 minutes more


def _values(**over: str) -> dict[str, str]:
    return {
        "aws_region": "ap-southeast-1",
        "gateway_image": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/geogate-gateway:0.1.0",
        "backend_image": "210987654321.dkr.ecr.us-east-1.amazonaws.com/geogate-backend:0.1.0",
        "gateway_config": '[gateway]\nregion = "ap-southeast"',
        "model_path": "/opt/models/m",
        "model_s3_uri": "",
        "geoip_s3_uri": "",
        "model_name": "m",
        "redis_host": "geogate-eu-central-redis.abc.euc1.cache.amazonaws.com",
        "redis_param": "/geogate/redis-auth-token",
        "ops_token_param": "/geogate/ops-token",
        "region_id": "ap-southeast",
        "group_name": "geogate-ap-southeast-gpu",  # hosts.tf: <name_prefix>-<region_id>-gpu
        "ready_hook": "ready",
        "host_ready_timeout_s": str(HOST_READY_TIMEOUT_S),
        **over,
    }


AWS_STUB = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"cmd": "aws", "args": args}) + "\\n")
def opt(name):
    return args[args.index(name) + 1]
if args[:2] == ["ssm", "get-parameter"]:
    print(json.loads(os.environ["STUB_SSM"])[opt("--name")])
elif args[:2] == ["ecr", "get-login-password"]:
    if opt("--region") in os.environ.get("STUB_ECR_FAIL", "").split(","):
        sys.exit("An error occurred (UnrecognizedClientException): GetAuthorizationToken")
    print("pw-" + opt("--region"))
elif args[:2] == ["s3", "cp"]:
    if os.environ.get("STUB_S3_FAIL"):
        sys.exit("fatal error: An error occurred (404) when calling the HeadObject operation")
    with open(args[-1], "wb") as f:
        f.write(b"mmdb from " + args[-2].encode())
elif args[:2] == ["autoscaling", "complete-lifecycle-action"]:
    if os.environ.get("STUB_HOOK_FAIL"):
        sys.exit("An error occurred (ValidationError): No active Lifecycle Action found")
elif args[:2] not in (
    ["s3", "sync"],
    ["autoscaling", "set-instance-health"],
    ["autoscaling", "complete-lifecycle-action"],
):
    sys.exit(f"aws stub: unexpected {args}")
"""

DOCKER_STUB = """
import json, os, stat, sys
args = sys.argv[1:]
entry = {"cmd": "docker", "args": args}
if args[:1] == ["login"]:
    entry["stdin"] = sys.stdin.read()
if "--env-file" in args:
    # What the real CLI reads when it is called: the file may be gone once it returns.
    path = args[args.index("--env-file") + 1]
    with open(path) as f:
        entry["env_file"] = {"path": path, "text": f.read(),
                             "mode": stat.S_IMODE(os.stat(path).st_mode)}
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(entry) + "\\n")
"""


# iptables: `-C` (is the rule there?) answers no, so the script inserts it; STUB_IPTABLES_FAIL
# makes the insert fail. systemctl: logged only.
IPTABLES_STUB = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"cmd": "iptables", "args": args}) + "\\n")
if "-C" in args:
    sys.exit(0 if os.environ.get("STUB_IPTABLES_HAS_RULE") else 1)
if os.environ.get("STUB_IPTABLES_FAIL"):
    sys.exit("iptables: Permission denied")
"""

SYSTEMCTL_STUB = """
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"cmd": "systemctl", "args": sys.argv[1:]}) + "\\n")
"""


# curl for the watchdog: /readyz answers as STUB_READYZ says ("ok", "503 <body>", or "refused":
# no connection); IMDS gives a token and an instance id. With --fail-with-body a 503's body is
# written and the exit status is 22, as curl's.
CURL_STUB = """
import json, os, sys
args = sys.argv[1:]
url = args[-1]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"cmd": "curl", "args": args}) + "\\n")
failing = any(a.startswith("-") and not a.startswith("--") and "f" in a for a in args)
if url.endswith("/api/token"):
    if os.environ.get("STUB_IMDS_FAIL"):  # a 401 page: with -f an exit status, else the page
        if failing:
            sys.exit(22)
        print("<html>401 Unauthorized</html>", end="")
        sys.exit(0)
    print("imds-token", end="")
elif url.endswith("/meta-data/instance-id"):
    assert "X-aws-ec2-metadata-token: imds-token" in args, args
    print(os.environ.get("STUB_INSTANCE_ID") or "i-0123456789abcdef0", end="")
else:
    assert url == "http://127.0.0.1:8080/readyz" and "--fail-with-body" in args, args
    # STUB_READYZ: one answer, or a "|"-separated sequence, one a call (the last repeats)
    answers = os.environ["STUB_READYZ"].split("|")
    count = os.environ["STUB_LOG"] + ".readyz"
    n = int(open(count).read()) if os.path.exists(count) else 0
    with open(count, "w") as f:
        f.write(str(n + 1))
    answer = answers[min(n, len(answers) - 1)]
    if answer == "refused":
        sys.exit(7)
    if answer != "ok":
        print(answer.split(" ", 1)[1], end="")
        sys.exit(22)
    print("ok", end="")
"""


# sleep: logged, not slept (the boot's waits between tries)
SLEEP_STUB = """
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"cmd": "sleep", "args": sys.argv[1:]}) + "\\n")
"""

# date: `date +%s` only (the boot's start, the watchdog's now). STUB_NOW when set: the
# watchdog's limits are tested to the second, not with room for a slow machine's seconds
# between the test's clock and the script's; the real time otherwise.
DATE_STUB = """
import os, sys, time
assert sys.argv[1:] == ["+%s"], sys.argv
print(os.environ.get("STUB_NOW") or int(time.time()))
"""


def boot(
    tmp: Path,
    values: dict[str, str],
    ecr_fail: str = "",
    ssm: dict[str, str] | None = None,
    iptables_fail: bool = False,
    iptables: bool = True,
    s3_fail: bool = False,
    readyz: str = "ok",
    imds_fail: bool = False,
    instance_id: str = "",
    hook_fail: bool = False,
) -> tuple[int, str, list[dict[str, Any]]]:
    """Run the rendered user data with `aws`, `docker`, `iptables`, `systemctl`, `curl`,
    `sleep` and `date` stand-ins (``readyz``: what the gateway's /readyz answers, CURL_STUB);
    /etc/geogate, /etc/systemd/system and /run/geogate under tmp. `iptables=False`: a PATH
    with no iptables at all (this machine's tools, less any iptables*)."""
    bash = shutil.which("bash")
    assert bash
    bin_ = tmp / "bin"
    bin_.mkdir(exist_ok=True)
    stubs = {
        "aws": AWS_STUB,
        "docker": DOCKER_STUB,
        "iptables": IPTABLES_STUB,
        "systemctl": SYSTEMCTL_STUB,
        "curl": CURL_STUB,
        "sleep": SLEEP_STUB,
        "date": DATE_STUB,
    }
    if not iptables:
        del stubs["iptables"]
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_ / name).chmod(0o755)
    path = os.environ["PATH"]
    if not iptables:
        tools = tmp / "tools"
        tools.mkdir(exist_ok=True)
        for d in path.split(os.pathsep):
            for tool in Path(d).glob("*") if Path(d).is_dir() else []:
                if not tool.name.startswith("ip") and not (tools / tool.name).exists():
                    (tools / tool.name).symlink_to(tool)
        path = str(tools)
    if not (bin_ / "python3").exists():
        (bin_ / "python3").symlink_to(sys.executable)  # the host's python3 (percent-encoding)
    script = render(USER_DATA.read_text(), values).replace("/etc/geogate", str(tmp / "etc"))
    script = script.replace("/run/geogate", str(tmp / "run"))
    script = script.replace("/etc/systemd/system", str(tmp / "systemd"))
    (tmp / "systemd").mkdir(exist_ok=True)
    (tmp / "user-data.sh").write_text(script)
    log = tmp / "calls.jsonl"
    log.unlink(missing_ok=True)
    Path(f"{log}.readyz").unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{bin_}:{path}",
        "STUB_LOG": str(log),
        "STUB_SSM": json.dumps(SSM if ssm is None else ssm),
        "STUB_ECR_FAIL": ecr_fail,
        "STUB_IPTABLES_FAIL": "1" if iptables_fail else "",
        "STUB_S3_FAIL": "1" if s3_fail else "",
        "STUB_READYZ": readyz,
        "STUB_IMDS_FAIL": "1" if imds_fail else "",
        "STUB_INSTANCE_ID": instance_id,
        "STUB_HOOK_FAIL": "1" if hook_fail else "",
    }
    p = subprocess.run(
        [bash, str(tmp / "user-data.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return p.returncode, p.stderr, calls


def _env_of(call: dict[str, Any]) -> dict[str, str]:
    """A `docker run`'s environment: its --env-file's lines (NAME=value, taken literally, as
    docker reads them), then its -e NAME=value arguments."""
    env: dict[str, str] = {}
    if "env_file" in call:
        for line in call["env_file"]["text"].splitlines():
            name, _, value = line.partition("=")
            env[name] = value
    args: list[str] = call["args"]
    for i, a in enumerate(args):
        if a == "-e":
            name, _, value = args[i + 1].partition("=")
            env[name] = value
    return env


def _gateway_run(calls: list[dict[str, Any]]) -> dict[str, Any]:
    (gateway,) = [c for c in calls if c["args"][:1] == ["run"] and "geogate-gateway" in c["args"]]
    return gateway


def test_ecr_login_in_each_registrys_own_region(tmp_path: Path) -> None:
    """A host in ap-southeast-1 pulling from eu-central-1's and us-east-1's ECR logs in to
    each registry with that registry's region, before any container is started."""
    rc, err, calls = boot(tmp_path, _values())
    assert rc == 0, err
    ecr = [c["args"] for c in calls if c["cmd"] == "aws" and c["args"][0] == "ecr"]
    assert sorted(a[a.index("--region") + 1] for a in ecr) == ["eu-central-1", "us-east-1"]
    logins = {c["args"][-1]: c["stdin"].strip() for c in calls if c["args"][:1] == ["login"]}
    assert logins == {
        "123456789012.dkr.ecr.eu-central-1.amazonaws.com": "pw-eu-central-1",
        "210987654321.dkr.ecr.us-east-1.amazonaws.com": "pw-us-east-1",
    }
    kinds = [c["args"][0] for c in calls if c["cmd"] == "docker"]
    assert kinds == ["login", "login", "run", "run"]


def test_one_login_per_registry_and_none_for_a_public_one(tmp_path: Path) -> None:
    same = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/geogate-backend:0.1.0"
    rc, err, calls = boot(tmp_path, _values(backend_image=same))
    assert rc == 0, err
    assert [c["args"][-1] for c in calls if c["args"][:1] == ["login"]] == [same.split("/")[0]]
    public = _values(
        gateway_image="public.ecr.aws/geogate/gateway:0.1.0", backend_image="ghcr.io/x/b:1"
    )
    rc, err, calls = boot(tmp_path, public)
    assert rc == 0, err
    assert not [c for c in calls if c["args"][:1] == ["login"] or c["args"][0] == "ecr"]


def test_a_failed_login_stops_the_boot_loudly(tmp_path: Path) -> None:
    """`|| true` hid it: the containers then failed to pull, or ran stale images."""
    rc, err, calls = boot(tmp_path, _values(), ecr_fail="us-east-1")
    assert rc != 0
    assert "geogate boot: failed at line" in err
    assert not [c for c in calls if c["args"][:1] == ["run"]]


def test_the_gateway_gets_both_tokens_and_a_url_that_keeps_the_redis_token(
    tmp_path: Path,
) -> None:
    """The Redis token percent-encoded in the URL ('#' would end the URL's password, '%41'
    would be read as 'A'), decoded back by redis-py as geogate hands it the URL; the ops
    token as GEOGATE_OPS__TOKEN, which geogate reads as ops.token."""
    from gateway.config_file import load_config

    rc, err, calls = boot(tmp_path, _values())
    assert rc == 0, err
    env = _env_of(_gateway_run(calls))
    url = env["GEOGATE_REDIS__URL"]
    assert urlsplit(url).hostname == _values()["redis_host"]
    assert urlsplit(url).port == 6379
    assert redis_url_parts(url)["password"] == SSM["/geogate/redis-auth-token"]
    assert json.loads(env["GEOGATE_OPS__TOKEN"]) == SSM["/geogate/ops-token"]  # (below)
    # The config the host wrote, with that environment, as the container loads it.
    example = render_example_config()
    (tmp_path / "gateway.toml").write_text(example)
    cfg = load_config(tmp_path / "gateway.toml", env=env)
    assert cfg.ops.token == SSM["/geogate/ops-token"]
    assert cfg.redis.url == url


def test_a_changed_gateway_config_is_a_new_fleet(tmp_path: Path) -> None:
    """The first gateway of a fleet seeds Redis with its file's routing config and every later
    one adopts Redis's: under one name for every config, the hosts of a refresh adopted the old
    document and a change (a model, slots, the regions' URLs) never took effect. The name is
    aws-<region>-<the first 12 hex digits of the SHA-256 of the file the gateway mounts>."""
    a = render_example_config()
    b = render_example_config(model_name="another-model")

    def deployment(config: str, run: str) -> str:
        rc, err, calls = boot(tmp_path / run, _values(gateway_config=config))
        assert rc == 0, err
        written = (tmp_path / run / "etc" / "gateway.toml").read_bytes()
        name = _env_of(_gateway_run(calls))["GEOGATE_REDIS__DEPLOYMENT"]
        assert name == f"aws-ap-southeast-{hashlib.sha256(written).hexdigest()[:12]}"
        return name

    for run in ("a1", "a2", "b"):
        (tmp_path / run).mkdir()
    first = deployment(a, "a1")
    assert deployment(a, "a2") == first  # a host of the same config joins the same fleet
    assert deployment(b, "b") != first
    assert re.fullmatch(r"aws-ap-southeast-[0-9a-f]{12}", first)


# The watchdog's clock (DATE_STUB): a fixed second, so that a streak or a boot begun N s
# before it is N s old to the script, exactly.
WATCHDOG_NOW = 1_700_000_000


def _watchdog(tmp: Path, readyz: str, failing_for_s: int | None) -> tuple[int, str, list[Any]]:
    """The booted host's watchdog run once at WATCHDOG_NOW, /readyz answering ``readyz``,
    after it had been failing for ``failing_for_s`` (None: it was not)."""
    since = tmp / "run" / "watchdog-since"
    since.unlink(missing_ok=True)
    if failing_for_s is not None:
        since.write_text(f"{WATCHDOG_NOW - failing_for_s}\n")
    log = tmp / "watchdog.jsonl"
    log.unlink(missing_ok=True)
    Path(f"{log}.readyz").unlink(missing_ok=True)  # the stub's count of /readyz answers
    env = {
        **os.environ,
        "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "STUB_READYZ": readyz,
        "STUB_NOW": str(WATCHDOG_NOW),
    }
    bash = shutil.which("bash")
    assert bash
    p = subprocess.run(
        [bash, str(tmp / "etc" / "watchdog.sh")], env=env, capture_output=True, text=True
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return p.returncode, p.stderr, calls


def test_the_watchdog_reports_a_host_whose_readyz_fails_15_minutes(tmp_path: Path) -> None:
    """The group checks EC2's status alone: the ALB's check replaced the whole host when its
    model server restarted (/readyz 503 for the minute or two of a model's load). The watchdog
    reports the host unhealthy after 15 minutes of failures, never for a drain."""
    rc, err, calls = boot(tmp_path, _values())
    assert rc == 0, err
    order = [(c["cmd"], c["args"]) for c in calls]
    enabled = order.index(("systemctl", ["enable", "--now", "geogate-watchdog.timer"]))
    assert {cmd for cmd, _ in order[:enabled]} <= {"systemctl", "curl"}, order[:enabled]
    timer = (tmp_path / "systemd" / "geogate-watchdog.timer").read_text()
    assert "OnUnitActiveSec=30" in timer and "WantedBy=timers.target" in timer

    def reported(calls: list[Any]) -> bool:
        health = [c["args"] for c in calls if c["cmd"] == "aws"]
        assert health in (
            [],
            [
                [
                    "autoscaling",
                    "set-instance-health",
                    "--region",
                    "ap-southeast-1",
                    "--instance-id",
                    "i-0123456789abcdef0",
                    "--health-status",
                    "Unhealthy",
                ]
            ],
        ), health
        return bool(health)

    since = tmp_path / "run" / "watchdog-since"
    # Before the host is in service (the end of its boot) the launch hook governs: no report,
    # and no /readyz asked; a group with no hook (made before it) gets one from 20 minutes on
    # (BOOT_MAX_S: the hook's 900 s, host_ready_timeout_s, and 5 minutes more).
    (tmp_path / "etc" / "in-service").rename(tmp_path / "etc" / "booting")
    started = tmp_path / "etc" / "boot-started"
    assert abs(int(started.read_text()) - time.time()) < 60  # written by the boot
    boot_max_s = HOST_READY_TIMEOUT_S + BOOT_MARGIN_S
    for booted_s, report in ((600, False), (boot_max_s - 1, False), (boot_max_s, True)):
        started.write_text(f"{WATCHDOG_NOW - booted_s}\n")
        rc, err, calls = _watchdog(tmp_path, "refused", None)
        assert rc == 0 and reported(calls) is report, err
        assert not [c for c in calls if c["cmd"] == "curl"]
        assert ("its boot has not finished" in err) is report
    (tmp_path / "etc" / "booting").rename(tmp_path / "etc" / "in-service")
    for readyz, failing_for_s, report in [
        ("ok", 2000, False),  # ready again: the streak ends
        ("503 not ready: no healthy, undrained upstream", None, False),  # a streak begins
        ("503 not ready: no healthy, undrained upstream", 120, False),  # a model's reload
        # READYZ_FAILING_S (900 s) to the second: the streak's length is now - since, both
        # from the stub's clock, reported from 900 on (-ge)
        ("refused", 899, False),
        ("refused", 900, True),
        ("503 not ready: no healthy, undrained upstream", 901, True),
        ("refused", 3600, True),  # a gateway gone for good
        # an operator's drain, or the gateway's shutdown: no failure, and the streak ends
        ("503 not ready: no healthy, undrained upstream (1 healthy but drained)", 3600, False),
        ("503 draining", 3600, False),
        # "undrained" is no drain: the word the first match took it for
        ("503 not ready: no healthy, undrained upstream", 900, True),
    ]:
        rc, err, calls = _watchdog(tmp_path, readyz, failing_for_s)
        assert rc == 0, err
        assert reported(calls) is report, (readyz, failing_for_s)
        ended = readyz == "ok" or readyz.endswith(("drained)", "draining"))
        assert since.exists() is not ended, (readyz, since.exists())
        if report:
            assert "geogate watchdog: /readyz failing for" in err


@pytest.mark.parametrize(
    "readyz",
    [
        "refused|503 not ready: no healthy, undrained upstream|ok",  # waited for, then ready
        "refused|503 not ready: no healthy, undrained upstream (1 healthy but drained)",
    ],
)
def test_a_host_enters_service_once_its_gateway_is_ready(tmp_path: Path, readyz: str) -> None:
    """The group's launch hook holds a new host out of service until the boot completes it,
    at the gateway's first ready /readyz (or a drained one: the gateway is up, the fleet it
    joined drained): under EC2 checks an instance refresh counted the new host at the end of
    its grace and ended the old one, model loaded or not."""
    rc, err, calls = boot(tmp_path, _values(), readyz=readyz)
    assert rc == 0, err
    order = [(c["cmd"], c["args"]) for c in calls]
    runs = [i for i, (cmd, args) in enumerate(order) if cmd == "docker" and args[0] == "run"]
    readied = [i for i, (cmd, args) in enumerate(order) if args[-1].endswith(":8080/readyz")]
    # asked until ready (or drained), then no more
    assert len(readied) == len(readyz.split("|")) and min(readied) > max(runs)
    assert order[-1] == (
        "aws",
        [
            "autoscaling", "complete-lifecycle-action", "--region", "ap-southeast-1",
            "--auto-scaling-group-name", "geogate-ap-southeast-gpu",
            "--lifecycle-hook-name", "ready",
            "--instance-id", "i-0123456789abcdef0", "--lifecycle-action-result", "CONTINUE",
        ],
    )  # fmt: skip
    assert (tmp_path / "etc" / "in-service").exists()  # the watchdog's from now on


@pytest.mark.parametrize(("imds_fail", "instance_id"), [(True, ""), (False, "<html>oops")])
def test_a_boot_with_no_instance_id_stops_before_anything_runs(
    tmp_path: Path, imds_fail: bool, instance_id: str
) -> None:
    """The id names the host in its reports to its group: an IMDS error page would be
    written as the id (curl without -f takes any answer), and every report would fail. No
    id, no boot (the launch hook then abandons the host, and the group replaces it)."""
    rc, err, calls = boot(tmp_path, _values(), imds_fail=imds_fail, instance_id=instance_id)
    assert rc != 0 and "geogate boot:" in err, err
    assert not [c for c in calls if c["cmd"] == "docker"]
    assert not (tmp_path / "etc" / "instance-id").exists()


def test_a_launch_hook_that_cannot_be_completed_is_no_boot_error(tmp_path: Path) -> None:
    """A group made before the hook has none to complete: tried five times, then the host
    serves and its watchdog takes over; the boot does not fail for it."""
    rc, err, calls = boot(tmp_path, _values(), hook_fail=True)
    assert rc == 0, err
    hooks = [c for c in calls if c["args"][:2] == ["autoscaling", "complete-lifecycle-action"]]
    assert len(hooks) == 5 and err.count("could not complete the launch hook") == 5
    assert [c["args"] for c in calls if c["cmd"] == "sleep"][-4:] == [["5"], ["10"], ["15"], ["20"]]
    assert calls[-1]["args"][:2] == ["autoscaling", "complete-lifecycle-action"]  # no last sleep
    assert (tmp_path / "etc" / "in-service").exists()


def test_both_containers_log_to_rotated_files(tmp_path: Path) -> None:
    """Docker's default driver (json-file) grows without a bound: a chatty or failing model
    server filled the root volume, and the host stopped."""
    rc, err, calls = boot(tmp_path, _values())
    assert rc == 0, err
    runs = [c["args"] for c in calls if c["cmd"] == "docker" and c["args"][:1] == ["run"]]
    assert len(runs) == 2
    for args in runs:
        opts = [args[i + 1] for i, a in enumerate(args) if a == "--log-opt"]
        assert args[args.index("--log-driver") + 1] == "local", args
        assert {"max-size=100m", "max-file=5"} <= set(opts), args


def test_the_tokens_are_not_on_the_docker_command_line(tmp_path: Path) -> None:
    """`docker run -e NAME=value` put both tokens in the docker CLI's argv, which any user of
    the host reads in /proc/<pid>/cmdline: they go in an env file on /run (tmpfs), mode 0600,
    removed once `docker run` returns."""
    rc, err, calls = boot(tmp_path, _values())
    assert rc == 0, err
    secrets = [*SSM.values(), quote(SSM["/geogate/redis-auth-token"], safe="")]
    for call in calls:
        for arg in call["args"]:
            assert not [t for t in secrets if t in arg], f"a token in {call['cmd']}'s argv"
    gateway = _gateway_run(calls)
    env_file = gateway["env_file"]
    assert env_file["path"].startswith(str(tmp_path / "run") + "/")  # /run/geogate on a host
    assert env_file["mode"] == 0o600
    assert not Path(env_file["path"]).exists()  # removed after `docker run`
    assert not list((tmp_path / "run").iterdir())
    env = _env_of(gateway)
    assert json.loads(env["GEOGATE_OPS__TOKEN"]) == SSM["/geogate/ops-token"]
    assert (
        redis_url_parts(env["GEOGATE_REDIS__URL"])["password"] == SSM["/geogate/redis-auth-token"]
    )
    # The user data itself runs no command with a token in its arguments: printf is bash's.
    script = USER_DATA.read_text()
    assert "-e GEOGATE_OPS__TOKEN" not in script and "-e GEOGATE_REDIS__URL" not in script


@pytest.mark.parametrize(
    "token", ["[k3Yq9-0123456789abc", "{k3Yq9-0123456789abc", '"quoted"-token-0123']
)
def test_an_ops_token_that_starts_as_json_does_is_the_gateways_token(
    tmp_path: Path, token: str
) -> None:
    """geogate reads an override starting with [ { or " as JSON: such a token, passed as it
    was, stopped every gateway at start. The boot passes it as a JSON string."""
    from gateway.config_file import load_config

    rc, err, calls = boot(tmp_path, _values(), ssm={**SSM, "/geogate/ops-token": token})
    assert rc == 0, err
    (tmp_path / "gateway.toml").write_text(render_example_config())
    cfg = load_config(tmp_path / "gateway.toml", env=_env_of(_gateway_run(calls)))
    assert cfg.ops.token == token


def test_a_token_with_a_line_break_stops_the_boot(tmp_path: Path) -> None:
    """An env file holds one NAME=value a line: a line break would cut the token there."""
    ssm = {**SSM, "/geogate/ops-token": "ops-0123\nGEOGATE_OPS__HOST=0.0.0.0"}
    rc, err, calls = boot(tmp_path, _values(), ssm=ssm)
    assert rc != 0
    assert "a token holds a line break" in err
    assert not [c for c in calls if c["args"][:1] == ["run"] and "geogate-gateway" in c["args"]]


def render_example_config(model_name: str = "m") -> str:
    from tests.deploy.test_terraform import _render

    template = (EXAMPLE / "gateway.toml.tftpl").read_text()
    regions = {"ap-southeast": {"latitude": 1.35, "longitude": 103.82}}
    return _render(
        template,
        {
            "region_id": "ap-southeast",
            "vpc_cidr": "10.30.0.0/16",
            "regions": regions,
            "domain": "example.com",
            "model_name": model_name,
        },
    )


def test_the_boot_script_passes_bash_n_and_copies_the_model_when_asked(tmp_path: Path) -> None:
    rc, err, calls = boot(tmp_path, _values(model_s3_uri="s3://models/m/"))
    assert rc == 0, err
    syntax = subprocess.run(["bash", "-n", str(tmp_path / "user-data.sh")], capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    assert ["s3", "sync", "--only-show-errors", "s3://models/m/", "/opt/models/m"] in [
        c["args"] for c in calls if c["cmd"] == "aws"
    ]
    # ...and only then: without model_s3_uri the model is the AMI's or the volume's
    (tmp_path / "none").mkdir()
    rc, err, calls = boot(tmp_path / "none", _values(model_s3_uri=""))
    assert rc == 0, err
    assert not [c for c in calls if c["cmd"] == "aws" and c["args"][:1] == ["s3"]]


def test_the_renderer_matches_terraform(tmp_path: Path) -> None:
    """The renderer above against Terraform's own templatefile() (`terraform console` needs
    no provider), where terraform is installed; scripts/dev does not install it."""
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.skip("terraform is not installed: the renderer is checked against it elsewhere")
    shutil.copy(USER_DATA, tmp_path / "t.tftpl")
    for values in (_values(), _values(model_s3_uri="s3://models/m/")):
        hcl = ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
        p = subprocess.run(
            [terraform, "console"],
            input=f'jsonencode(templatefile("t.tftpl", {{{hcl}}}))\n',
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1"},
        )
        assert p.returncode == 0, p.stderr
        assert json.loads(json.loads(p.stdout)) == render(USER_DATA.read_text(), values)


# --- no IMDS for the containers -------------------------------------------------------------

IMDS_RULE = "OUTPUT -d 169.254.169.254/32 -m owner --uid-owner {uid} -j REJECT"


def _image_uid(dockerfile: Path) -> int:
    """The uid the image's last stage runs as: its USER, created by `useradd --uid N`."""
    text = dockerfile.read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    (uid,) = re.findall(rf"useradd [^\n]*--uid (\d+)[^\n]* {re.escape(user)}$", text, re.M)
    return int(uid)


def test_the_containers_cannot_reach_imds_from_before_they_start(tmp_path: Path) -> None:
    """Both containers run with --network host, where the hop limit of 1 does not stop them:
    the instance role's credentials were theirs for a GET on 169.254.169.254. The boot rejects
    their uid's packets to IMDS before either `docker run`, runs them as that uid (not
    whatever an image says) without new privileges, and sets the rule again on every boot
    before docker.service restarts them. Root's boot steps keep IMDS (the rule's uid only)."""
    from tests.deploy.test_dockerfile import DOCKER

    uids = {_image_uid(DOCKER / f"Dockerfile.{n}") for n in ("gateway", "backend")}
    assert uids == {10001}
    rule = IMDS_RULE.format(uid=10001).split()
    rc, err, calls = boot(tmp_path, _values())
    assert rc == 0, err
    order = [(c["cmd"], c["args"]) for c in calls]
    inserted = order.index(("iptables", ["-w", "-I", *rule]))
    runs = [i for i, (cmd, args) in enumerate(order) if cmd == "docker" and args[0] == "run"]
    assert len(runs) == 2 and inserted < min(runs)
    images = (_values()["gateway_image"], _values()["backend_image"])
    for i in runs:
        args = order[i][1]
        (image,) = [j for j, a in enumerate(args) if a in images]
        head = args[:image]  # docker's options, not the container's arguments
        assert head[head.index("--user") + 1] == "10001:10001", args
        assert head[head.index("--security-opt") + 1] == "no-new-privileges", args
        assert head[head.index("--network") + 1] == "host"
    # Every later boot: a unit ordered before docker.service, required by it, running the
    # same script; enabled.
    unit = tmp_path / "systemd" / "geogate-imds-block.service"
    text = unit.read_text()
    assert "Before=docker.service" in text and "RequiredBy=docker.service" in text
    assert "Type=oneshot" in text and "RemainAfterExit=yes" in text
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", text, re.M)
    assert ("systemctl", ["enable", unit.name]) in order
    # The script adds the rule once, however often it runs.
    script = exec_start.split()[-1]
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    log = tmp_path / "again.jsonl"
    for has_rule in ("1", ""):
        p = subprocess.run(
            exec_start.split(),
            env={**env, "STUB_LOG": str(log), "STUB_IPTABLES_HAS_RULE": has_rule},
            capture_output=True,
            text=True,
        )
        assert p.returncode == 0, p.stderr
    again = [json.loads(line)["args"] for line in log.read_text().splitlines()]
    assert again == [["-w", "-C", *rule], ["-w", "-C", *rule], ["-w", "-I", *rule]]
    assert script.startswith(str(tmp_path / "etc"))  # /etc/geogate on a host


def test_a_failed_imds_rule_stops_the_boot_before_any_container(tmp_path: Path) -> None:
    rc, err, calls = boot(tmp_path, _values(), iptables_fail=True)
    assert rc != 0
    assert "geogate boot: failed at line" in err
    assert not [c for c in calls if c["cmd"] == "docker" and c["args"][0] == "run"]
    # A host without iptables (not the Deep Learning AMI's Docker) stops too.
    (tmp_path / "none").mkdir()
    rc, err, calls = boot(tmp_path / "none", _values(), iptables=False)
    assert rc != 0
    assert "geogate boot: no iptables" in err
    assert not [c for c in calls if c["cmd"] == "docker" and c["args"][0] == "run"]


def test_the_backend_serves_the_configured_model_name(tmp_path: Path) -> None:
    """The backend's `docker run` as the user data gives it, run through the image's own
    entrypoint (Dockerfile.backend): the model is served as model_name, the name the
    gateway's upstream lists."""
    from tests.deploy.test_dockerfile import DOCKER, run_image, served_model_name

    rc, err, calls = boot(tmp_path, _values(model_name="llama-3.1-8b-instruct"))
    assert rc == 0, err
    (run,) = [
        c["args"] for c in calls if c["args"][:1] == ["run"] and "geogate-backend" in c["args"]
    ]
    image = run.index(_values()["backend_image"])
    env = _env_of({"args": run[:image]})
    argv, execd = run_image(
        DOCKER / "Dockerfile.backend", tmp_path / "image", env, run[image + 1 :]
    )
    assert served_model_name(argv) == "llama-3.1-8b-instruct" and execd
    assert argv[argv.index("--model") + 1] == "/model"


def test_the_user_data_stays_under_ec2s_16_kb(tmp_path: Path) -> None:
    """EC2 refuses user data over 16 KB (before base64): rendered as the example renders it,
    with its gateway config and the longest values it is likely to get, and gzipped, as the
    launch template sends it (cloud-init unpacks it): 15 KB before the watchdog's, plain."""
    values = _values(
        gateway_config=render_example_config("llama-3.1-8b-instruct"),
        model_s3_uri="s3://my-models/llama-3.1-8b-instruct/",
        model_path="/opt/models/llama-3.1-8b-instruct",
    )
    rendered = render(USER_DATA.read_text(), values).encode()
    size = len(gzip.compress(rendered, mtime=0))
    assert size < 16 * 1024 - 8192, size  # with room for a much longer config
    hosts = (REGION / "hosts.tf").read_text()
    assert 'user_data = base64gzip(templatefile("${path.module}/user_data.sh.tftpl"' in hosts


def test_the_gateway_gets_the_geoip_database_when_one_is_named(tmp_path: Path) -> None:
    # Without one, every client on AWS was at the default location: no residency rule could
    # apply, and the per-country panels said "unknown".
    uri = "s3://my-geoip/GeoLite2-City.mmdb"
    rc, err, calls = boot(tmp_path, _values(geoip_s3_uri=uri))
    assert rc == 0, err
    db = tmp_path / "etc" / "geoip" / "City.mmdb"
    assert db.read_bytes() == b"mmdb from " + uri.encode()
    assert oct(db.stat().st_mode & 0o777) == "0o644"  # the gateway runs as uid 10001
    assert not list(db.parent.glob(".*")), "copied to a new name, then renamed over"
    copies = [c["args"] for c in calls if c["cmd"] == "aws" and c["args"][:2] == ["s3", "cp"]]
    assert copies == [["s3", "cp", "--only-show-errors", uri, f"{db.parent}/.City.mmdb.new"]]
    assert ["enable", "--now", "geogate-geoip.timer"] in [
        c["args"] for c in calls if c["cmd"] == "systemctl"
    ]
    gateway = _gateway_run(calls)
    assert _env_of(gateway)["GEOGATE_GEOIP__DATABASE"] == "/etc/geogate/geoip/City.mmdb".replace(
        "/etc/geogate", str(tmp_path / "etc")
    )
    assert f"{db.parent}:{db.parent}:ro" in gateway["args"]
    # None named: no copy, no timer, no variable, and the boot still runs.
    (tmp_path / "none").mkdir()
    rc, err, calls = boot(tmp_path / "none", _values())
    assert rc == 0, err
    assert not [c for c in calls if c["cmd"] == "aws" and c["args"][:2] == ["s3", "cp"]]
    assert "GEOGATE_GEOIP__DATABASE" not in _env_of(_gateway_run(calls))


def test_a_geoip_copy_that_fails_stops_the_boot_before_any_container(tmp_path: Path) -> None:
    rc, err, calls = boot(tmp_path, _values(geoip_s3_uri="s3://my-geoip/x.mmdb"), s3_fail=True)
    assert rc != 0 and "geogate boot: failed at line" in err
    assert not [c for c in calls if c["cmd"] == "docker" and c["args"][:1] == ["run"]]
