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


@pytest.fixture(scope="module")
def straddling() -> Any:
    """A byte-level BPE whose merges cross characters (no pre-split into words): a token can
    end inside one CJK character or emoji and begin the next."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "日本語のテキストです。中文字符和日本語が混ざっています。東京都大阪府京都府北海道" * 3,
        "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇 emoji 家族 家族 家族",
        "한국어 텍스트 입니다 안녕하세요 감사합니다",
    ] * 50
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe)  # type: ignore[no-untyped-call]


def test_tokens_that_end_inside_characters_still_give_the_whole_decode(straddling: Any) -> None:
    # A cap of 4 pending tokens sent a half character out as U+FFFD for good: "中文字符和日本語
    # が混ざってい�す" where the whole decode says "います".
    rng = random.Random(0)
    chars = "日本語中文字符😀😃家族감사"
    texts = ["中文字符和日本語が混ざっています", "東京都大阪府京都府北海道", "😀😃😄😁😆 家族"]
    texts += ["".join(rng.choice(chars) for _ in range(rng.randrange(3, 30))) for _ in range(300)]
    straddled = 0
    for text in texts:
        ids = straddling(text, add_special_tokens=False)["input_ids"]
        d, steps = feed(straddling, ids)
        assert d.final() == straddling.decode(ids) == text, text
        assert steps[-1] == text and all(PARTIAL not in step for step in steps)
        for a, b in itertools.pairwise(steps):
            assert b.startswith(a)
        straddled += any(PARTIAL in straddling.decode(ids[:k]) for k in range(1, len(ids)))
    assert straddled > 100  # the tokenizer does split characters: the case is exercised


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
    assert counting.decoded < 10 * len(ids)  # about 4.4 a token: windows close often
    # A run of tokens that decode to nothing (EOS after EOS, with ignore_eos) kept the window
    # open: 2,000 of them decoded 2,014,996 ids. Special ids stay out of it.
    eos = byte_level.eos_token_id
    counting.decoded = 0
    d, _ = feed(counting, ids[:5] + [eos] * 2000 + ids[5:10], frozenset([eos]))
    assert counting.decoded < 10 * 2010
    assert d.final() == byte_level.decode(ids[:10])


def test_the_earliest_stop_string_in_the_text_wins_not_the_first_listed() -> None:
    from backend.detok import first_stop

    assert first_stop("ab", ("b", "a")) == 0
    assert first_stop("xyz", ("q",)) == -1 and first_stop("xyz", ()) == -1
