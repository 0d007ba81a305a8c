from __future__ import annotations

from gateway.config import Config
from gateway.fleet.memory import MemoryStateStore
from gateway.routing.load import LoadReading

CFG = Config.model_validate(
    {
        "gateway": {"region": "eu"},
        "load": {"max_age_s": 2.0},
        "regions": [{"id": "eu", "latitude": 50, "longitude": 8}],
        "upstreams": [{"id": "a", "region": "eu", "url": "http://127.0.0.1:1/", "models": ["m"]}],
    }
)


def view(s: MemoryStateStore, now: float) -> tuple[float | None, float | None]:
    u = s.snapshot(now).upstreams[0]
    return u.ttft_ms, u.queue_depth


def test_ttft_is_the_mean_between_polls_and_stale_samples_are_ignored() -> None:
    s = MemoryStateStore(CFG)
    s.record_load("a", LoadReading(queue_depth=1, ttft_sum_s=1.0, ttft_count=10), now=0.0)
    assert view(s, 0.0) == (None, 1)  # one cumulative reading says nothing about "recent"
    s.record_load("a", LoadReading(queue_depth=4, ttft_sum_s=3.0, ttft_count=20), now=1.0)
    assert view(s, 1.0) == (200.0, 4)  # (3.0 - 1.0) s / 10 requests
    assert view(s, 2.9) == (200.0, 4)  # 1.9 s old: still used
    assert view(s, 3.0) == (None, None)  # load.max_age_s old: ignored, not trusted


def test_config_replacement_keeps_health_and_url_is_normalised() -> None:
    s = MemoryStateStore(CFG)
    s.record_probe("a", False, None, "refused")
    s.replace_config(CFG)
    u = s.snapshot(0.0).upstreams[0]
    assert not u.healthy and u.url == "http://127.0.0.1:1"


def test_an_unconfirmed_ttft_expires_so_a_shunned_backend_is_retried() -> None:
    s = MemoryStateStore(CFG)
    s.record_load("a", LoadReading(ttft_sum_s=0.0, ttft_count=0), now=0.0)
    s.record_load("a", LoadReading(ttft_sum_s=2.0, ttft_count=10), now=1.0)  # 200 ms
    for t in (1.5, 2.0, 2.5):  # polls go on, but no request confirms the TTFT
        s.record_load("a", LoadReading(ttft_sum_s=2.0, ttft_count=10), now=t)
    assert view(s, 2.9) == (200.0, None)
    s.record_load("a", LoadReading(ttft_sum_s=2.0, ttft_count=10), now=3.5)
    assert view(s, 3.5)[0] is None  # 2.5 s unconfirmed: back to unknown, so tried again


def test_ejection_never_takes_more_than_the_capped_share() -> None:
    ups = [
        {"id": f"u{i}", "region": "eu", "url": f"http://127.0.0.1:{i + 1}", "models": ["m"]}
        for i in range(3)
    ]
    cfg = Config.model_validate(
        {
            **CFG.model_dump(),
            "upstreams": ups,
            "outlier": {"consecutive_failures": 2, "max_ejected_share": 0.1},
        }
    )
    s = MemoryStateStore(cfg)
    for uid in ("u0", "u1"):
        for _ in range(2):
            s.record_result(uid, False, now=1.0)
    # 10 % of 3 rounds down to 0, but one may always go (Envoy's rule): u0 only.
    assert [u.healthy for u in s.snapshot(1.0).upstreams] == [False, True, True]


def test_a_reconfirmed_estimate_restarts_from_the_new_measurement() -> None:
    s = MemoryStateStore(CFG)
    s.record_load("a", LoadReading(ttft_sum_s=0.0, ttft_count=0), now=0.0)
    s.record_load("a", LoadReading(ttft_sum_s=0.05, ttft_count=10), now=1.0)  # 5 ms
    s.record_load("a", LoadReading(ttft_sum_s=0.05, ttft_count=10), now=3.5)  # expired
    s.record_load("a", LoadReading(ttft_sum_s=1.55, ttft_count=20), now=4.0)  # 150 ms
    assert view(s, 4.0)[0] == 150.0  # not 0.3 * 150 + 0.7 * 5


def test_a_polling_round_is_applied_at_once() -> None:
    ups = [
        {"id": f"u{i}", "region": "eu", "url": f"http://127.0.0.1:{i + 1}", "models": ["m"]}
        for i in range(3)
    ]
    s = MemoryStateStore(Config.model_validate({**CFG.model_dump(), "upstreams": ups}))
    before = s.snapshot(0.0)
    s.record_loads(
        {f"u{i}": LoadReading(queue_depth=float(i), kv_usage=0.5) for i in range(3)}
        | {"gone": LoadReading(queue_depth=9.0)},
        now=0.0,
    )  # unknown: ignored
    after = s.snapshot(0.0)
    assert after is not before and after is s.snapshot(0.0)  # one rebuild for the round
    assert [u.queue_depth for u in after.upstreams] == [0.0, 1.0, 2.0]
    load = s.load("u1")
    assert load is not None and load.kv_usage == 0.5 and s.load("gone") is None
