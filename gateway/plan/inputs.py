"""``geogate plan``'s input: a TOML document (see examples/plan.toml), checked into plain
dataclasses. Every mistake is one line naming where it is (``demand[2] (BR)``) and what is
wrong, raised as PlanInvalid; nothing here reads files (the CLI hands the parsed document)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.checks import FLEET_ID
from gateway.errors import PlanInvalid
from gateway.plan.checks import MOST, OBJECTIVE_MOST_MS, as_table, coordinate, number, shape
from geodb.countries import continent_point, country_continent, country_point
from geodb.regions import known_regions

HOURS_PER_MONTH = 730.0  # 8,760 h / 12: how cloud price sheets turn $/h into $/month
TARGET_UTILISATION = 0.7  # LLM TTFT climbs steeply past ~70-80 % of a GPU's batch capacity
BYTES_PER_OUTPUT_TOKEN = 220.0  # one SSE chunk of an OpenAI-shaped stream per token, headers
# and JSON included (the simulated backend's chunks measure ~200-230 bytes)
INPUT_TOKEN_WEIGHT = 0.1  # prefill processes prompt tokens ~10x faster than decode makes
# output tokens: a prompt token costs a tenth of the measured output tokens/s
BACKEND_TTFT_MS = 40.0  # the backend's own time to first token, added to RTT in predictions
# Where bench/backend.py writes its results, from the repository root: a region without a
# tokens_per_s of its own (or with tokens_per_s = "measured") takes its figure from there.
BACKEND_RESULTS = "bench/results/backend.json"
MEASURED = "measured"
BENCH_MEASURE = "tok_s_batch16"  # batched output tokens/s: what one instance sustains serving
# many clients at once, not one stream's speed (tok_s_batch1)

# The backend results the CLI read (the JSON document), asked for only when a region needs it.
ResultsReader = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Measured:
    tokens_per_s: float
    source: str  # which run: "bench/results/backend.json: medium, quantize none, batch 16"


@dataclass(frozen=True)
class Demand:
    label: str  # country code or continent
    continent: str
    lat: float
    lon: float
    requests_per_day: float
    input_tokens: float
    output_tokens: float
    peak_factor: float


@dataclass(frozen=True)
class Candidate:
    id: str
    lat: float
    lon: float
    instance: str
    usd_per_hour: float
    tokens_per_s: float  # output tokens/s one instance sustains (bench/backend.py, or given)
    egress_usd_per_tb: float
    storage_gb: float
    storage_usd_per_gb_month: float
    tokens_per_s_source: str = "given"  # "given", or the measurement it came from


@dataclass(frozen=True)
class PlanInput:
    demand: tuple[Demand, ...]
    candidates: tuple[Candidate, ...]
    objectives_p95_ms: dict[str, float] = field(default_factory=dict)  # per continent
    target_utilisation: float = TARGET_UTILISATION
    hours_per_month: float = HOURS_PER_MONTH
    bytes_per_output_token: float = BYTES_PER_OUTPUT_TOKEN
    input_token_weight: float = INPUT_TOKEN_WEIGHT
    backend_ttft_ms: float = BACKEND_TTFT_MS


def _rows(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """An array of tables (``[[demand]]``), each of them a table."""
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise PlanInvalid(f"plan: {key} must be an array of tables ([[{key}]]), got {shape(value)}")
    return [as_table(row, f"{key}[{i}]") for i, row in enumerate(value)]


def _known(table: dict[str, Any], keys: frozenset[str], where: str = "") -> None:
    """Every key is one something reads: a misspelt one (``storage_gbb``) would otherwise be
    skipped in silence and its default (storage $0) used as if it had been meant. ``where``
    is empty for the document's own keys, which name themselves."""
    unknown = next((k for k in table if k not in keys), None)
    if unknown is not None:
        at = f"{where}: " if where else ""
        raise PlanInvalid(
            f"plan: {at}{unknown}: unknown key (a typo?); known: {', '.join(sorted(keys))}"
        )


# The keys of [demand_defaults] and of each [[demand]] row (which adds where the demand is).
DEMAND_NUMBERS = frozenset({"requests_per_day", "input_tokens", "output_tokens", "peak_factor"})
DEMAND_KEYS = DEMAND_NUMBERS | {"country", "continent"}


def _demand(i: int, row: dict[str, Any], defaults: dict[str, Any]) -> Demand:
    country, continent = row.get("country"), row.get("continent")
    where = f"demand[{i}] ({country or continent or '?'})"
    _known(row, DEMAND_KEYS, where)
    if (country is None) == (continent is None):
        raise PlanInvalid(f"plan: {where}: give either country or continent, not both/neither")
    if country is not None:
        point, cont = country_point(str(country)), country_continent(str(country))
        if point is None or cont is None:
            raise PlanInvalid(f"plan: {where}: unknown country {country!r} (ISO 3166 alpha-2)")
    else:
        point, cont = continent_point(str(continent)), str(continent).upper()
        if point is None:
            raise PlanInvalid(f"plan: {where}: unknown continent {continent!r} (AF AS EU ...)")
    merged = {**defaults, **row}
    return Demand(
        label=str(country or continent).upper(),
        continent=cont,
        lat=point[0],
        lon=point[1],
        requests_per_day=number(merged, "requests_per_day", where),
        input_tokens=number(merged, "input_tokens", where),
        output_tokens=number(merged, "output_tokens", where),
        peak_factor=number(merged, "peak_factor", where, 1.0, positive=True),
    )


def _runs(results: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The results' quantization table: its runs (objects), each one of bench/backend.py."""
    runs = results.get("quantization", [])
    if not isinstance(runs, list):
        raise PlanInvalid(
            f"plan: {where}: quantization must be an array of runs, got {shape(runs)}"
        )
    return [r for r in runs if isinstance(r, dict)]


def _run_number(row: dict[str, Any], key: str, where: str, default: float | None) -> float:
    """A run's figure: a finite number (JSON's NaN and Infinity read as floats, a figure
    written as text as a string: each used to end in a traceback or a plan of nonsense)."""
    value = row.get(key, default)
    run = f"{where}: run {row.get('model')}/{row.get('quantize')}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanInvalid(f"plan: {run}: {key} must be a number, got {shape(value)}")
    return float(value)


def measured_rate(
    results: dict[str, Any], model: str | None, quantize: str, where: str
) -> Measured:
    """One run of bench/backend.py's quantization table: ``model`` (default: the largest
    measured) at ``quantize``; its batched output tokens/s."""
    every = _runs(results, where)
    # a run whose figure is null was not measured: skipped, as one without the key
    rows = [r for r in every if r.get("quantize") == quantize and r.get(BENCH_MEASURE) is not None]
    if model is not None:
        rows = [r for r in rows if r.get("model") == model]
    if not rows:
        runs = sorted({f"{r.get('model')}/{r.get('quantize')}" for r in every})
        want = f"model {model!r} at quantize {quantize!r}" if model else f"quantize {quantize!r}"
        raise PlanInvalid(f"plan: {where} has no run of {want}; it has {', '.join(runs) or 'none'}")
    row = max(rows, key=lambda r: _run_number(r, "weight_bytes", where, 0.0))
    value = _run_number(row, BENCH_MEASURE, where, None)
    if not 0 < value <= MOST["tokens_per_s"]:
        raise PlanInvalid(
            f"plan: {where}: run {row.get('model')}/{quantize}: {BENCH_MEASURE} must be greater "
            f"than 0 and at most {MOST['tokens_per_s']:,g}, got {value!r}"
        )
    device = results.get("device", "?")
    return Measured(
        value,
        f"{where}: {row.get('model')}, quantize {quantize}, batch 16, on {device}",
    )


def _rate(
    where: str, merged: dict[str, Any], measured: Callable[[], Measured] | None
) -> tuple[float, str]:
    given = merged.get("tokens_per_s")
    if given is not None and given != MEASURED:
        return number(merged, "tokens_per_s", where, positive=True), "given"
    if measured is None:
        raise PlanInvalid(f"plan: {where} has no tokens_per_s")
    m = measured()
    return m.tokens_per_s, m.source


# The keys of [region_defaults] and of each [[regions]] row, which adds where the region is
# and its price (never defaulted: a price is per region).
REGION_DEFAULTS = frozenset(
    {"instance", "tokens_per_s", "egress_usd_per_tb", "storage_gb", "storage_usd_per_gb_month"}
)
REGION_KEYS = REGION_DEFAULTS | {"id", "latitude", "longitude", "usd_per_hour"}


def _region_id(i: int, row: dict[str, Any]) -> str:
    """A region's id, by the gateway config's rule for one (gateway.checks.FLEET_ID): a plan's
    region becomes a [[regions]] entry of that config, and a "|" broke plan.md's table, an
    empty id printed as nothing at all. Checked before it names the row in any message."""
    rid = row.get("id")
    if rid is None:
        raise PlanInvalid(f"plan: regions[{i}] has no id")
    if not isinstance(rid, str) or not FLEET_ID.fullmatch(rid):
        raise PlanInvalid(
            f"plan: regions[{i}]: id must be letters, digits and _.- (first a letter, digit "
            f"or _), as a region's id in the gateway config, got {shape(rid)}"
        )
    return rid


def _instance(merged: dict[str, Any], where: str) -> str:
    """The instance type, printed as it is ("1 x g5.xlarge"): a table was printed as its
    Python repr, and a line break would split the output's line."""
    value = merged.get("instance", "?")  # not needed for the arithmetic: "?" when not given
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise PlanInvalid(
            f'plan: {where}: instance must be an instance type such as "g5.xlarge", '
            f"got {shape(value)}"
        )
    return value


def _candidate(
    i: int,
    row: dict[str, Any],
    defaults: dict[str, Any],
    measured: Callable[[], Measured] | None = None,
) -> Candidate:
    rid = _region_id(i, row)
    where = f"regions[{i}] ({rid})"
    _known(row, REGION_KEYS, where)
    if "latitude" in row or "longitude" in row:
        lat, lon = (
            coordinate(row, "latitude", where, 90),
            coordinate(row, "longitude", where, 180),
        )
    elif rid in known_regions():
        k = known_regions()[rid]
        lat, lon = k.latitude, k.longitude
    else:
        raise PlanInvalid(
            f"plan: {where}: unknown region {rid!r}: give latitude and longitude, "
            f"or one of {', '.join(known_regions())}"
        )
    merged = {**defaults, **row}
    usd_per_hour = number(row, "usd_per_hour", where, positive=True)  # never defaulted
    tokens_per_s, source = _rate(where, merged, measured)
    return Candidate(
        id=rid,
        lat=lat,
        lon=lon,
        instance=_instance(merged, where),
        usd_per_hour=usd_per_hour,
        tokens_per_s=tokens_per_s,
        tokens_per_s_source=source,
        egress_usd_per_tb=number(merged, "egress_usd_per_tb", where),
        storage_gb=number(merged, "storage_gb", where, 0.0),
        storage_usd_per_gb_month=number(merged, "storage_usd_per_gb_month", where, 0.0),
    )


def _measured(
    settings: dict[str, Any], read: ResultsReader | None
) -> Callable[[], Measured] | None:
    """The backend results' figure, read once and only when a region asks for it."""
    if read is None:
        return None
    where = str(settings.get("backend_results", BACKEND_RESULTS))
    model = settings.get("backend_model")
    quantize = str(settings.get("backend_quantize", "none"))

    @functools.cache
    def get() -> Measured:
        return measured_rate(read(), None if model is None else str(model), quantize, where)

    return get


# The document's sections, and the keys of [settings] (the backend_* ones pick the run of
# bench/backend.py's results that regions without a tokens_per_s take theirs from).
SECTIONS = frozenset(
    {"settings", "objectives_p95_ms", "demand_defaults", "demand", "region_defaults", "regions"}
)
SETTINGS_KEYS = frozenset(
    {"target_utilisation", "hours_per_month", "bytes_per_output_token", "input_token_weight"}
    | {"backend_ttft_ms", "backend_results", "backend_model", "backend_quantize"}
)


def section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """One of the document's tables (``[settings]``), empty when absent."""
    return as_table(doc.get(key, {}), key)


def _sections(
    doc: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """settings, objectives, demand defaults and region defaults, each checked to be a table
    of known keys (objectives' keys are continents, checked where they are read)."""
    _known(doc, SECTIONS)
    settings = section(doc, "settings")
    _known(settings, SETTINGS_KEYS, "settings")
    d_defaults = section(doc, "demand_defaults")
    _known(d_defaults, DEMAND_NUMBERS, "demand_defaults")
    r_defaults = section(doc, "region_defaults")
    if "usd_per_hour" in r_defaults:  # known, but not here: would be ignored in silence
        raise PlanInvalid(
            "plan: region_defaults: usd_per_hour has no default: give it in each [[regions]]"
        )
    _known(r_defaults, REGION_DEFAULTS, "region_defaults")
    return settings, section(doc, "objectives_p95_ms"), d_defaults, r_defaults


def _objectives(table: dict[str, Any]) -> dict[str, float]:
    """p95 RTT objectives per continent, keyed in upper case. TOML keys are case-sensitive,
    so EU = 10 and eu = 500 are two keys for one continent: the later one used to win in
    silence, and a placement "met" the objectives at 500 ms."""
    objectives: dict[str, float] = {}
    named: dict[str, str] = {}  # continent -> the key that gave it
    for cont, ms in table.items():
        if continent_point(cont) is None:
            raise PlanInvalid(f"plan: objectives_p95_ms: unknown continent {cont!r}")
        if cont.upper() in named:
            raise PlanInvalid(
                f"plan: objectives_p95_ms: {named[cont.upper()]!r} and {cont!r} are the same "
                "continent: give one"
            )
        named[cont.upper()] = cont
        objectives[cont.upper()] = number(
            {cont: ms}, cont, "objectives_p95_ms", positive=True, most=OBJECTIVE_MOST_MS
        )
    return objectives


def parse(doc: dict[str, Any], read_results: ResultsReader | None = None) -> PlanInput:
    """``read_results``: the backend results document (bench/results/backend.json or the
    settings' ``backend_results``), for regions without a tokens_per_s of their own or with
    ``tokens_per_s = "measured"``; it raises PlanInvalid when it cannot be read."""
    settings, objectives_in, d_defaults, r_defaults = _sections(doc)
    demand = tuple(_demand(i, row, d_defaults) for i, row in enumerate(_rows(doc, "demand")))
    measured = _measured(settings, read_results)
    cands = tuple(
        _candidate(i, row, r_defaults, measured) for i, row in enumerate(_rows(doc, "regions"))
    )
    if not demand:
        raise PlanInvalid("plan: no [[demand]] entries")
    if not cands:
        raise PlanInvalid("plan: no [[regions]] candidates")
    ids = [c.id for c in cands]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup is not None:
        raise PlanInvalid(f"plan: region {dup!r} is listed twice")
    objectives = _objectives(objectives_in)
    util = number(settings, "target_utilisation", "settings", TARGET_UTILISATION, positive=True)
    return PlanInput(
        demand=demand,
        candidates=cands,
        objectives_p95_ms=objectives,
        target_utilisation=util,
        hours_per_month=number(settings, "hours_per_month", "settings", HOURS_PER_MONTH, True),
        bytes_per_output_token=number(
            settings, "bytes_per_output_token", "settings", BYTES_PER_OUTPUT_TOKEN
        ),
        input_token_weight=number(settings, "input_token_weight", "settings", INPUT_TOKEN_WEIGHT),
        backend_ttft_ms=number(settings, "backend_ttft_ms", "settings", BACKEND_TTFT_MS),
    )
