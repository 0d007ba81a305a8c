"""deploy/terraform: every .tf file parses (python-hcl2); every variable used is declared in
its module; every module call passes only inputs the module declares, all the required ones,
and reads only outputs it declares; every templatefile() gets what its template uses."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from pydantic import BaseModel

from tests.deploy.conftest import DEPLOY

TF = DEPLOY / "terraform"
VAR_USE = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
# Block arguments of a module call that are Terraform's, not the module's inputs.
META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}


def _name(key: str) -> str:
    return key.strip('"')


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


class Module:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.docs = {p.name: hcl2.loads(p.read_text()) for p in sorted(path.glob("*.tf"))}
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: set[str] = set()
        self.calls: dict[str, dict[str, Any]] = {}
        for doc in self.docs.values():
            for block in doc.get("variable", []):
                self.variables.update({_name(k): v for k, v in block.items()})
            for block in doc.get("output", []):
                self.outputs.update(_name(k) for k in block)
            for block in doc.get("module", []):
                self.calls.update({_name(k): v for k, v in block.items()})

    def used_variables(self) -> dict[str, set[str]]:
        used: dict[str, set[str]] = {}
        for file, doc in self.docs.items():
            for s in _strings(doc):
                for name in VAR_USE.findall(s):
                    used.setdefault(name, set()).add(file)
        return used


def _modules() -> list[Path]:
    return sorted({p.parent for p in TF.rglob("*.tf")})


def test_the_modules_are_there() -> None:
    names = {p.relative_to(TF).as_posix() for p in _modules()}
    assert names == {"aws/example", "aws/modules/region"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(TF).as_posix())
def test_every_variable_used_is_declared(path: Path) -> None:
    m = Module(path)
    undeclared = {n: sorted(f) for n, f in m.used_variables().items() if n not in m.variables}
    assert not undeclared, f"{path.name}: variables used but not declared: {undeclared}"
    unused = set(m.variables) - set(m.used_variables())
    assert not unused, f"{path.name}: variables declared but never used: {sorted(unused)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(TF).as_posix())
def test_module_calls_match_the_modules(path: Path) -> None:
    m = Module(path)
    text = "\n".join(p.read_text() for p in path.glob("*.tf"))
    for call, args in m.calls.items():
        source = (path / _name(args["source"])).resolve()
        assert source.is_dir(), f"module {call}: no {source}"
        callee = Module(source)
        given = {k for k in args if k not in META_ARGS and not k.startswith("__")}
        unknown = given - set(callee.variables)
        assert not unknown, f"module {call} passes inputs its module lacks: {sorted(unknown)}"
        required = {n for n, v in callee.variables.items() if "default" not in v}
        missing = required - given
        assert not missing, f"module {call} misses required inputs: {sorted(missing)}"
        read = set(re.findall(rf"\bmodule\.{call}\.([A-Za-z_][A-Za-z0-9_]*)", text))
        assert read <= callee.outputs, f"module {call}: no such outputs {read - callee.outputs}"


IDENT = "[a-z_][a-z0-9_]*"
TEMPLATE_CALL = re.compile(r'templatefile\("\$\{path\.module\}/([^"]+)",\s*\{(.*?)\}\)', re.S)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(TF).as_posix())
def test_templates_get_what_they_use(path: Path) -> None:
    text = "\n".join(p.read_text() for p in path.glob("*.tf"))
    for name, body in TEMPLATE_CALL.findall(text):
        given = set(re.findall(rf"^\s*({IDENT})\s*=", body, re.M))
        template = (path / name).read_text()
        # ${x}, ${x.y}, %{ if x ...}, %{ for a, b in x ~}: the first name of each; $${...}
        # is a literal "${" for the shell.
        used = set(re.findall(rf"(?<!\$)\$\{{\s*({IDENT})", template))
        used |= set(re.findall(rf"%\{{\s*if\s+({IDENT})", template))
        loops = re.findall(rf"%\{{\s*for\s+({IDENT})(?:,\s*({IDENT}))?\s+in\s+({IDENT})", template)
        used |= {source for _, _, source in loops}
        loop_vars = {v for a, b, _ in loops for v in (a, b) if v}
        missing = used - given - loop_vars
        assert not missing, f"{name}: uses {sorted(missing)}, not passed by templatefile()"


def test_a_typo_is_caught(tmp_path: Path) -> None:
    """The check can fail: a variable used under a misspelt name is reported."""
    src = TF / "aws" / "modules" / "region"
    for p in src.glob("*.tf"):
        (tmp_path / p.name).write_text(
            p.read_text().replace("var.instance_type", "var.instnce_type")
        )
    used = Module(tmp_path).used_variables()
    assert "instnce_type" in used and "instnce_type" not in Module(tmp_path).variables


def _render(template: str, values: dict[str, Any]) -> str:
    """Just enough of templatefile() for gateway.toml.tftpl: `%{ for k, v in map ~}` loops
    and `${name}` / `${name.attr}` interpolations."""
    loop = re.compile(
        rf"%\{{\s*for\s+({IDENT}),\s*({IDENT})\s+in\s+({IDENT})\s*~\}}\n(.*?)%\{{\s*endfor\s*~\}}\n",
        re.S,
    )

    def subst(text: str, env: dict[str, Any]) -> str:
        def one(m: re.Match[str]) -> str:
            value: Any = env[m.group(1)]
            for attr in filter(None, (m.group(2) or "").split(".")):
                value = value[attr]
            return str(value)

        return re.sub(rf"\$\{{({IDENT})((?:\.{IDENT})*)\}}", one, text)

    def unroll(m: re.Match[str]) -> str:
        k, v, source, body = m.groups()
        return "".join(
            subst(body, {**values, k: key, v: val}) for key, val in values[source].items()
        )

    return subst(loop.sub(unroll, template), values)


def test_the_rendered_gateway_config_is_one_geogate_loads(tmp_path: Path) -> None:
    from gateway.config_file import load_config

    regions = {
        "eu-central": {"latitude": 50.11, "longitude": 8.68},
        "us-east": {"latitude": 37.37, "longitude": -79.82},
        "ap-southeast": {"latitude": 1.35, "longitude": 103.82},
    }
    template = (TF / "aws" / "example" / "gateway.toml.tftpl").read_text()
    toml = _render(
        template,
        {
            "region_id": "ap-southeast",
            "vpc_cidr": "10.30.0.0/16",
            "regions": regions,
            "domain": "example.com",
            "model_name": "llama-3.1-8b-instruct",
        },
    )
    (tmp_path / "gateway.toml").write_text(toml)
    cfg = load_config(tmp_path / "gateway.toml")
    assert cfg.gateway.region == "ap-southeast"
    assert [r.id for r in cfg.regions] == list(regions)
    assert cfg.regions[0].url == "https://eu-central.api.example.com"
    assert [(u.url, u.health_path) for u in cfg.upstreams] == [("http://127.0.0.1:8000", "/ready")]


# --- what README's "Deploying on AWS" tells an operator to set ------------------------------

AWS_EXAMPLE = TF / "aws" / "example"
AWS_REGION = TF / "aws" / "modules" / "region"


def _readme_deploy_section() -> str:
    text = (DEPLOY.parent / "README.md").read_text()
    start = text.index("\n## Deploying on AWS")
    return text[start : text.index("\n## ", start + 1)]


def _config_fields(model: type[BaseModel]) -> set[str]:
    """Every field name of geogate's config, nested sections and lists of them included."""
    out = set()
    for name, field in model.model_fields.items():
        out.add(name)
        for t in (field.annotation, *typing.get_args(field.annotation)):
            for u in (t, *typing.get_args(t)):
                if isinstance(u, type) and issubclass(u, BaseModel):
                    out |= _config_fields(u)
    return out


def test_every_setting_the_readme_quotes_can_be_set_in_the_example() -> None:
    """README advised `redis_node_type = "cache.m7g.large"`, which only the region module
    declared: aws/example, the root module an operator runs, had no such variable, and
    terraform refused the setting. Every `name = value` the section quotes is a variable of
    aws/example when the region module has it, and otherwise a key of geogate's config."""
    from gateway.config import Config

    quoted = set(re.findall(r"`([a-z_][a-z0-9_.]*) = [^`]+`", _readme_deploy_section()))
    assert "redis_node_type" in quoted  # the check reads what it should
    example, region = Module(AWS_EXAMPLE), Module(AWS_REGION)
    config = _config_fields(Config)
    for name in sorted(quoted):
        if name in region.variables or ("." not in name and name not in config):
            assert name in example.variables, f"README sets {name}: aws/example lacks it"
        else:
            assert name.rsplit(".", 1)[-1] in config, f"README sets {name}: no such key"


def test_the_example_hands_each_region_what_it_declares_for_it() -> None:
    """A variable of aws/example named as a region module input reaches every region
    (root_volume_gb, redis_node_type and target_requests_per_host were the module's alone)."""
    example, region = Module(AWS_EXAMPLE), Module(AWS_REGION)
    shared = set(example.variables) & set(region.variables)
    assert {"redis_node_type", "root_volume_gb", "target_requests_per_host"} <= shared
    assert set(example.calls) == {"eu_central", "us_east", "ap_southeast"}
    for call, args in example.calls.items():
        for name in sorted(shared):
            assert args.get(name) == f"${{var.{name}}}", f"module {call}: {name}"
