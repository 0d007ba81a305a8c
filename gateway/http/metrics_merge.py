"""One exposition from several workers' (``gateway.http.worker_metrics``): each worker keeps its
own registry (``gateway.metrics``), so a scrape of any one of them sees a part of the gateway,
and consecutive scrapes that land on different workers make every counter jump between their
values, which Prometheus reads as resets and spurious increases.

Pure: exposition texts in, one text out. A sample's value is combined across the workers by
its family's rule:

- counters, histograms (buckets, ``_sum``, ``_count``) and summaries (prometheus_client's
  have ``_sum`` and ``_count`` only, no quantiles): summed per label set, as the gateway's
  count is the sum of its workers'.
- gauges that count what the workers hold (``SUMMED_GAUGES``): summed too; the requests in
  flight and ``max_streams`` are summed alike, so their ratio stays the gateway's load.
- every other gauge is a worker's view of shared state (upstream health and RTT, a model's
  healthy upstreams, the config version, how stale shared state is), which the workers each
  keep up to date on their own: the largest, so that the answer is the same whichever worker
  is asked (its own view would flip between the workers' while they disagree), and staleness
  reads as the worst of them. ``*_created`` (prometheus_client's first-seen time of a
  counter's series) takes the earliest, when the gateway's series first existed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})
# Gauges that count a worker's own share: a new one of that kind belongs here, or the merged
# scrape shows the busiest worker's figure instead of the gateway's.
SUMMED_GAUGES = frozenset(
    {"geogate_requests_in_flight", "geogate_upstream_in_flight", "geogate_max_streams"}
)
# Said in HELP, where it would otherwise read "in this worker".
SUMMED_NOTE = " (summed over the gateway's workers)"

Labels = tuple[tuple[str, str], ...]
Rule = Callable[[float, float], float]


class Merged(Collector):
    """The families of several expositions, combined; ``generate_latest`` renders them."""

    def __init__(self, texts: Iterable[str], extra: Sequence[Metric] = ()) -> None:
        self._families: dict[str, Metric] = {}
        self._rules: dict[str, Rule] = {}
        # A family's samples by series (its labels but ``le``), then by sample name and ``le``:
        # a histogram's lines stay together per series whichever worker first had it.
        self._series: dict[str, dict[Labels, dict[tuple[str, str], Sample]]] = {}
        for text in texts:
            for family in text_string_to_metric_families(text):
                self._add(family)
        self._extra = extra

    def _add(self, family: Metric) -> None:
        name = family.name
        if name not in self._families:
            rule = rule_for(family)
            doc = family.documentation
            if family.type == "gauge" and rule is operator.add:
                doc += SUMMED_NOTE
            self._families[name] = Metric(name, doc, family.type, family.unit)
            self._rules[name] = rule
            self._series[name] = {}
        rule, series = self._rules[name], self._series[name]
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            samples = series.setdefault(labels, {})
            key = (s.name, s.labels.get("le", ""))
            old = samples.get(key)
            samples[key] = s if old is None else s._replace(value=rule(old.value, s.value))

    def collect(self) -> Iterator[Metric]:
        for name, family in self._families.items():
            family.samples = [s for by_key in self._series[name].values() for s in by_key.values()]
            yield family
        yield from self._extra


def rule_for(family: Metric) -> Rule:
    if family.type in SUMMED_TYPES or family.name in SUMMED_GAUGES:
        return operator.add
    if family.name.endswith("_created"):
        return min
    return max


def merge(texts: Iterable[str], extra: Sequence[Metric] = ()) -> bytes:
    """The expositions ``texts`` as one, the first's families first, then ``extra``'s."""
    return generate_latest(Merged(texts, extra))
