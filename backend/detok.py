"""A sequence's text as its tokens come, in time that does not grow with its length.

Decoding every generated token again at each step (``tok.decode(all_ids)``) costs O(n) a
token, O(n²) a sequence: with this project's tokenizer about 0.6 ms at 4,096 tokens, so 9 ms
of every decode step at 16 sequences of that length (bench/results/detok.md).
Instead, as vLLM's incremental detokenizer does, decode a window: the tokens since the last
point where the text was whole, with the few before them as context (a SentencePiece decoder
drops the leading space of a window's first token; the context's text is subtracted again).
"""

from __future__ import annotations

from typing import Any

PARTIAL = "\ufffd"  # what a decoder shows for the bytes of a character not all here yet
# Pending tokens after which bytes that still end in U+FFFD go out as it: not UTF-8 (a random
# model's), not a character on its way. Not sooner: a byte-level BPE token can end inside one
# character and begin the next (the tail of a CJK character and the head of another), so a run
# of such tokens ends in a partial character token after token. A cap of 4 tokens, taken as
# "a character is at most 4 bytes", put a U+FFFD into valid text for good (CJK and emoji on a
# byte-level BPE: tests/backend/test_detok.py). The window stays bounded for a random model.
MAX_PENDING = 32


class Detokenizer:
    def __init__(self, tokenizer: Any, special: frozenset[int] = frozenset()) -> None:
        self.tok = tokenizer
        # What a decode skips (skip_special_tokens): kept out of the window, which a run of
        # them (an EOS after EOS, with ignore_eos) would otherwise grow without end.
        self.special = special
        self.ids: list[int] = []  # the tokens with text, so far
        self.text = ""  # the whole characters decoded so far
        self.prefix = 0  # the window's context starts here...
        self.read = 0  # ...and its new tokens here: ids[read:] are not all in ``text`` yet
        self.sent = 0  # characters of the open window's text already in ``text``

    def _new(self) -> str:
        ids = self.ids
        context: str = self.tok.decode(ids[self.prefix : self.read], skip_special_tokens=True)
        window: str = self.tok.decode(ids[self.prefix :], skip_special_tokens=True)
        return window[len(context) :]

    def add(self, token: int) -> str:
        """The text so far, ``token`` the newest, without a character whose bytes are not all
        here yet: that one waits for the next tokens, and the characters before it go now."""
        if token in self.special:
            return self.text
        self.ids.append(token)
        new = self._new()
        if not new:  # nothing yet (a lone space a SentencePiece decoder drops): the window stays
            return self.text
        whole = new.rstrip(PARTIAL)
        if len(whole) == len(new) or len(self.ids) - self.read >= MAX_PENDING:
            # The window's text is whole (or its bytes never made a character): it closes.
            self.text += new[self.sent :]
            self.sent = 0
            self.prefix, self.read = self.read, len(self.ids)
        elif len(whole) > self.sent:  # the characters before the partial one
            self.text += whole[self.sent :]
            self.sent = len(whole)
        return self.text

    def final(self) -> str:
        """The whole text at the sequence's end, a partial character included (as U+FFFD, as
        a whole decode shows it)."""
        return self.text + self._new()[self.sent :]


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the earliest of ``stops`` begins in ``text``, or -1: the earliest in the text,
    not the first in the list (with stops ("b", "a") the text "ab" ends before "a")."""
    found = [at for at in (text.find(s) for s in stops) if at >= 0]
    return min(found, default=-1)
