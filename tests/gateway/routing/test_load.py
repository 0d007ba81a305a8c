from __future__ import annotations

import pytest

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
