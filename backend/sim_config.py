"""The simulated model server's knobs (``geogate sim-backend``'s flags, POST /sim/config) and
the checks they pass, the same from either."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# SimConfig.clock: whose clock paces the tokens (tokens_per_s > 0), and what it stands for.
CLOCKS = {
    "stream": "each stream's own clock from its start (streams started together stay together)",
    "random": "each stream's own clock, started a random share of a token interval late "
    "(streams that arrive at random times)",
    "lockstep": "one clock for all streams (a model server's decode steps: with continuous "
    "batching, vLLM's and TGI's, every running sequence gets its next token in the same pass)",
}
SIM_MAX_TOKENS = 1_000_000  # a simulated answer's longest


@dataclass(frozen=True)
class SimConfig:
    region: str = "local"
    models: tuple[str, ...] = ("sim-model",)
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0  # 0 = all tokens at once
    delay_ms: float = 0.0  # emulated network delay, paid once before the response starts
    error_rate: float = 0.0  # share of requests answered with error_status
    error_status: int = 500
    max_concurrency: int = 0  # 0 = unlimited; beyond it 429
    # With max_concurrency: requests past it that wait for a running one to end, as a model
    # server's scheduler queues them (vLLM's vllm:num_requests_waiting); past these, 429.
    max_waiting: int = 0
    default_tokens: int = 16
    abort_after: int = 0  # >0: drop the connection after this many content chunks
    abort_mid_event: bool = False  # ...after the first half of the next one (a cut mid-event)
    seed: int | None = None
    name: str = ""
    # Put the emission time (time.time()) in an SSE comment line before each event: clients
    # ignore comments, and a test on the same machine can compare emission with arrival.
    stamp: bool = False
    clock: str = "stream"  # one of CLOCKS
    # Send a chat stream's role chunk at once, before the first token, as some servers do
    # (vLLM, and this simulator by default, send it with the first token): POST /sim/config.
    role_first: bool = False

    def __post_init__(self) -> None:
        """Knobs that would break streams mid-answer (a lockstep step of 1/inf) are refused, and
        a switch that is no bool: POST /sim/config {"role_first": "false"} was taken as true
        (a non-empty string), the opposite of what was asked."""
        if self.clock not in CLOCKS:
            raise ValueError(f"clock: one of {', '.join(CLOCKS)}, not {self.clock!r}")
        if not isinstance(self.role_first, bool):
            raise ValueError(f"role_first: true or false, not {self.role_first!r}")
        for knob in ("ttft_ms", "tokens_per_s", "delay_ms"):
            value = getattr(self, knob)
            if not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{knob}: a finite number of at least 0, not {value!r}")
        # As the CLI checks them: {"error_rate": "x"} by /sim/config made every request a 500.
        rate = self.error_rate
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise ValueError(f"error_rate: a number from 0 to 1, not {rate!r}")
        status = self.error_status
        if type(status) is not int or not 400 <= status <= 599:
            raise ValueError(f"error_status: a whole number from 400 to 599, not {status!r}")


def max_tokens(req: dict[str, Any], default: int) -> int:
    """max_completion_tokens first, as the model server reads them: a whole number from 1 to
    SIM_MAX_TOKENS (10**31 of them, at once, held the loop for good)."""
    for key in ("max_completion_tokens", "max_tokens"):
        if (value := req.get(key)) is not None:
            if type(value) is not int or not 1 <= value <= SIM_MAX_TOKENS:
                raise ValueError(
                    f"{key} must be a whole number from 1 to {SIM_MAX_TOKENS}, not {value!r}"
                )
            return value
    return default
