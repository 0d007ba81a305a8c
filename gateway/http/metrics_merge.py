"""One exposition from several workers' (``gateway.http.worker_metrics``): each worker keeps its
own registry (``gateway.metrics``), so a scrape of any one of them sees a part of the gateway.

Not summed: a sum drops whenever a worker is left out of a scrape (no answer in time) or is
restarted (its counts from 0), and Prometheus reads any drop of a counter as a reset, adding
the whole new value as an increase (a counter at 1e6 missing one worker for one scrape:
increase() of 1e6 that never happened). So each worker's series of counters, histograms and
summaries carry a ``worker`` label (``WORKER``): a missing worker is a gap in its own series,
a restarted one a reset of its own, as Prometheus expects of any target. Queries sum them
(``sum by (region) (rate(...))``, or ``sum without (worker) (...)``). The gauges of what a
worker holds (``PER_WORKER_GAUGES``: the requests in flight and ``max_streams``) are
labelled too, so ``sum(in_flight) / sum(max_streams)`` stays the gateway's load. Every other
gauge is a worker's view of shared state (upstream health and RTT, a model's healthy
upstreams, the config version, how stale shared state is), which the workers each keep up
to date on their own: one series, the largest, so that the answer is the same whichever
worker is asked and staleness reads as the worst of them.

Nothing is parsed. Each worker renders its own labelled families itself (``part``), with
prometheus_client, and sends them as structured JSON: per family its name, its two header
lines and its sample lines, or, for a gauge of shared state, its samples as label sets and
values. The worker answering the scrape (``merge``) only concatenates the families' lines
under one header each and takes the largest of the shared gauges' few values: its cost grows
with its own series, not with its siblings'.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

WORKER = "worker"
# Gauges that count a worker's own share: labelled with the worker as counters are. A new one
# of that kind belongs here, or the scrape shows the busiest worker's figure alone.
PER_WORKER_GAUGES = frozenset(
    {
        "geogate_requests_in_flight",
        "geogate_upstream_in_flight",
        "geogate_max_streams",
        "geogate_upstream_pool_idle_connections",
    }
)
# Samples prometheus_client writes as a gauge family of their own after their family's
# (generate_latest): a counter's ``_created``, a gauge histogram's ``_gsum`` and ``_gcount``.
OM_SUFFIXES = ("_created", "_gsum", "_gcount")
# A family as a worker sends it: [key, OWN, header, lines] or [key, SHARED, doc, samples],
# samples being [sample name, labels, value] each.
OWN, SHARED = "own", "shared"
Part = dict[str, Any]  # {"worker": its label value, "families": [family, ...]}: JSON
Series = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and labels


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def part(metrics: Iterable[Metric], worker: str) -> Part:
    """A worker's families (its registry's ``collect()``), as it sends them to whichever
    worker answers the scrape: each of its own series with ``worker="<worker>"``."""
    families: list[list[Any]] = []
    for m in metrics:
        if m.type == "gauge" and m.name not in PER_WORKER_GAUGES:
            samples = [[s.name, s.labels, s.value] for s in m.samples]
            families.append([m.name, SHARED, m.documentation, samples])
            continue
        for piece in _pieces(m, worker):
            text = generate_latest(_Families([piece])).decode()
            cut = text.index("\n", text.index("\n") + 1) + 1  # after "# HELP" and "# TYPE"
            families.append([piece.name, OWN, text[:cut], text[cut:]])
    return {"worker": worker, "families": families}


def _pieces(m: Metric, worker: str) -> list[Metric]:
    """``m`` with the worker label, as the families generate_latest writes it as: the family,
    then each OpenMetrics-only sample kind (``OM_SUFFIXES``) as a gauge of its own."""
    main = Metric(m.name, m.documentation, m.type, m.unit)
    pieces = {"": main}
    for s in m.samples:
        suffix = next((x for x in OM_SUFFIXES if s.name == m.name + x), "")
        if suffix not in pieces:
            pieces[suffix] = Metric(m.name + suffix, m.documentation, "gauge")
        pieces[suffix].samples.append(s._replace(labels={**s.labels, WORKER: worker}))
    return [pieces[k] for k in sorted(pieces)]  # "" (the family) first, as generate_latest


def merge(parts: Sequence[Part], extra: Sequence[Metric] = ()) -> bytes:
    """The workers' ``parts`` as one exposition, the first's families first, then ``extra``."""
    heads: dict[str, tuple[str, str]] = {}  # key -> (kind, header or doc), first seen first
    lines: dict[str, list[str]] = {}
    largest: dict[str, dict[Series, Sample]] = {}
    for p in parts:
        for key, kind, head, body in p["families"]:
            if heads.setdefault(key, (kind, head))[0] != kind:
                continue  # a worker of other code: never one family twice
            if kind == OWN:
                lines.setdefault(key, []).append(body)
                continue
            series = largest.setdefault(key, {})
            for name, labels, value in body:
                at = (name, tuple(sorted(labels.items())))
                old = series.get(at)
                if old is None or value > old.value:
                    series[at] = Sample(name, labels, value)
    out: list[str] = []
    for key, (kind, head) in heads.items():
        if kind == OWN:
            out.append(head)
            out.extend(lines[key])
        else:
            gauge = Metric(key, head, "gauge")
            gauge.samples = list(largest.get(key, {}).values())
            out.append(generate_latest(_Families([gauge])).decode())
    out.append(generate_latest(_Families(extra)).decode())
    return "".join(out).encode()
