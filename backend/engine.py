"""Iteration-level (continuous) batching on one model.

One thread owns the model. Between two decode steps it admits waiting requests (those that
left the queue together are prefilled together, left-padded, then their KV cache is merged
into the running batch, left-padded to a common length: ``backend.batchkv``) and drops
finished or cancelled ones (their rows are cut out of the cache). Each decode step runs every
running sequence in one forward pass.

Not transformers' ContinuousBatchingManager: on 5.24 it has one sampling seed and one
do_sample flag per manager, so "same seed, same text" cannot hold in a shared batch, and
greedy and sampled requests cannot be mixed.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from backend import batchkv as kv
from backend.detok import Detokenizer, first_stop
from backend.errors import QueueFull
from backend.sampling import SamplingParams, choose_rows, new_generator

log = logging.getLogger("geogate.backend")

DEFAULT_MAX_BATCH = 16  # running sequences; more waits in the queue
DEFAULT_MAX_WAITING = 64  # queued requests; beyond it 429
QUEUE_FULL_RETRY_AFTER_S = 1


@dataclass
class Event:
    kind: str  # "token", "finish" or "error"
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]  # called by the dispatcher (default: the engine thread)
    id: int = 0
    out_ids: list[int] = field(default_factory=list)
    cancelled: bool = False  # set by the HTTP side when the client leaves
    sent: str = ""  # text already emitted
    generator: torch.Generator | None = None
    detok: Detokenizer | None = None  # out_ids' text (an EOS left out), a window at a time
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    position: int = 0  # next position id
    observed: bool = True  # False: kept out of the metrics (the server's warm-up)


class EngineObserver:
    """Hooks for metrics; the default does nothing."""

    def queue(self, waiting: int, running: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def finished(self, seq: Sequence, seconds: float, reason: str) -> None: ...
    def tokens(self, prompt: int, generated: int) -> None: ...


QUIET = EngineObserver()  # what an unobserved sequence reports to


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_waiting: int = DEFAULT_MAX_WAITING,
        observer: EngineObserver | None = None,
        dispatch: Callable[[list[tuple[Sequence, Event]]], None] | None = None,
        prefill_tokens: int = kv.PREFILL_TOKEN_BUDGET,  # 1: each prompt prefilled alone
    ) -> None:
        self.model = model
        self.prefill_tokens = prefill_tokens
        self.tok = tokenizer
        self.device = device
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.obs = observer or EngineObserver()
        # Events of one step go out together: an asyncio server wakes once per step instead
        # of once per token, which is what keeps 16 streams from fighting over the GIL.
        self.dispatch = dispatch or _deliver_here
        self._out: list[tuple[Sequence, Event]] = []
        self.eos: set[int] = set()
        for e in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            self.eos.update(e if isinstance(e, list) else [e] if e is not None else [])
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        # Taken from the queue by the step running now, not yet in the batch (they join after
        # their group's prefill, outside the lock): submit counts them as running.
        self._admitting = 0
        # Requests given a place by reserve() and not yet submitted (their prompt is being
        # tokenized, in a thread, for seconds on a long one): each holds its place in the
        # queue meanwhile, so a burst of long prompts cannot all pass the room check at once.
        self._reserved = 0
        self._cache: Any = None  # DynamicCache with one row per running sequence
        self._mask: torch.Tensor | None = None  # [batch, cache length], 0 = left padding
        self._cond = threading.Condition()
        self._stop = False
        self._ids = itertools.count(1)
        self._cache_kw = kv.cache_keyword(model)
        self._keep_last = kv.keeps_last_logits(model)
        self._special = frozenset(getattr(tokenizer, "all_special_ids", None) or ())
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    # --- API for the HTTP side (any thread) -----------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def check_room(self) -> int:
        """Raise QueueFull if a request submitted now would be refused; else the number
        waiting (reserved places included)."""
        with self._cond:
            # Sequences cancelled while queued leave at the next step; until then they hold
            # no place. A request that a free batch slot takes at the next step is not
            # "waiting": up to max_waiting beyond a full batch, whatever the engine thread has
            # admitted yet (max_waiting=0 refuses only when the batch is full).
            waiting = self._waiting_now()
            running = self._running_now()
            if running + waiting >= self.max_batch + self.max_waiting:
                raise QueueFull(  # the sum is the limit: a burst waits before it runs
                    f"the server holds {running + waiting} requests, its limit ({running} "
                    f"running, {waiting} waiting); retry in "
                    f"{QUEUE_FULL_RETRY_AFTER_S} s or send it to another backend",
                    headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
                )
            return waiting

    def _waiting_now(self) -> int:  # under the lock
        return sum(not s.cancelled for s in self._waiting) + self._reserved

    def _running_now(self) -> int:  # under the lock; with what is being prefilled (gauges too)
        return len(self._running) + self._admitting

    def reserve(self) -> None:
        """Take a place in the queue for a request still to be tokenized, or raise QueueFull
        (a full server refuses before seconds of tokenizing a long prompt); ``submit(seq,
        reserved=True)`` uses it, ``unreserve()`` gives it back if the request fails first."""
        with self._cond:
            waiting = self.check_room()
            self._reserved += 1
            # Counted as waiting for the load gauges too: a gateway routing on them sees it.
            self.obs.queue(waiting + 1, self._running_now())

    def unreserve(self) -> None:
        with self._cond:
            self._reserved -= 1
            self.obs.queue(self._waiting_now(), self._running_now())

    def submit(self, seq: Sequence, reserved: bool = False) -> None:
        """Queue ``seq`` in the place ``reserve()`` took, or if there is room (else QueueFull)."""
        with self._cond:  # a Condition's default lock is an RLock: check_room takes it again
            if reserved:
                self._reserved -= 1
                waiting = self._waiting_now()
            else:
                waiting = self.check_room()
            seq.id = next(self._ids)
            seq.generator = new_generator(seq.params.seed)
            seq.detok = Detokenizer(self.tok, self._special)
            self._waiting.append(seq)
            self.obs.queue(waiting + 1, self._running_now())
            self._cond.notify()

    # --- the engine thread ----------------------------------------------------------------
    def step(self) -> None:
        """One iteration on the engine thread: admit what fits, one decode step, deliver."""
        with self._cond:
            # A client that gave up while queued leaves now, not when a batch slot frees up.
            gone = [s for s in self._waiting if s.cancelled]
            if gone:
                self._waiting = collections.deque(s for s in self._waiting if not s.cancelled)
            for seq in gone:
                self._finish(seq, "cancelled")
            admit: list[Sequence] = []
            while self._waiting and len(self._running) + len(admit) < self.max_batch:
                admit.append(self._waiting.popleft())
            self._admitting = len(admit)
        with torch.inference_mode():
            self._admit(admit)
            if self._running:
                try:
                    self._decode()
                except Exception as exc:  # the shared forward: the batch's cache is lost
                    log.exception("decode step failed: its %d requests fail", len(self._running))
                    for seq in self._running:
                        self._fail(seq, exc)
                    self._running, self._cache, self._mask = [], None, None
        with self._cond:  # under the lock, as reserve() writes them: a stale write never last
            self.obs.queue(self._waiting_now(), self._running_now())
        if self._out:
            out, self._out = self._out, []
            self.dispatch(out)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stop:
                    return
            self.step()

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        from transformers import DynamicCache

        if cache is None:  # no config: every layer keeps every column (batchkv: full caches)
            cache = DynamicCache()
        kw: dict[str, Any] = {self._cache_kw: cache}
        if self._keep_last:
            kw["logits_to_keep"] = 1
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kw
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits, cache  # not kept on self: it held a drained batch's memory while idle

    def _admit(self, admit: list[Sequence]) -> None:
        """Prefill what left the queue into the batch: in groups (``prefill_groups``), so a
        burst's last request waits for one prefill, not for one per request before it."""
        for group in kv.prefill_groups([len(s.prompt_ids) for s in admit], self.prefill_tokens):
            live = []
            for seq in (admit[i] for i in group):
                if seq.cancelled:
                    self._finish(seq, "cancelled")
                else:
                    live.append(seq)
            try:
                self._join_safely(live)
            finally:
                with self._cond:
                    self._admitting -= len(group)

    def _join_safely(self, seqs: list[Sequence]) -> None:
        """Prefill ``seqs`` in one pass (left-padded), then ``_join``. Only a failed pass (out
        of memory) is retried, a prompt at a time: nothing is sent yet; one fails alone."""
        if not seqs:
            return
        try:
            ids, mask, positions = kv.left_padded([s.prompt_ids for s in seqs], self.device)
            logits, cache = self._forward(ids, mask, positions, None)
        except Exception as exc:
            if len(seqs) == 1:
                log.exception("request %d failed joining the batch", seqs[0].id)
                self._fail(seqs[0], exc)
                return
            log.warning("prefilling %d requests together failed; each alone", len(seqs))
            for seq in seqs:
                self._join_safely([seq])
            return
        self._join(seqs, logits, mask, cache)

    def _join(
        self, seqs: list[Sequence], logits: torch.Tensor, mask: torch.Tensor, cache: Any
    ) -> None:
        """Sample each first token, merge the rows that go on into the running batch."""
        keep = []
        tokens = choose_rows(logits, [s.params for s in seqs], [s.generator for s in seqs])
        for i, seq in enumerate(seqs):
            seq.position = len(seq.prompt_ids)
            self._obs(seq).tokens(seq.position, 0)
            try:
                going = self._accept(seq, tokens[i])
            except Exception as exc:  # its first token: it alone fails
                log.exception("request %d failed joining the batch", seq.id)
                self._fail(seq, exc)
                going = False
            if going:
                keep.append(i)
        if not keep:
            return
        try:  # first tokens are out: from here a failure (out of memory) fails these rows
            if len(keep) < len(seqs):
                mask = kv.keep_rows(cache, mask, keep)
            self._merge([seqs[i] for i in keep], cache, mask)
        except Exception as exc:  # the batch is as it was
            log.exception("%d requests failed joining the batch", len(keep))
            for i in keep:
                self._fail(seqs[i], exc)

    def _merge(self, seqs: list[Sequence], cache: Any, mask: torch.Tensor) -> None:
        if self._cache is None or self._mask is None:  # the first rows: the batch is theirs
            self._cache, self._mask, self._running = cache, mask, list(seqs)
            return
        # Only once merged: a failure in merged() (out of memory) leaves the batch as it
        # was, so only the joining sequences fail.
        self._cache, self._mask = kv.merged(self._cache, self._mask, cache, mask)
        self._running.extend(seqs)

    def _decode(self) -> None:
        assert self._mask is not None
        seqs = self._running
        ids = torch.tensor([[s.out_ids[-1]] for s in seqs], device=self.device)
        ones = torch.ones((len(seqs), 1), dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, ones], dim=1)
        positions = torch.tensor([[s.position] for s in seqs], device=self.device)
        logits, _ = self._forward(ids, mask, positions, self._cache)  # the cache grew in place
        self._mask = mask
        keep = []
        tokens = choose_rows(logits, [s.params for s in seqs], [s.generator for s in seqs])
        for i, seq in enumerate(seqs):
            seq.position += 1
            try:
                going = self._accept(seq, tokens[i])
            except Exception as exc:  # its sampling or decoding: its row leaves, alone
                log.exception("request %d failed", seq.id)
                self._fail(seq, exc)
                going = False
            if going:
                keep.append(i)
        if len(keep) < len(seqs):
            self._shrink(keep)

    def _shrink(self, keep: list[int]) -> None:
        """Cut finished rows out of the batch, and the left padding nobody needs any more."""
        if not keep:
            self._running, self._cache, self._mask = [], None, None
            return
        assert self._mask is not None
        self._running = [self._running[i] for i in keep]
        self._mask = kv.keep_rows(self._cache, self._mask, keep)

    def _accept(self, seq: Sequence, token: int | Exception) -> bool:
        """Take the token (its row's failure is raised), emit, say whether the row goes on."""
        if seq.cancelled:
            self._finish(seq, "cancelled")
            return False
        if isinstance(token, Exception):
            raise token
        assert seq.detok is not None
        obs = self._obs(seq)
        if seq.t_first is None:
            seq.t_first = time.perf_counter()
            obs.first_token(seq.t_first - seq.t_submit)
        obs.tokens(0, 1)
        eos = token in self.eos and not seq.params.ignore_eos
        seq.out_ids.append(token)  # an EOS too: generated, and counted as OpenAI's and vLLM's
        if not eos:
            seq.detok.add(token)
        last = eos or len(seq.out_ids) >= seq.params.max_tokens
        # Going on, a partial UTF-8 character waits; at the end it is out, and a stop string
        # it completes is searched for too (else the answer could end with one).
        text = seq.detok.final() if last else seq.detok.text
        at = first_stop(text, seq.params.stop) if seq.params.stop else -1
        if at >= 0 or last:
            self._emit_text(seq, text if at < 0 else text[:at], hold=0)
            self._finish(seq, "length" if at < 0 and not eos else "stop")
            return False
        # Hold back what could still turn out to be the start of a stop string.
        hold = max((len(s) - 1 for s in seq.params.stop), default=0)
        self._emit_text(seq, text, hold)
        return True

    def _emit_text(self, seq: Sequence, text: str, hold: int) -> None:
        upto = len(text) - hold
        if upto > len(seq.sent) and text.startswith(seq.sent):
            self._out.append((seq, Event("token", text=text[len(seq.sent) : upto])))
            seq.sent = text[:upto]

    def _fail(self, seq: Sequence, exc: Exception) -> None:
        self._out.append((seq, Event("error", text=f"generation failed: {exc}")))

    def _obs(self, seq: Sequence) -> EngineObserver:
        return self.obs if seq.observed else QUIET

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._obs(seq).finished(seq, time.perf_counter() - seq.t_submit, reason)
        n, m = len(seq.prompt_ids), len(seq.out_ids)
        end = Event("finish", finish_reason=reason, prompt_tokens=n, completion_tokens=m)
        self._out.append((seq, end))


def _deliver_here(events: list[tuple[Sequence, Event]]) -> None:
    for seq, event in events:
        seq.emit(event)
