"""Per-sequence token choice: greedy at temperature 0 (or nearly), else temperature +
nucleus sampling with the sequence's own seeded generator, so a seed reproduces its text
whatever else shares the batch."""

from __future__ import annotations

from collections.abc import Sequence
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
    return draw(logits.float().cpu(), p, gen)


def choose_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    gens: Sequence[torch.Generator | None],
) -> list[int | Exception]:
    """Each row's token of ``logits`` [rows, vocab], as ``choose`` would pick it, with one wait
    on the device for all the greedy rows (one argmax, one copy back) and one copy of the
    sampled rows to the CPU: per row, each ``.item()`` was a wait on the GPU of its own (16 a
    step at batch 16). A row whose draw fails gets its exception, to fail alone; a failure
    on the device fails the rows it was for."""
    out: list[int | Exception] = [0] * len(params)
    for greedy in (True, False):
        rows = [i for i, p in enumerate(params) if (p.temperature < GREEDY_BELOW) == greedy]
        if not rows:
            continue
        try:
            part = logits if len(rows) == len(params) else logits[rows]
            picked = torch.argmax(part, dim=-1).tolist() if greedy else part.float().cpu()
        except Exception as exc:  # on the device (out of memory): these rows fail
            for i in rows:
                out[i] = exc
            continue
        for j, i in enumerate(rows):
            try:
                gen = gens[i]
                assert gen is not None, "a sampled row has its generator"
                out[i] = int(picked[j]) if greedy else draw(picked[j], params[i], gen)
            except Exception as exc:
                out[i] = exc
    return out


def draw(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
    """A sampled (not greedy) draw from one row of float32 logits on the CPU."""
    probs = torch.softmax(logits / p.temperature, dim=-1)
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
