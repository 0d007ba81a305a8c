from __future__ import annotations

import math

import torch

from backend.sampling import SamplingParams, choose, choose_rows, new_generator


def test_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert choose(logits, SamplingParams(4, temperature=0), new_generator(1)) == 1


def test_seeded_sampling_repeats_and_top_p_cuts_the_tail() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = SamplingParams(4, temperature=1.0, top_p=0.8)
    draws = [choose(logits, p, g) for g in [new_generator(7)] for _ in range(200)]
    again = [choose(logits, p, g) for g in [new_generator(7)] for _ in range(200)]
    assert draws == again
    assert set(draws) == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are never drawn
    wide = {
        choose(logits, SamplingParams(4, temperature=1.0), new_generator(s)) for s in range(200)
    }
    assert wide == {0, 1, 2, 3}


def test_a_vanishing_temperature_is_greedy() -> None:
    # logits / 1e-40 overflow to inf, softmax gives NaN and multinomial raised.
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    for t in (1e-40, 1e-6):
        assert choose(logits, SamplingParams(4, temperature=t), new_generator(1)) == 1


def test_a_vanishing_top_p_keeps_the_most_probable_token() -> None:
    # 1e-46 rounds to 0.0 against float32 probabilities: no token was kept and multinomial
    # raised "probability tensor contains either inf, nan or element < 0" (a 500).
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    for top_p in (1e-46, 1e-300, 1e-30):
        p = SamplingParams(4, temperature=1.0, top_p=top_p)
        assert {choose(logits, p, new_generator(s)) for s in range(20)} == {1}


def test_rows_chosen_together_are_the_tokens_each_row_gets_alone() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    params = [
        SamplingParams(4, temperature=0),
        SamplingParams(4, temperature=0.8, seed=1),
        SamplingParams(4, temperature=0),
        SamplingParams(4, temperature=1.2, top_p=0.5, seed=2),
        SamplingParams(4, temperature=math.nan, seed=3),  # its draw raises: it fails alone
        SamplingParams(4, temperature=1e-6),  # greedy below GREEDY_BELOW
    ]
    together = choose_rows(logits, params, [new_generator(p.seed) for p in params])
    alone: list[int | type[Exception]] = []
    for row, p in zip(logits, params, strict=True):
        try:
            alone.append(choose(row, p, new_generator(p.seed)))
        except RuntimeError:
            alone.append(RuntimeError)
    assert [type(t) if isinstance(t, Exception) else t for t in together] == alone
    assert alone[4] is RuntimeError and all(isinstance(t, int) for t in alone[:4])
    assert choose_rows(logits[:0], [], []) == []  # an empty step picks nothing
