"""deploy/terraform/aws, the GPU hosts: what a plan would do to them, read from the .tf files
(python-hcl2). Their boot script, run, is test_aws_boot.py's.

Not exercised here (no AWS): the instance refresh itself, the ALB's timeouts, the security
groups' effect, the real `aws`/`docker` CLIs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import hcl2
import pytest

from gateway import defaults as d
from tests.deploy.conftest import DEPLOY

AWS = DEPLOY / "terraform" / "aws"
REGION = AWS / "modules" / "region"
EXAMPLE = AWS / "example"
USER_DATA = REGION / "user_data.sh.tftpl"


def _resources(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body of every resource in the module's .tf files."""
    out = {}
    for p in sorted(path.glob("*.tf")):
        for block in hcl2.loads(p.read_text()).get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    out[(kind.strip('"'), name.strip('"'))] = body
    return out


def _locals(path: Path) -> dict[str, Any]:
    """name -> value of every local in the module's .tf files (every `locals` block)."""
    out: dict[str, Any] = {}
    for p in sorted(path.glob("*.tf")):
        for block in hcl2.loads(p.read_text()).get("locals", []):
            out.update(block)
    return out


# --- item: instance refresh, AMI ------------------------------------------------------------


def test_a_refresh_launches_the_new_host_before_it_ends_the_old() -> None:
    """One host per region: min 100 % keeps it until its replacement is healthy, max 200 %
    lets the replacement start beside it (min 50 / max 100 ended the only host first)."""
    asg = _resources(REGION)[("aws_autoscaling_group", "gpu")]
    (refresh,) = asg["instance_refresh"]
    (prefs,) = refresh["preferences"]
    assert prefs["min_healthy_percentage"] == 100
    assert prefs["max_healthy_percentage"] == 200
    # AWS's rule: max - min at most 100.
    assert prefs["max_healthy_percentage"] - prefs["min_healthy_percentage"] <= 100


def test_the_ami_is_pinned_not_read_from_latest() -> None:
    """An AMI read from the DLAMI's `latest` SSM parameter at plan time changes the launch
    template, and so replaces every host, on an ordinary apply."""
    lt = _resources(REGION)[("aws_launch_template", "gpu")]
    assert lt["image_id"] == "${var.ami_id}"
    text = "\n".join(p.read_text() for p in REGION.glob("*.tf"))
    assert 'data "aws_ssm_parameter"' not in text
    # Each region's own AMI in the example (AMI ids are regional).
    example = (EXAMPLE / "main.tf").read_text()
    for rid in ("eu-central", "us-east", "ap-southeast"):
        assert f'ami_id = var.regions["{rid}"].ami_id' in re.sub(r" +", " ", example), rid


# --- item: ALB idle timeout -----------------------------------------------------------------


def test_the_alb_lets_go_of_a_connection_before_the_gateway_does() -> None:
    """An ALB idle timeout at or above the target's keep-alive reuses connections the gateway
    is closing: intermittent 502s. Above the gateway's own stream timeouts, so that its error
    event (or 504) reaches the client before the ALB cuts the connection."""
    alb = _resources(REGION)[("aws_lb", "gateway")]
    idle = alb["idle_timeout"]
    template = (EXAMPLE / "gateway.toml.tftpl").read_text()
    keepalive = float(re.search(r"^keepalive_s = (\d+)", template, re.M).group(1))  # type: ignore[union-attr]
    assert idle < keepalive  # the gateway's, as the example configures it
    # A non-streaming answer comes whole, up to timeouts.response_s after the request: the
    # ALB must not cut that silence (nor a stream's first-byte wait, nor its idle gaps).
    assert idle > max(d.IDLE_TIMEOUT_S, d.FIRST_BYTE_TIMEOUT_S, d.RESPONSE_TIMEOUT_S)


def test_the_alb_refuses_ambiguous_framing_itself() -> None:
    # granian and hypercorn take framings gateway.h1 refuses (README): the ALB must not pass
    # them on ("defensive", AWS's default, passes ambiguous ones).
    assert _resources(REGION)[("aws_lb", "gateway")]["desync_mitigation_mode"] == '"strictest"'


def test_the_alb_waits_for_the_longest_request_before_the_host_goes(tmp_path: Path) -> None:
    """The autoscaling group deregisters a host, waits the target group's deregistration
    delay, and only then terminates it (the gateway's SIGTERM drain comes after): a request
    still in flight when the delay ends is cut. 35 s (the drain's 30 s) cut every stream and
    non-streaming answer that ran longer; the gateway allows a request timeouts.total_s, a
    non-streaming answer timeouts.response_s after its body (server.body_timeout_s) and its
    connects."""
    from gateway.config_file import load_config
    from tests.deploy.test_aws_boot import render_example_config

    tg = _resources(REGION)[("aws_lb_target_group", "gateway")]
    delay = tg["deregistration_delay"]
    assert delay <= 3600  # the ALB's maximum
    # The example's hosts run the defaults (no [timeouts] in gateway.toml.tftpl): checked
    # against the config they load, and against the defaults themselves.
    (tmp_path / "gateway.toml").write_text(render_example_config())
    cfg = load_config(tmp_path / "gateway.toml", env={})
    t = cfg.timeouts
    assert (t.total_s, t.response_s) == (d.TOTAL_TIMEOUT_S, d.RESPONSE_TIMEOUT_S)
    answer = cfg.server.body_timeout_s + cfg.retry.max_attempts * t.connect_s + t.response_s
    assert delay >= max(t.total_s, answer)
    asg = _resources(REGION)[("aws_autoscaling_group", "gpu")]
    assert asg["target_group_arns"] == ["${aws_lb_target_group.gateway.arn}"]


# --- item: who reaches 8000 and 9180 --------------------------------------------------------


def test_ports_8000_and_9180_only_from_prometheus() -> None:
    rules = {
        name: body
        for (kind, name), body in _resources(REGION).items()
        if kind == "aws_vpc_security_group_ingress_rule"
        and "aws_security_group.gpu.id" in str(body["security_group_id"])
    }
    sources = {}
    for name, body in rules.items():
        if name == "gpu_from_alb":
            assert body["from_port"] == body["to_port"] == 8080
            continue
        sources[name] = str(body.get("for_each")) + str(body.get("referenced_security_group_id"))
    assert set(sources) == {"gpu_metrics", "gpu_metrics_from_prometheus_sg"}
    assert "var.prometheus_cidrs" in sources["gpu_metrics"]
    assert "var.prometheus_security_group_id" in sources["gpu_metrics_from_prometheus_sg"]
    variables = (REGION / "variables.tf").read_text()
    block = variables[variables.index('variable "prometheus_cidrs"') :]
    block = block[: block.index("\n}\n")]
    assert "default" not in block  # no broad default: the operator names Prometheus
    assert ">= 24" in block  # the validation refuses anything wider than a /24
    assert '!strcontains(c, ":")' in block  # and IPv6 (the rules are cidr_ipv4)
    example = (EXAMPLE / "terraform.tfvars.example").read_text()
    (line,) = [ln for ln in example.splitlines() if ln.startswith("prometheus_cidrs")]
    assert all(int(c.split("/")[1]) >= 24 for c in re.findall(r'"([0-9./]+)"', line)), line


# --- item: the instance role: no IMDS for the containers, no broad grants -------------------


def _unquote(value: Any) -> Any:
    """python-hcl2 keeps a string literal's quotes ('"x"'); expressions come as '${...}'."""
    if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _data(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body of every data block in the module's .tf files."""
    out = {}
    for p in sorted(path.glob("*.tf")):
        for block in hcl2.loads(p.read_text()).get("data", []):
            for kind, named in block.items():
                for name, body in named.items():
                    out[(kind.strip('"'), name.strip('"'))] = body
    return out


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A policy document's statements, its dynamic ones' content included."""
    out = list(document.get("statement", []))
    for dynamic in document.get("dynamic", []):
        for body in dynamic.values():
            out += body["content"]
    return out


def test_the_role_reads_two_parameters_and_decrypts_only_through_ssm() -> None:
    """AmazonSSMManagedInstanceCore gave the role ssm:GetParameter(s) on "*", so the boot
    statement's two names limited nothing; Session Manager needs only the agent's own
    actions (AWS's minimal Session Manager instance policy). kms:Decrypt with the key that
    also encrypts EBS and Redis: through SSM in this region only."""
    resources = _resources(REGION)
    attached = [
        _unquote(body["policy_arn"])
        for (kind, _), body in resources.items()
        if kind == "aws_iam_role_policy_attachment"
    ]
    # No managed policy: AmazonSSMManagedInstanceCore and its like grant ssm:GetParameter(s)
    # on "*", AmazonEC2ContainerRegistryReadOnly every repository; each grant names its own.
    assert attached == []
    docs = {name: body for (kind, name), body in _data(REGION).items()}
    inline = {
        _unquote(body["name"]): body["policy"]
        for (kind, _), body in resources.items()
        if kind == "aws_iam_role_policy"
    }
    assert inline == {
        "boot": "${data.aws_iam_policy_document.boot.json}",
        "ecr-pull": "${data.aws_iam_policy_document.ecr.json}",
        "session-manager": "${data.aws_iam_policy_document.session_manager.json}",
    }
    session = _statements(docs["session_manager"])
    assert sorted(_unquote(a) for s in session for a in s["actions"]) == sorted(
        [
            "ssm:UpdateInstanceInformation",
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel",
        ]
    )
    # Every parameter read names its parameter: no wildcard action, no "*" resource.
    boot = _statements(docs["boot"])
    for s in boot + session:
        actions = [_unquote(a) for a in s["actions"]]
        assert not [a for a in actions if "*" in a], actions
        if [a for a in actions if a.startswith("ssm:Get")]:
            assert actions == ["ssm:GetParameter"]
            assert [_unquote(r) for r in s["resources"]] == [
                "arn:aws:ssm:*:*:parameter${var.redis_auth_ssm_parameter}",
                "arn:aws:ssm:*:*:parameter${var.ops_token_ssm_parameter}",
            ]
    # The boot's launch hook and the watchdog's report: its own group only (by name; the
    # group's ARN comes after the launch template), EC2's status the group's own check.
    (own,) = [s for s in boot if "autoscaling:SetInstanceHealth" in str(s["actions"])]
    assert sorted(_unquote(a) for a in own["actions"]) == [
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:SetInstanceHealth",
    ]
    assert [_unquote(r) for r in own["resources"]] == [
        "arn:aws:autoscaling:${data.aws_region.current.name}:*:autoScalingGroup:*"
        ":autoScalingGroupName/${local.group_name}"
    ]
    group = resources[("aws_autoscaling_group", "gpu")]
    assert _unquote(group["name"]) == "${local.group_name}"
    assert _unquote(group["health_check_type"]) == "EC2"
    (hook,) = group["initial_lifecycle_hook"]
    assert _unquote(hook["lifecycle_transition"]) == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert (_unquote(hook["name"]), _unquote(hook["default_result"])) == (
        "${local.ready_hook}",
        "ABANDON",
    )
    # as long as the ALB's check allowed a boot; Terraform does not wait for the hosts; a
    # change to the hook does not replace the group (a new group: every host at once)
    ready = "${local.host_ready_timeout_s}"  # one figure, also the boot's (test_aws_boot.py)
    assert hook["heartbeat_timeout"] == group["health_check_grace_period"] == ready
    assert _locals(REGION)["host_ready_timeout_s"] == 900
    assert _unquote(group["wait_for_capacity_timeout"]) == "0"
    (lifecycle,) = group["lifecycle"]
    assert lifecycle["ignore_changes"] == ["initial_lifecycle_hook"]
    (decrypt,) = [s for s in boot if [_unquote(a) for a in s["actions"]] == ["kms:Decrypt"]]
    (condition,) = decrypt["condition"]
    assert _unquote(condition["test"]) == "StringEquals"
    assert _unquote(condition["variable"]) == "kms:ViaService"
    assert [_unquote(v) for v in condition["values"]] == [
        "ssm.${data.aws_region.current.name}.amazonaws.com"
    ]


def test_imds_is_ipv4_only_the_address_the_boot_blocks() -> None:
    """The user data's iptables rule covers 169.254.169.254; IMDS's IPv6 endpoint would be
    another way in for the containers."""
    lt = _resources(REGION)[("aws_launch_template", "gpu")]
    (meta,) = lt["metadata_options"]
    assert _unquote(meta["http_tokens"]) == "required"
    assert _unquote(meta["http_protocol_ipv6"]) == "disabled"
    assert "169.254.169.254/32" in USER_DATA.read_text()


# --- Terraform itself, on the module's variables (no provider needed) -----------------------

TF_ENV = {"TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
DUMMY = {"string": "x", "number": 1, "list(string)": []}
VALID = {
    "ami_id": "ami-0123456789abcdef0",
    "ops_token": "0123456789abcdef",
    "redis_auth_token": "0123456789abcdef",
    "redis_auth_ssm_parameter": "/geogate/redis-auth-token",
    "ops_token_ssm_parameter": "/geogate/ops-token",
    "model_path": "/opt/models/m",
}


def _region_variables() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for block in hcl2.loads((REGION / "variables.tf").read_text())["variable"]:
        out.update({k.strip('"'): v for k, v in block.items()})
    return out


def terraform_with_region_variables(
    tmp: Path, values: dict[str, Any], *command: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Terraform in a root module made of the region module's variables.tf alone (no
    resource, so no provider to download): its validations run on `plan`, and `console`
    evaluates the module's own expressions with these values. Required variables not in
    `values` get a valid stand-in. Skips where terraform is not installed."""
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.skip("terraform is not installed")
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(REGION / "variables.tf", tmp / "variables.tf")
    given = {
        name: VALID.get(name, DUMMY[str(v["type"]).strip("${}")])
        for name, v in _region_variables().items()
        if "default" not in v
    }
    (tmp / "terraform.tfvars.json").write_text(json.dumps({**given, **values}))
    env = {**os.environ, **TF_ENV}
    if command[0] == "plan":
        init = [terraform, "init", "-input=false", "-no-color"]
        p = subprocess.run(init, cwd=tmp, capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode == 0, p.stdout + p.stderr
    return subprocess.run(
        [terraform, *command],
        cwd=tmp,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


SSM_NAMES_OK = ("/geogate/redis-auth-token", "/geogate/ops-token", "/a", "/prod.eu/geo_gate-1")
SSM_NAMES_REFUSED = ("geogate/ops-token", "ops-token", "", "/geogate/*", "/geogate/", "//x", "/a b")


def test_an_ssm_parameter_name_must_be_a_path_without_wildcards() -> None:
    """The boot statement grants "arn:aws:ssm:*:*:parameter<name>": without the leading "/"
    it names no parameter (the boot fails on AccessDenied), with a wildcard it grants more
    than one. The validation's own regex, as RE2 and Python read it alike (a character class
    and groups only)."""
    variables = _region_variables()
    for name in ("redis_auth_ssm_parameter", "ops_token_ssm_parameter"):
        (validation,) = variables[name]["validation"]
        m = re.fullmatch(rf'\$\{{can\(regex\("(.+)", var\.{name}\)\)\}}', validation["condition"])
        assert m, validation["condition"]
        pattern = re.compile(m.group(1))
        assert [n for n in SSM_NAMES_OK if not pattern.search(n)] == [], name
        assert [n for n in SSM_NAMES_REFUSED if pattern.search(n)] == [], name


@pytest.mark.parametrize("name", ["redis_auth_ssm_parameter", "ops_token_ssm_parameter"])
def test_terraform_refuses_an_ssm_parameter_name_without_the_slash(
    tmp_path: Path, name: str
) -> None:
    ok = terraform_with_region_variables(tmp_path / "ok", {}, "plan", "-input=false", "-no-color")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = terraform_with_region_variables(
        tmp_path / "bad", {name: "geogate/token"}, "plan", "-input=false", "-no-color"
    )
    assert bad.returncode != 0
    assert "Invalid value for variable" in bad.stderr
    assert f"{name}: a parameter path" in " ".join(bad.stderr.split())


# What the plan refuses of the values written into the boot script (root's bash) or the
# gateway's config, and of the two tokens: variable -> (values it takes, values it refuses).
# Before these validations every refused value below passed `terraform plan`: an ops token
# with a space stopped every host's gateway at start (the ALB failed them all, the
# autoscaling group replaced them in a loop), s3://my-models granted the hosts every object of
# every bucket named my-models*, a quote in model_name broke every host's gateway.toml, and a
# Redis token ElastiCache refuses failed the apply halfway.
VARIABLE_CASES: dict[str, tuple[list[str], list[str]]] = {
    "ops_token": (
        ["0123456789abcdef", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "[starts-like-json]"],
        [
            "correct horse battery staple",
            "0123456789abcdefé",
            "0123456789abcde",
            "0123456789abcdef\n",
        ],
    ),
    "redis_auth_token": (
        ["0123456789abcdef", "Tk#1&x$y^z<w>v!-" + "a" * 112],
        [
            "0123456789abcde",
            "0123456789abcdef%",
            "0123456789abcdef?",
            "a@b/0123456789abc",
            "a" * 129,
        ],
    ),
    "model_s3_uri": (
        ["", "s3://my-models/", "s3://my-models/llama-3.1-8b-instruct/", "s3://a.b-c/x/y_z/"],
        [
            "s3://my-models",
            "s3://my-models/llama",
            "https://my-models.s3.amazonaws.com/m/",
            's3://my-models/"$(id)"/',
            "s3://my-models//",
        ],
    ),
    "model_path": (
        ["/opt/models/llama-3.1-8b-instruct", "/m"],
        ["opt/models/m", "/opt/models/m:rw", "/opt/my models", "/opt/$(id)", "/"],
    ),
    "model_name": (
        ["llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", "qwen2.5:7b"],
        ['llama"3', "llama 3", "$(id)", "", "-x"],
    ),
    "gateway_image": (
        [
            "123456789012.dkr.ecr.eu-central-1.amazonaws.com/geogate-gateway:0.1.0",
            "ghcr.io/acme/geogate-gateway@sha256:" + "0" * 64,
        ],
        ['geogate"; id; "', "geogate gateway", ""],
    ),
    "backend_image": (["geogate-backend:0.1.0"], ["$(id)", "a b", ""]),
    "region_id": (
        ["ap-southeast", "eu-central", "us-east-2"],
        ["Ap-Southeast", "ap_southeast", "ap--southeast", "-ap", "ap-", "ap southeast", ""],
    ),
}


def _validation_message(name: str) -> str:
    (validation,) = _region_variables()[name]["validation"]
    return str(_unquote(validation["error_message"])).split(":", 1)[0]


def test_terraform_refuses_what_would_break_the_hosts(tmp_path: Path) -> None:
    ok = {name: values[0] for name, (values, _) in VARIABLE_CASES.items()}
    for i in range(max(len(v) for v, _ in VARIABLE_CASES.values())):
        values = {name: v[min(i, len(v) - 1)] for name, (v, _) in VARIABLE_CASES.items()}
        p = terraform_with_region_variables(
            tmp_path / f"ok{i}", values, "plan", "-input=false", "-no-color"
        )
        assert p.returncode == 0, (values, p.stdout + p.stderr)
    for i in range(max(len(r) for _, r in VARIABLE_CASES.values())):
        bad = {name: r[i] for name, (_, r) in VARIABLE_CASES.items() if i < len(r)}
        p = terraform_with_region_variables(
            tmp_path / f"bad{i}", {**ok, **bad}, "plan", "-input=false", "-no-color"
        )
        assert p.returncode != 0, bad
        err = " ".join(p.stderr.split())
        # One error per variable, each its own validation's (not a stand-in's or another's).
        assert err.count("Invalid value for variable") == len(bad), (bad, err)
        for name in bad:
            assert f"{_validation_message(name)}:" in err, (name, bad[name], err)


def test_the_ops_tokens_terraform_takes_are_the_ones_the_gateway_takes() -> None:
    """The gateway's own rule for ops.token (gateway.checks.header_token): the plan must take
    none that the gateways then refuse at start."""
    from gateway import checks

    def gateway_takes(token: str) -> bool:
        try:
            checks.header_token(token)
        except ValueError:
            return False
        return True

    takes, refuses = VARIABLE_CASES["ops_token"]
    assert all(gateway_takes(t) for t in takes)
    assert all(not gateway_takes(t) or len(t) < 16 for t in refuses)
    (validation,) = _region_variables()["ops_token"]["validation"]
    m = re.fullmatch(r'\$\{can\(regex\("(.+)", var\.ops_token\)\)\}', validation["condition"])
    assert m, validation["condition"]
    # Every character the gateway takes, and none it refuses, as RE2 and Python read the class.
    pattern = re.compile(m.group(1))
    for code in range(0x250):  # ASCII, Latin-1 and beyond
        c = chr(code)
        assert bool(pattern.fullmatch(c * 16)) == gateway_takes(c), repr(c)


# --- item: scale-out ------------------------------------------------------------------------


def _scaling(tmp: Path, target: int | None) -> list[Any]:
    """[the policy's count, the group's desired_capacity], as Terraform evaluates the
    module's own expressions for them with target_requests_per_host = target."""
    policy = _resources(REGION)[("aws_autoscaling_policy", "requests_per_host")]
    asg = _resources(REGION)[("aws_autoscaling_group", "gpu")]
    exprs = [policy["count"], asg["desired_capacity"]]
    assert all(e.startswith("${") and e.endswith("}") for e in exprs), exprs
    inner = ", ".join(e[2:-1] for e in exprs)
    values = {"target_requests_per_host": target, "desired_capacity": 2}
    p = terraform_with_region_variables(tmp, values, "console", stdin=f"jsonencode([{inner}])\n")
    assert p.returncode == 0, p.stdout + p.stderr
    return list(json.loads(json.loads(p.stdout.strip().splitlines()[-1])))


def test_a_target_tracking_policy_only_when_a_target_is_set(tmp_path: Path) -> None:
    """README and the alerts speak of scale-out: a target-tracking policy on the ALB's
    requests per host when target_requests_per_host is set; none by default (the count is
    the operator's). With the policy, Terraform leaves the count to it."""
    policy = _resources(REGION)[("aws_autoscaling_policy", "requests_per_host")]
    assert policy["autoscaling_group_name"] == "${aws_autoscaling_group.gpu.name}"
    assert _unquote(policy["policy_type"]) == "TargetTrackingScaling"
    (tracking,) = policy["target_tracking_configuration"]
    assert tracking["target_value"] == "${var.target_requests_per_host}"
    (metric,) = tracking["predefined_metric_specification"]
    assert _unquote(metric["predefined_metric_type"]) == "ALBRequestCountPerTarget"
    assert _unquote(metric["resource_label"]) == (
        "${aws_lb.gateway.arn_suffix}/${aws_lb_target_group.gateway.arn_suffix}"
    )
    # A new host counts once it could serve: after the images and the model (the grace).
    assert policy["estimated_instance_warmup"] == (
        "${aws_autoscaling_group.gpu.health_check_grace_period}"
    )
    assert _region_variables()["target_requests_per_host"]["default"] is None
    # The comment says why requests are a rough proxy, and what would be better.
    hosts = (REGION / "hosts.tf").read_text()
    comment = hosts[: hosts.index('resource "aws_autoscaling_policy"')]
    comment = comment[comment.rindex("\n\n") :]
    assert "rough proxy" in comment and "vllm:num_requests_waiting" in comment
    # Terraform's own reading of the module's expressions.
    assert _scaling(tmp_path / "none", None) == [0, 2]
    assert _scaling(tmp_path / "set", 120) == [1, None]


def test_the_hosts_pull_their_two_images_and_no_other() -> None:
    """AmazonEC2ContainerRegistryReadOnly let every host list and pull every repository of
    the account: the grant names the two images' repositories (their ARNs from the image
    references, by Terraform itself where installed), and the login, which takes no
    resource."""
    docs = {name: body for (kind, name), body in _data(REGION).items()}
    login, pull = _statements(docs["ecr"])
    assert [_unquote(a) for a in login["actions"]] == ["ecr:GetAuthorizationToken"]
    assert sorted(_unquote(a) for a in pull["actions"]) == [
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
    ]
    assert _unquote(pull["resources"]) == "${local.ecr_repositories}"
    locals_ = _locals(REGION)
    local = locals_["ecr_repositories"]
    # Its one pattern, a local of its own: given to the console beside variables.tf.
    assert local.count("local.ecr_image_regex") == 2 and 'regex("' not in local
    pattern = f"locals {{\n  ecr_image_regex = {locals_['ecr_image_regex']}\n}}\n"
    images = {
        "gateway_image": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/geogate/gateway:0.1.0",
        # By the FIPS endpoint, as the boot script logs in to it: the same repository.
        "backend_image": "210987654321.dkr.ecr-fips.us-east-1.amazonaws.com/backend@sha256:"
        + "0" * 64,
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "locals.tf").write_text(pattern)
        p = terraform_with_region_variables(
            Path(tmp), images, "console", stdin=f"jsonencode({local[2:-1]})\n"
        )
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(json.loads(p.stdout)) == [
        "arn:aws:ecr:eu-central-1:123456789012:repository/geogate/gateway",
        "arn:aws:ecr:us-east-1:210987654321:repository/backend",
    ]
    with tempfile.TemporaryDirectory() as tmp:  # another registry's images: no repository
        (Path(tmp) / "locals.tf").write_text(pattern)
        others = {"gateway_image": "ghcr.io/acme/gateway:1", "backend_image": "backend:1"}
        p = terraform_with_region_variables(
            Path(tmp), others, "console", stdin=f"jsonencode({local[2:-1]})\n"
        )
    assert p.returncode == 0 and json.loads(json.loads(p.stdout)) == [], p.stdout + p.stderr
