"""Per-sequence token choice: greedy at temperature 0 (or nearly), else temperature +
nucleus sampling with the sequence's own seeded generator, so a seed reproduces its text
whatever else shares the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Below this temperature sampling is greedy: logits / 1e-40 overflow float32 to inf and
# softmax gives NaN, which multinomial refuses; long before that (a 1e-3 gap in logits is
# already e^-100 apart at 1e-5) the draw is the argmax anyway.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever comes (benchmarks)


def new_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def choose(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
    """``logits``: [vocab] on any device; the draw happens on the CPU generator."""
    if p.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float().cpu() / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        keep = cum - sorted_p < p.top_p  # the smallest prefix whose mass reaches top_p
        # The most probable token always: a top_p below float32's smallest value (1e-46)
        # rounds to 0.0 in that comparison and kept none, and multinomial raised on the
        # all-zero row, a 500 for a valid request. Such a nucleus is that one token: greedy.
        keep[0] = True
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
        return int(idx[choice].item())
    return int(torch.multinomial(probs, 1, generator=gen).item())
