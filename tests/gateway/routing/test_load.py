from __future__ import annotations

from urllib.parse import parse_qs

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.routing import load
from gateway.routing.load import parse_load

VLLM = """# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 3.0
vllm:num_requests_waiting{model_name="b"} 2.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 8.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="a"} 0.25
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="a"} 4.0
vllm:time_to_first_token_seconds_sum{model_name="a"} 0.8
vllm:time_to_first_token_seconds_count{model_name="a"} 4.0
"""


@pytest.mark.parametrize(
    ("text", "queue", "running", "kv"),
    [
        (VLLM, 5.0, 8.0, 0.25),
        (
            "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.5\n",
            None,
            None,
            0.5,
        ),
        (
            "# TYPE tgi_queue_size gauge\ntgi_queue_size 7\n# TYPE tgi_batch_current_size gauge\n"
            "tgi_batch_current_size 3\n",
            7.0,
            3.0,
            None,
        ),
        (
            '# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{engine="0"} 2\n'
            'sglang:num_queue_reqs{engine="1"} 1\n# TYPE sglang:num_running_reqs gauge\n'
            "sglang:num_running_reqs 6\n",
            3.0,
            6.0,
            None,
        ),
        ("# nothing we know\nother_metric 1\n", None, None, None),
    ],
)
def test_every_server_family(
    text: str, queue: float | None, running: float | None, kv: float | None
) -> None:
    r = parse_load(text)
    assert (r.queue_depth, r.running, r.kv_usage) == (queue, running, kv)


def test_ttft_histogram_totals() -> None:
    r = parse_load(VLLM)
    assert (r.ttft_sum_s, r.ttft_count) == (0.8, 4.0)


def test_a_gateways_published_ttft_is_taken_as_it_is() -> None:
    from gateway.routing.load import next_load

    text = (
        "# TYPE geogate_region_ttft_seconds gauge\n"
        'geogate_region_ttft_seconds{region="ap-southeast"} 0.6\n'
    )
    r = parse_load(text)
    assert r.ttft_ms == pytest.approx(600.0) and r.ttft_sum_s is None
    before = next_load(None, parse_load(text.replace("0.6", "0.04")), 0.0, 2.0, 0.3)
    after = next_load(before, r, 0.25, 2.0, 0.3)
    # no second smoothing (0.3 x 600 + 0.7 x 40 would be 208), confirmed now
    assert after.ttft_ms == pytest.approx(600.0) and after.ttft_at == 0.25


def test_expected_ttft_is_the_best_routable_upstreams_load_term() -> None:
    from gateway.routing.load import expected_ttft_ms
    from gateway.routing.model import UpstreamView

    def up(i: str, ttft: float | None, **kw: object) -> UpstreamView:
        return UpstreamView(id=i, region="r", models=frozenset({"m"}), ttft_ms=ttft, **kw)  # type: ignore[arg-type]

    assert expected_ttft_ms([up("a", None), up("b", None)]) is None  # unmeasured, not 0
    assert expected_ttft_ms([up("a", 100.0, queue_depth=16.0), up("b", 300.0)]) == 200.0
    # an unmeasured one takes the median of the measured (the router's prior)
    assert expected_ttft_ms([up("a", 400.0), up("b", 600.0), up("c", None)]) == 400.0
    # drained, unhealthy and standby upstreams serve nobody
    slow = up("s", 500.0)
    for fast in (up("f", 5.0, drained=True), up("f", 5.0, healthy=False), up("f", 5.0, weight=0)):
        assert expected_ttft_ms([slow, fast]) == 500.0
    assert expected_ttft_ms([up("f", 5.0, healthy=False)]) is None


# A vLLM-like exposition: the families parse_load reads, with labels and buckets, among others
# it skips (process metrics, a look-alike name, a label value naming a family, counters).
BUSY_VLLM = """# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 1234.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:num_requests_running{engine="1",model_name="m"} 5.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{reason="vllm:num_requests_waiting"} 99.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 10.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 12.0
vllm:time_to_first_token_seconds_count{model_name="m"} 12.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 1.5
vllm:time_to_first_token_seconds_count{model_name="n"} 3.0
vllm:time_to_first_token_seconds_sum{model_name="n"} 0.9
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="m"} 5000.0
# TYPE tgi_queue_size gauge
tgi_queue_size 4.0
"""


# What a label value, a timestamp or an odd spacing must not confuse.
ODD = """# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a b} 9 {c=\\"d\\"}",engine="0"} 2.5 1700000000000
vllm:num_requests_waiting {model_name="x"} 1e1
# TYPE geogate_region_ttft_seconds gauge
geogate_region_ttft_seconds{region="a"} 0.25
geogate_region_ttft_seconds{region="b"} 0.125
# TYPE tgi_queue_size gauge
tgi_queue_size +Inf
"""


def reference(text: str) -> load.LoadReading:
    """What parse_load read before ``load.samples``: prometheus_client's parser on the whole
    text (families by name, samples by their own names)."""
    values: dict[str, float] = {}
    ttft_sum = ttft_count = ttft_now = None
    for family in text_string_to_metric_families(text):
        name = family.name
        if name == load.REGION_TTFT and family.samples:
            ttft_now = 1000 * min(s.value for s in family.samples)
        elif name in load.QUEUE or name in load.RUNNING or name in load.KV_USAGE:
            values[name] = sum(s.value for s in family.samples if s.name == name)
        elif name in load.TTFT_HISTOGRAMS:
            for s in family.samples:
                if s.name == f"{name}_sum":
                    ttft_sum = (ttft_sum or 0.0) + s.value
                elif s.name == f"{name}_count":
                    ttft_count = (ttft_count or 0.0) + s.value

    def first(names: tuple[str, ...]) -> float | None:
        return next((values[n] for n in names if n in values), None)

    queue, running, kv = first(load.QUEUE), first(load.RUNNING), first(load.KV_USAGE)
    return load.LoadReading(queue, running, kv, ttft_sum, ttft_count, ttft_now)


@pytest.mark.parametrize("text", [BUSY_VLLM, BUSY_VLLM.replace("vllm:", "sglang:"), VLLM, ODD, ""])
def test_reading_names_and_values_reads_what_prometheus_clients_parser_does(text: str) -> None:
    assert parse_load(text) == reference(text)


def test_only_what_is_read_counts() -> None:
    reading = parse_load(BUSY_VLLM)  # not the look-alike, the buckets or the label value
    assert (reading.running, reading.queue_depth, reading.kv_usage) == (12.0, 3.0, 0.42)
    assert (reading.ttft_sum_s, reading.ttft_count) == (2.4, 15.0)
    odd = parse_load(ODD)
    assert (odd.queue_depth, odd.ttft_ms) == (12.5, 125.0)  # labels, timestamp, spacing
    assert parse_load("<html>no metrics</html>\n") == load.LoadReading()  # unmeasured


@pytest.mark.parametrize("line", ["tgi_queue_size many", "tgi_queue_size", 'tgi_queue_size{a="b"}'])
def test_a_value_that_is_no_number_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_load(line + "\n")  # the poller records nothing for it


def test_the_scrape_query_names_every_sample_read_and_nothing_else() -> None:
    names = parse_qs(load.SCRAPE_QUERY, strict_parsing=True)["name[]"]
    assert set(names) == set(load._SAMPLES) and len(names) == len(load._SAMPLES)
    assert parse_qs(load.SCRAPE_QUERY).keys() == {"name[]"}


@pytest.mark.parametrize("server", [0, 2])  # vLLM's names, SGLang's
def test_a_scrape_filtered_by_prometheus_clients_own_handler_reads_the_same(server: int) -> None:
    """The server side of SCRAPE_QUERY as prometheus_client's exposition handler does it:
    only the samples named, read to the same figures as the whole text."""
    registry = CollectorRegistry()
    queue = Gauge(load.QUEUE[server], "q", ["model_name"], registry=registry)
    queue.labels("a").set(3)
    queue.labels("b").set(2)
    Gauge(load.RUNNING[server], "r", registry=registry).set(8)
    Gauge(load.KV_USAGE[server], "kv", registry=registry).set(0.25)
    ttft = Histogram(load.TTFT_HISTOGRAMS[server // 2], "t", registry=registry)
    for s in (0.1, 0.3):
        ttft.observe(s)
    Counter("process_cpu_seconds", "other", registry=registry).inc(5)
    whole = generate_latest(registry)
    names = parse_qs(load.SCRAPE_QUERY)["name[]"]
    part = generate_latest(registry.restricted_registry(names))
    assert len(part) < len(whole) / 2 and b"process_cpu" not in part and b"_bucket" not in part
    reading = parse_load(part.decode())
    assert reading == parse_load(whole.decode())
    assert (reading.queue_depth, reading.running, reading.kv_usage) == (5.0, 8.0, 0.25)
    assert reading.ttft_count == 2.0 and reading.ttft_sum_s == pytest.approx(0.4)


def test_a_summed_histogram_whose_sum_falls_is_a_reset_not_a_negative_ttft() -> None:
    # Two engines' histograms summed: one restarts (its sum and count drop) while the other
    # serves on, so the total count rises while the total sum falls.
    before = load.next_load(
        None, load.LoadReading(ttft_sum_s=50.0, ttft_count=100.0), 0.0, 2.0, 0.3
    )
    before.ttft_ms, before.ttft_at = 80.0, 0.0
    after = load.next_load(
        before, load.LoadReading(ttft_sum_s=5.0, ttft_count=110.0), 0.25, 2.0, 0.3
    )
    assert after.ttft_ms == 80.0  # the last estimate stands; the next interval re-baselines
    later = load.next_load(after, load.LoadReading(ttft_sum_s=6.0, ttft_count=120.0), 0.5, 2.0, 0.3)
    assert later.ttft_ms is not None and later.ttft_ms > 0
