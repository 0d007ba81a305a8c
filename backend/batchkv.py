"""The batch's tensors: left-padded prompts, prefill groups, and KV-cache rows cut and merged.

The engine keeps one KV cache for all running sequences, left-padded to a common length (a
mask says which columns are real). These are the tensor operations on it, apart from the
scheduling in ``backend.engine``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

# Prompts prefilled together in one forward pass hold at most this many tokens, padding
# included (rows x the longest prompt): a burst of short prompts goes in one pass, so the
# sixteenth request of a burst does not wait for fifteen prefills before its first token,
# while a few long prompts are not padded into one huge activation.
PREFILL_TOKEN_BUDGET = 8192


def cache_keyword(model: Any) -> str:
    """The name under which this model's forward() takes the KV cache.

    transformers renamed ``past_key_values`` to ``cache`` in 5.2x (5.17 still has the old name;
    5.24 has the new one and accepts the old until 5.40). Given the name it does not know, a
    model ignores the cache it was handed, so every decode step would run without the past:
    on 5.17 the engine failed every request. Ask the signature, which the deprecation wrapper
    passes through.
    """
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def keeps_last_logits(model: Any) -> bool:
    """Whether forward() takes ``logits_to_keep``: with 1, a prefill computes the logits of
    the last position only, not a [rows, prompt length, vocabulary] tensor it throws away
    (a 4,000-token prompt and a 128 k vocabulary: 2 GB in float32)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def prefill_groups(lengths: Sequence[int], budget: int = PREFILL_TOKEN_BUDGET) -> list[list[int]]:
    """Indices of the prompts to prefill together, in order: consecutive prompts while rows x
    the longest stays within ``budget``. An empty prompt goes alone (its prefill raises, and
    must fail only its own request); so does a prompt longer than the budget."""
    groups: list[list[int]] = []
    group: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if n == 0 or (group and max(longest, n) * (len(group) + 1) > budget):
            if group:
                groups.append(group)
            group, longest = [], 0
        if n == 0:
            groups.append([i])
            continue
        group.append(i)
        longest = max(longest, n)
    if group:
        groups.append(group)
    return groups


def left_padded(
    prompts: Sequence[Sequence[int]], device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of prompts padded on the left to the
    longest: each prompt's positions start at 0 at its own first token, as it would alone."""
    width = max(len(p) for p in prompts)
    ids = [[0] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    m = torch.tensor(mask, dtype=torch.long, device=device)
    positions = (m.cumsum(1) - 1).clamp(min=0)
    return torch.tensor(ids, device=device), m, positions


def left_pad(t: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


# Full caches: the engine makes every DynamicCache without the model's config, so every layer
# keeps every column, also a sliding-window model's (Mistral's, Gemma's), whose window the
# attention mask applies. Given the config, those layers keep only the window's last columns,
# and cutting or padding columns by the batch's mask (keep_rows, merged) cut the wrong ones:
# the whole batch failed when a long row left it.


def keep_rows(cache: Any, mask: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Cut ``cache`` (in place) and ``mask`` down to the rows ``keep``, and the left padding
    no row needs any more; returns the new mask."""
    idx = torch.tensor(keep, device=mask.device)
    mask = mask.index_select(0, idx)
    drop = int((mask.sum(0) == 0).long().cumprod(0).sum().item())  # all-pad columns
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, idx)[:, :, drop:]
        layer.values = layer.values.index_select(0, idx)[:, :, drop:]
    return mask[:, drop:]


def merged(a: Any, a_mask: torch.Tensor, b: Any, b_mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Caches ``a`` and ``b`` as one (``a``'s rows first), both left-padded to the longer;
    returns (cache, mask). Builds new tensors: a failure here (out of memory) leaves both."""
    from transformers import DynamicCache

    length = max(a_mask.shape[1], b_mask.shape[1])
    layers = []
    for x, y in zip(a.layers, b.layers, strict=True):
        k = torch.cat([left_pad(x.keys, length), left_pad(y.keys, length)])
        v = torch.cat([left_pad(x.values, length), left_pad(y.values, length)])
        layers.append((k, v))
    cache = DynamicCache(ddp_cache_data=layers)  # no config: see above (full caches)
    mask = torch.cat([left_pad(a_mask, length, dim=1), left_pad(b_mask, length, dim=1)])
    return cache, mask
