"""backend/detok.py: the text of a growing token list, a window at a time, equal to decoding
them all, on the project's byte-level tokenizer and on a SentencePiece one."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from backend.detok import MAX_PENDING, PARTIAL, Detokenizer

TEXTS = [
    "hello world, café crème brûlée",
    "中文 字符 测试 hello",
    "emoji 🎉 party 🎉🎉 time",
    "  two leading spaces, then the quick brown fox",
]


@pytest.fixture(scope="module")
def byte_level(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def sentencepiece() -> Any:
    # Its decoder drops the space before a decode's first word: a window must not.
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(TEXTS * 10, vocab_size=300, min_frequency=1, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer)  # type: ignore[no-untyped-call]


def feed(
    tok: Any, ids: list[int], special: frozenset[int] = frozenset()
) -> tuple[Detokenizer, list[str]]:
    d = Detokenizer(tok, special)
    return d, [d.add(token) for token in ids]


@pytest.mark.parametrize("which", ["byte_level", "sentencepiece"])
def test_token_by_token_text_is_the_whole_decode(which: str, request: Any) -> None:
    tok = request.getfixturevalue(which)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        d, steps = feed(tok, ids)
        whole = tok.decode(ids, skip_special_tokens=True)
        assert d.final() == whole
        assert steps[-1] == whole  # valid UTF-8: nothing left pending at the end
        for a, b in itertools.pairwise(steps):
            assert b.startswith(a) and PARTIAL not in b  # grows; never a half character


def test_a_character_split_over_tokens_waits_for_its_last_byte(byte_level: Any) -> None:
    ids = byte_level("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # this tokenizer spells it in several byte tokens
    _, steps = feed(byte_level, ids)
    assert steps[:-1] == [""] * (len(ids) - 1) and steps[-1] == "🎉"
    cut, _ = feed(byte_level, ids[:1])  # the sequence ends there: shown as a whole decode would
    assert cut.final() == byte_level.decode(ids[:1]) and cut.final().endswith(PARTIAL)


def test_bytes_that_are_not_utf8_do_not_hold_the_window_open(byte_level: Any) -> None:
    rng = random.Random(7)
    ids = [rng.randrange(3, byte_level.vocab_size) for _ in range(400)]
    d, steps = feed(byte_level, ids)
    assert len(ids) - d.prefix <= 2 * MAX_PENDING  # the window stays a few tokens
    assert d.final().startswith(steps[-1])


class Counting:
    """A tokenizer that counts the ids it is asked to decode."""

    def __init__(self, tok: Any) -> None:
        self.tok, self.decoded = tok, 0

    def decode(self, ids: list[int], **kw: Any) -> str:
        self.decoded += len(ids)
        text: str = self.tok.decode(ids, **kw)
        return text


def test_each_token_costs_a_window_not_the_whole_sequence(byte_level: Any) -> None:
    ids = byte_level(" ".join(TEXTS) * 40, add_special_tokens=False)["input_ids"][:2000]
    counting = Counting(byte_level)
    feed(counting, ids)
    # Decoding every id at each token would be len(ids)² / 2 = 2,000,000 here.
    assert counting.decoded < 10 * MAX_PENDING * len(ids)
    # A run of tokens that decode to nothing (EOS after EOS, with ignore_eos) kept the window
    # open: 2,000 of them decoded 2,014,996 ids. Special ids stay out of it.
    eos = byte_level.eos_token_id
    counting.decoded = 0
    d, _ = feed(counting, ids[:5] + [eos] * 2000 + ids[5:10], frozenset([eos]))
    assert counting.decoded < 10 * MAX_PENDING * 2010
    assert d.final() == byte_level.decode(ids[:10])


def test_the_earliest_stop_string_in_the_text_wins_not_the_first_listed() -> None:
    from backend.detok import first_stop

    assert first_stop("ab", ("b", "a")) == 0
    assert first_stop("xyz", ("q",)) == -1 and first_stop("xyz", ()) == -1
