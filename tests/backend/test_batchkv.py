"""backend/batchkv.py: prefill groups, left padding, rows cut and caches merged."""

from __future__ import annotations

from typing import Any

import torch

from backend.batchkv import keep_rows, left_padded, merged, prefill_groups


def test_prefill_groups_keep_order_and_the_token_budget() -> None:
    assert prefill_groups([5, 3, 7], budget=100) == [[0, 1, 2]]
    # 3 rows x 40 > 100: a new group at the third; an empty prompt goes alone.
    assert prefill_groups([10, 30, 40, 0, 2], budget=100) == [[0, 1], [2], [3], [4]]
    assert prefill_groups([500, 2, 2], budget=100) == [[0], [1, 2]]  # too long: alone
    assert prefill_groups([]) == []


def test_left_padded_positions_start_at_each_prompts_first_token() -> None:
    ids, mask, pos = left_padded([[7, 8, 9], [5]], "cpu")
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


class Layer:
    def __init__(self, keys: torch.Tensor) -> None:
        self.keys, self.values = keys, keys + 100


class Cache:
    def __init__(self, *layers: Layer) -> None:
        self.layers = list(layers)


def kv_rows(rows: list[list[int]]) -> torch.Tensor:
    """[batch, heads=1, length, dim=1] from each row's values along the length."""
    return torch.tensor(rows, dtype=torch.float32)[:, None, :, None]


def test_keep_rows_cuts_rows_and_the_padding_no_row_needs() -> None:
    cache: Any = Cache(Layer(kv_rows([[0, 0, 1], [0, 2, 3], [4, 5, 6]])))
    mask = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 1]])
    out = keep_rows(cache, mask, [0, 1])
    assert out.tolist() == [[0, 1], [1, 1]]  # the first column was padding in both
    assert cache.layers[0].keys[:, 0, :, 0].tolist() == [[0, 1], [2, 3]]
    assert cache.layers[0].values[:, 0, :, 0].tolist() == [[100, 101], [102, 103]]


def test_merged_left_pads_the_shorter_cache() -> None:
    a: Any = Cache(Layer(kv_rows([[1, 2, 3]])))
    b: Any = Cache(Layer(kv_rows([[4], [5]])))
    cache, mask = merged(a, torch.ones(1, 3), b, torch.ones(2, 1))
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 1]]
    keys = cache.layers[0].keys[:, 0, :, 0].tolist()
    assert keys == [[1, 2, 3], [0, 0, 4], [0, 0, 5]]
