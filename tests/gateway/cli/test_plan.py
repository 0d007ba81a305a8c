"""``geogate plan`` end to end: the example's table, bad inputs as one line, and a plan checked
by ``geogate world``: the chosen placement's predicted TTFT per continent within 15 % of the
emulated one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.cli import world_report as wr
from gateway.cli.main import main
from gateway.cli.plan import load
from gateway.cli.world import WorldSpec
from gateway.cli.world_client import Site
from gateway.cli.world_run import run_world
from gateway.plan.model import choose
from gateway.plan.search import plan

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "plan.toml"


def test_example_prints_the_front_and_the_choice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    main(["plan", str(EXAMPLE), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    print(out)
    assert out.startswith("| placement | instances | $/month |")
    assert "cheapest placement meeting the objectives:" in out
    assert (tmp_path / "plan.json").exists() and (tmp_path / "plan.md").exists()


BAD = {
    "no price": ('[[demand]]\ncountry = "SG"\nrequests_per_day = 1\ninput_tokens = 1\n'
                 'output_tokens = 1\n[[regions]]\nid = "ap-southeast"\ntokens_per_s = 100\n'
                 "egress_usd_per_tb = 90\n",
                 "geogate: plan: regions[0] (ap-southeast) has no usd_per_hour"),
    "negative demand": ('[[demand]]\ncountry = "SG"\nrequests_per_day = -1\ninput_tokens = 1\n'
                        "output_tokens = 1\n",
                        "geogate: plan: demand[0] (SG): requests_per_day must be 0 or more"),
    "unknown country": ('[[demand]]\ncountry = "QQ"\nrequests_per_day = 1\n',
                        "geogate: plan: demand[0] (QQ): unknown country 'QQ'"),
    "not toml": ("[[demand]\n", "geogate: plan: "),
    "settings not a table": ("settings = 5\n", "geogate: plan: settings must be a table, got 5"),
    "a misspelt section": ("[objective_p95_ms]\nEU = 100\n",
                           "geogate: plan: objective_p95_ms: unknown key (a typo?)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, message = BAD[case]
    f = tmp_path / "plan.toml"
    f.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(f)])
    err = capsys.readouterr().err
    print(err, end="")
    assert exit_.value.code == 2
    assert err.startswith(message) and err.count("\n") == 1


RESULTS = {  # the shape bench/backend.py writes (bench/results/backend.json); made-up figures
    "device": "test CPU",
    "quantization": [
        {"model": "small", "quantize": "none", "weight_bytes": 1e7, "tok_s_batch16": 4000.0},
        {"model": "medium", "quantize": "none", "weight_bytes": 4e8, "tok_s_batch16": 250.0},
        {"model": "medium", "quantize": "int8-dynamic", "weight_bytes": 1e8,
         "tok_s_batch16": 500.0},
    ],
}  # fmt: skip
MEASURED_PLAN = textwrap.dedent("""
    [settings]
    backend_results = "results.json"
    [demand_defaults]
    input_tokens = 0
    output_tokens = 100
    [[demand]]
    country = "SG"
    requests_per_day = 864000
    [region_defaults]
    egress_usd_per_tb = 90
    [[regions]]
    id = "ap-southeast"
    usd_per_hour = 1.0
    [[regions]]
    id = "us-east"
    usd_per_hour = 1.0
    tokens_per_s = 7000
""")


def test_tokens_per_s_from_the_backend_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A region without tokens_per_s takes bench/backend.py's batched figure (the largest
    unquantised model by default); one that gives its own keeps it."""
    import json

    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    f = tmp_path / "plan.toml"
    f.write_text(MEASURED_PLAN)
    p = load(f)
    ap, us = p.candidates
    assert ap.tokens_per_s == 250.0 and ap.tokens_per_s_source.startswith("results.json")
    assert "medium, quantize none" in ap.tokens_per_s_source
    assert us.tokens_per_s == 7000.0 and us.tokens_per_s_source == "given"
    # 1,000 tokens/s of demand at 250 x 0.7 per instance: 6 instances in ap-southeast alone
    alone = next(x for x in plan(p) if x.regions == ("ap-southeast",))
    assert alone.lines[0].instances == 6
    f.write_text(MEASURED_PLAN.replace("[settings]", '[settings]\nbackend_model = "small"'))
    assert load(f).candidates[0].tokens_per_s == 4000.0
    f.write_text(MEASURED_PLAN.replace("tokens_per_s = 7000", 'tokens_per_s = "measured"'))
    assert load(f).candidates[1].tokens_per_s == 250.0
    main(["plan", str(f), "--out", str(tmp_path / "out")])
    assert "250 tokens/s per instance (results.json: medium" in capsys.readouterr().out
    doc = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert doc["tokens_per_s"]["ap-southeast"]["value"] == 250.0


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (None, "geogate: plan: a region takes its tokens_per_s from "),
        ("{not json", "geogate: plan: "),
        ('{"quantization": []}', "geogate: plan: results.json has no run of quantize 'none'"),
    ],
)
def test_unusable_backend_results_are_one_line(
    results: str | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if results is not None:
        (tmp_path / "results.json").write_text(results)
    f = tmp_path / "plan.toml"
    f.write_text(MEASURED_PLAN)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(f)])
    err = capsys.readouterr().err
    print(err, end="")
    assert exit_.value.code == 2 and err.startswith(message) and err.count("\n") == 1


def _plan_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", *argv])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and err.count("\n") == 1 and not out, err
    return err


def test_files_that_are_not_utf8_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "plan.toml"
    f.write_bytes("# Köln\n[[demand]]\n".encode("latin-1"))
    assert _plan_error(capsys, str(f)) == (
        f"geogate: plan: {f}:1: not UTF-8 text (byte 0xf6): save it as UTF-8\n"
    )
    f.write_text(MEASURED_PLAN)
    (tmp_path / "results.json").write_bytes(b'{"device": "\xff"}')
    assert _plan_error(capsys, str(f)) == (
        f"geogate: plan: {tmp_path / 'results.json'}:1: not UTF-8 text (byte 0xff): "
        "save it as UTF-8\n"
    )


def test_an_out_that_is_a_file_is_one_line_before_the_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_search(*_: object) -> None:
        raise AssertionError("searched before --out was checked")

    monkeypatch.setattr("gateway.cli.plan.plan", no_search)
    taken = tmp_path / "taken"
    taken.write_text("")
    err = _plan_error(capsys, str(EXAMPLE), "--out", str(taken))
    assert err == f"geogate: plan: --out {taken} is a file, not a folder\n"
    err = _plan_error(capsys, str(EXAMPLE), "--out", str(taken / "sub"))
    assert err == f"geogate: plan: cannot write to --out {taken / 'sub'}: Not a directory\n"


SMALL_PLAN = textwrap.dedent("""
    [settings]
    backend_ttft_ms = 100
    [objectives_p95_ms]
    EU = 40
    NA = 40
    AS = 40
    [demand_defaults]
    input_tokens = 100
    output_tokens = 50
    [[demand]]
    country = "GB"
    requests_per_day = 1000
    [[demand]]
    country = "CA"
    requests_per_day = 1000
    [[demand]]
    country = "SG"
    requests_per_day = 1000
    [region_defaults]
    tokens_per_s = 1000
    egress_usd_per_tb = 90
    [[regions]]
    id = "eu-central"
    usd_per_hour = 1.2
    [[regions]]
    id = "us-east"
    usd_per_hour = 1.0
    [[regions]]
    id = "ap-southeast"
    usd_per_hour = 1.0
    [[regions]]
    id = "sa-east"
    usd_per_hour = 1.6
""")


def test_world_confirms_the_plan(tmp_path: Path) -> None:
    """Plan, then emulate the chosen placement with client sites at the demand's points:
    geogate's TTFT p50 per continent is within 15 % of the plan's prediction."""
    f = tmp_path / "plan.toml"
    f.write_text(SMALL_PLAN)
    p = load(f)
    best = choose(plan(p))
    assert best is not None
    assert set(best.regions) == {"eu-central", "us-east", "ap-southeast"}
    sites = tuple(Site(d.label, d.label, d.continent, d.lat, d.lon) for d in p.demand)
    spec = WorldSpec(sites=sites, regions=best.regions, origin=best.regions[0], requests=6,
                     backend_ttft_ms=p.backend_ttft_ms, events=(), out=tmp_path / "world",
                     progress=False)  # fmt: skip
    result = run_world(spec)
    predicted = best.ttft_ms(p.backend_ttft_ms)
    print(wr.markdown(result.rows, []))
    for row in result.rows:
        got = row.cells["geogate"].p50
        want = predicted[row.continent]
        print(f"{row.continent}: predicted {want:.0f} ms, emulated {got:.0f} ms")
        assert got is not None and abs(got - want) <= 0.15 * want, row
