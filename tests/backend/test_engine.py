"""The scheduler in-process: joins and leaves between decode steps, cancellation, queue."""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.engine import Engine, EngineObserver, Event, Sequence
from backend.errors import QueueFull
from backend.sampling import SamplingParams, draw


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> Any:
    from backend.loader import load_model

    return load_model(model_dir)


@pytest.fixture
def engine(loaded: Any) -> Iterator[Engine]:
    e = Engine(loaded.model, loaded.tokenizer, loaded.device, max_batch=4, max_waiting=8)
    e.start()
    yield e
    e.stop()


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, e: Event) -> None:
        self.events.append(e)
        if e.kind != "token":
            self.done.set()

    def text(self) -> str:
        assert self.done.wait(60)
        return "".join(e.text for e in self.events if e.kind == "token")


def submit(engine: Engine, tok: Any, prompt: str, **kw: Any) -> Collector:
    c = Collector()
    params = SamplingParams(**{"max_tokens": 16, "temperature": 0, "ignore_eos": True, **kw})
    engine.submit(Sequence(tok(prompt)["input_ids"], params, c))
    return c


def test_staggered_joins_match_solo_runs(engine: Engine, loaded: Any) -> None:
    prompts = ["hello", "the quick brown fox", "a", "users in london", "sydney"]
    solo = [submit(engine, loaded.tokenizer, p).text() for p in prompts]
    # Five prompts with different lengths and max_tokens through a batch of four: requests
    # join while others are mid-generation and leave at different steps.
    runs = [submit(engine, loaded.tokenizer, p, max_tokens=16) for p in prompts]
    assert [r.text() for r in runs] == solo
    finish = [r.events[-1] for r in runs]
    assert all(f.finish_reason == "length" and f.completion_tokens == 16 for f in finish)


def test_cancel_stops_at_the_next_step(engine: Engine, loaded: Any) -> None:
    c = Collector()
    seq = Sequence(
        loaded.tokenizer("hello")["input_ids"],
        SamplingParams(max_tokens=400, temperature=0, ignore_eos=True),
        c,
    )
    seen = threading.Event()
    original = c.__call__

    def emit(e: Event) -> None:
        original(e)
        if len(c.events) == 3:
            seq.cancelled = True
            seen.set()

    seq.emit = emit
    engine.submit(seq)
    assert c.done.wait(30)
    assert c.events[-1].finish_reason == "cancelled"
    assert c.events[-1].completion_tokens <= 4  # cancelled during step 3: one more at most


def test_queue_bound(loaded: Any) -> None:
    e = Engine(loaded.model, loaded.tokenizer, loaded.device, max_batch=1, max_waiting=2)
    params = SamplingParams(max_tokens=4, temperature=0)
    ids = loaded.tokenizer("hi")["input_ids"]
    for _ in range(3):  # one for the batch's slot at the next step, two beyond it
        e.submit(Sequence(ids, params, Collector()))
    with pytest.raises(QueueFull) as err:  # not started: nothing leaves the queue
        e.submit(Sequence(ids, params, Collector()))
    assert err.value.headers["Retry-After"] == "1"
    # what it holds against its limit: none admitted yet, so all three wait
    assert err.value.message.startswith(
        "the server holds 3 requests, its limit (0 running, 3 waiting)"
    )


def drain(engine: Engine, *runs: Collector) -> None:
    """Step an engine that was not started (on this thread) until every run has ended."""
    while not all(r.done.is_set() for r in runs):
        engine.step()


def test_a_failing_sequence_fails_alone(loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = loaded.tokenizer
    e = Engine(loaded.model, tok, loaded.device)
    alone = submit(e, tok, "the quick brown fox", max_tokens=24)
    drain(e, alone)
    calls = 0

    def flaky(logits: Any, p: SamplingParams, gen: Any) -> int:
        nonlocal calls
        if p.seed == 13:  # the third token of this one fails (a decode step, not its join)
            calls += 1
            if calls == 3:
                raise RuntimeError("sampling blew up")
        return draw(logits, p, gen)

    monkeypatch.setattr("backend.sampling.draw", flaky)
    good = submit(e, tok, "the quick brown fox", max_tokens=24)
    e.step()
    e.step()
    bad = [Collector() for _ in range(3)]
    e.submit(Sequence([], SamplingParams(max_tokens=4), bad[0]))  # prefill raises
    nan = SamplingParams(max_tokens=4, temperature=math.nan)  # its first sample raises
    e.submit(Sequence(tok("hello")["input_ids"], nan, bad[1]))
    e.submit(Sequence(tok("a")["input_ids"], SamplingParams(max_tokens=9, seed=13), bad[2]))
    drain(e, good, *bad)
    assert [b.events[-1].kind for b in bad] == ["error"] * 3
    assert good.events[-1].finish_reason == "length" and good.text() == alone.text()
    assert e._running == [] and e._cache is None  # all rows left: nothing stuck in the batch


def test_an_answer_ending_at_eos_keeps_the_text_held_for_stop_strings(loaded: Any) -> None:
    tok = loaded.tokenizer
    e = Engine(loaded.model, tok, loaded.device)
    first = Collector()
    seq = Sequence(tok("hello")["input_ids"], SamplingParams(max_tokens=20, temperature=0), first)
    e.submit(seq)
    drain(e, first)
    # A random model rarely says EOS: make EOS a token it says after a few others.
    k = next(i for i in range(3, len(seq.out_ids)) if seq.out_ids[i] not in seq.out_ids[:i])
    e.eos = {*e.eos, seq.out_ids[k]}
    never = "~never said~"  # held back: len - 1 characters at every step
    for max_tokens, reason in ((20, "stop"), (k - 1, "length")):
        plain = submit(e, tok, "hello", max_tokens=max_tokens, ignore_eos=False)
        held = submit(e, tok, "hello", max_tokens=max_tokens, ignore_eos=False, stop=(never,))
        drain(e, plain, held)
        assert held.events[-1].finish_reason == plain.events[-1].finish_reason == reason
        assert held.text() == plain.text() and len(plain.text()) > len(never)
        # The EOS is counted, as OpenAI and vLLM count it (it was left out: 0 for an answer
        # whose first token was EOS).
        counted = k + 1 if reason == "stop" else max_tokens
        assert held.events[-1].completion_tokens == plain.events[-1].completion_tokens == counted


class Gauges(EngineObserver):
    def __init__(self) -> None:
        self.waiting: list[int] = []
        self.running: list[int] = []

    def queue(self, waiting: int, running: int) -> None:
        self.waiting.append(waiting)
        self.running.append(running)


def test_a_request_cancelled_while_queued_leaves_the_queue(loaded: Any) -> None:
    gauges = Gauges()
    e = Engine(
        loaded.model, loaded.tokenizer, loaded.device, max_batch=1, max_waiting=1, observer=gauges
    )
    running = submit(e, loaded.tokenizer, "hi", max_tokens=50)
    e.step()
    queued = Collector()
    seq = Sequence(loaded.tokenizer("hi")["input_ids"], SamplingParams(max_tokens=4), queued)
    e.submit(seq)
    seq.cancelled = True  # its client gave up
    submit(e, loaded.tokenizer, "hi")  # takes its place: no 429 for a queue of ghosts
    e.step()
    assert queued.events[-1].finish_reason == "cancelled"  # now, not when a slot frees up
    assert not running.done.is_set() and gauges.waiting[-1] == 1


def test_max_waiting_counts_beyond_a_full_batch_before_any_is_admitted(loaded: Any) -> None:
    """Three requests queued before the engine's next step, with two batch slots free: two of
    them take the slots, so one waits beyond a full batch, which max_waiting=1 allows; a fourth
    would be the second."""
    e = Engine(loaded.model, loaded.tokenizer, loaded.device, max_batch=2, max_waiting=1)
    for _ in range(3):
        submit(e, loaded.tokenizer, "hi")
    with pytest.raises(QueueFull):
        submit(e, loaded.tokenizer, "hi")


def test_a_request_admitted_but_still_prefilling_holds_its_batch_slot(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between leaving the queue and joining the batch (its prefill, outside the lock) a
    request is counted as running: a submit meanwhile finds the one-slot batch full."""
    e = Engine(loaded.model, loaded.tokenizer, loaded.device, max_batch=1, max_waiting=0)
    first = submit(e, loaded.tokenizer, "hi", max_tokens=2)
    join, refused = e._join_safely, []

    def join_while_another_comes(seqs: list[Sequence]) -> None:
        try:
            submit(e, loaded.tokenizer, "hi")
        except QueueFull:
            refused.append(True)
        join(seqs)

    monkeypatch.setattr(e, "_join_safely", join_while_another_comes)
    drain(e, first)
    assert refused == [True]
    monkeypatch.undo()
    submit(e, loaded.tokenizer, "hi")  # the slot is free again once it has finished


def test_the_gauges_count_a_request_still_prefilling_as_running(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An arrival during a prefill wrote running = the batch alone: a long prefill's requests
    were counted nowhere, and a gateway routing on the gauges sent more to the busiest."""
    gauges = Gauges()
    e = Engine(
        loaded.model, loaded.tokenizer, loaded.device, max_batch=4, max_waiting=4, observer=gauges
    )
    first = submit(e, loaded.tokenizer, "hi", max_tokens=2)
    join, seen = e._join_safely, []

    def join_while_another_comes(seqs: list[Sequence]) -> None:
        e.reserve()  # a request arrives while these prefill
        seen.append(gauges.running[-1])
        e.unreserve()
        seen.append(gauges.running[-1])
        join(seqs)

    monkeypatch.setattr(e, "_join_safely", join_while_another_comes)
    drain(e, first)
    assert seen == [1, 1]


def test_max_waiting_zero_refuses_only_when_the_batch_is_full(loaded: Any) -> None:
    e = Engine(loaded.model, loaded.tokenizer, loaded.device, max_batch=2, max_waiting=0)
    submit(e, loaded.tokenizer, "hi")
    submit(e, loaded.tokenizer, "hi")  # both are admitted at the next step
    with pytest.raises(QueueFull):
        submit(e, loaded.tokenizer, "hi")


def test_a_reserved_place_counts_until_submitted_or_given_back(loaded: Any) -> None:
    """The server reserves a place before tokenizing (seconds on a long prompt): reserved
    places count against the queue's bound, a reserved submit always finds its place, and
    unreserve gives it back."""
    e = Engine(loaded.model, loaded.tokenizer, loaded.device, max_batch=1, max_waiting=1)
    params = SamplingParams(max_tokens=4, temperature=0)
    ids = loaded.tokenizer("hi")["input_ids"]
    e.reserve()
    e.reserve()
    with pytest.raises(QueueFull):  # two places in all, both held by requests tokenizing
        e.reserve()
    with pytest.raises(QueueFull):
        e.submit(Sequence(ids, params, Collector()))
    e.submit(Sequence(ids, params, Collector()), reserved=True)  # its own place
    e.unreserve()  # the other's tokenizer refused it
    e.submit(Sequence(ids, params, Collector()))  # the place it gave back
    with pytest.raises(QueueFull):
        e.reserve()


def prefill_widths(e: Engine, monkeypatch: pytest.MonkeyPatch, fail_wider: bool) -> list[int]:
    """Rows of each prefill (a forward with no cache) ``e`` runs from now on; with
    ``fail_wider``, a prefill of several rows raises, as one out of memory would."""
    widths: list[int] = []
    forward = e._forward

    def counting(ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        if cache is None:
            widths.append(ids.shape[0])
            if fail_wider and ids.shape[0] > 1:
                raise RuntimeError("CUDA out of memory (a test's)")
        return forward(ids, mask, positions, cache)

    monkeypatch.setattr(e, "_forward", counting)
    return widths


PROMPTS = ["hello", "the quick brown fox", "a", "users in london, singapore and sydney"]


def burst_after_solo(
    loaded: Any, monkeypatch: pytest.MonkeyPatch, fail_wider: bool
) -> tuple[Engine, list[str], list[int], list[Collector]]:
    """Each of PROMPTS run alone (their texts), then all submitted at once and counted by
    ``prefill_widths``: (engine, solo texts, prefill widths, the burst's runs, undrained)."""
    tok = loaded.tokenizer
    e = Engine(loaded.model, tok, loaded.device)
    solo = []
    for p in PROMPTS:
        c = submit(e, tok, p)
        drain(e, c)
        solo.append(c.text())
    widths = prefill_widths(e, monkeypatch, fail_wider)
    return e, solo, widths, [submit(e, tok, p) for p in PROMPTS]


def test_requests_that_leave_the_queue_together_are_prefilled_together(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One prefill for a burst instead of one per request: the last one's first token does not
    # wait for every prefill before it. Left-padded, each gets the text it gets alone.
    e, solo, widths, runs = burst_after_solo(loaded, monkeypatch, fail_wider=False)
    cancelled = Collector()
    ids = loaded.tokenizer("sydney")["input_ids"]
    e.submit(Sequence(ids, SamplingParams(max_tokens=4), cancelled))
    e._waiting[-1].cancelled = True  # its client left before the step: it leaves, alone
    drain(e, *runs, cancelled)
    assert widths == [len(PROMPTS)]
    assert [r.text() for r in runs] == solo
    assert cancelled.events[-1].finish_reason == "cancelled"
    assert e._running == [] and e._cache is None


def test_a_failed_shared_prefill_is_retried_one_by_one(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    e, solo, widths, runs = burst_after_solo(loaded, monkeypatch, fail_wider=True)
    drain(e, *runs)
    assert widths == [len(PROMPTS)] + [1] * len(PROMPTS)
    assert [r.text() for r in runs] == solo  # nobody failed, no first token sent twice


def ends(c: Collector) -> list[str]:
    return [e.kind for e in c.events if e.kind != "token"]


def test_a_failure_after_first_tokens_are_out_fails_those_rows_once(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cutting the rows that already ended out of a group's cache can run out of memory too:
    # the first tokens are sent by then, so those requests fail; no prefill again, which sent
    # each first token twice.
    tok = loaded.tokenizer
    e = Engine(loaded.model, tok, loaded.device)

    def out_of_memory(*_: Any) -> Any:
        raise RuntimeError("CUDA out of memory (a test's)")

    monkeypatch.setattr("backend.batchkv.keep_rows", out_of_memory)
    widths = prefill_widths(e, monkeypatch, fail_wider=False)
    short, going = submit(e, tok, "hello", max_tokens=1), submit(e, tok, "a b c", max_tokens=3)
    drain(e, short, going)
    assert ends(short) == ["finish"] and ends(going) == ["error"]
    assert widths == [2]  # one prefill: none again after the first tokens went out
    assert len([x for x in going.events if x.kind == "token"]) <= 1
    assert e._running == [] and e._cache is None


def test_a_request_cancelled_while_an_earlier_group_prefills_leaves_once(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = loaded.tokenizer
    e = Engine(loaded.model, tok, loaded.device, prefill_tokens=1)  # a group a prompt
    widths = prefill_widths(e, monkeypatch, fail_wider=False)
    first = submit(e, tok, "the quick brown fox", max_tokens=2)
    later = Collector()
    e.submit(Sequence(tok("users in london")["input_ids"], SamplingParams(max_tokens=2), later))
    seq = e._waiting[-1]
    forward = e._forward

    def cancel_the_later_one(*args: Any) -> Any:
        seq.cancelled = True  # its client leaves during the first group's prefill
        return forward(*args)

    monkeypatch.setattr(e, "_forward", cancel_the_later_one)
    drain(e, first, later)
    assert ends(later) == ["finish"] and later.events[-1].finish_reason == "cancelled"
    assert widths == [1] and ends(first) == ["finish"] and e._admitting == 0


def test_a_sliding_window_model_keeps_its_batch_when_a_long_row_leaves(loaded: Any) -> None:
    # Mistral-style layers kept only their window's last columns, and cutting columns by the
    # batch's mask cut the wrong ones: the whole batch failed once a long row left it.
    import dataclasses

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from backend.tiny import TinySpec

    torch.manual_seed(0)
    shape = {k: v for k, v in dataclasses.asdict(TinySpec()).items() if k != "seed"}
    shape["vocab_size"] = loaded.model.config.vocab_size
    config = MistralConfig(**shape, sliding_window=16)
    model = MistralForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    tok = loaded.tokenizer
    prompts = [list(range(10, 50)), [9, 10, 11], [12, 13, 14, 15, 16]]

    def run(e: Engine, which: list[int], long_tokens: int) -> list[Collector]:
        runs = []
        for i in which:
            c = Collector()
            n = long_tokens if i == 0 else 12
            params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
            e.submit(Sequence(prompts[i], params, c))
            runs.append(c)
        drain(e, *runs)
        return runs

    solo = [run(Engine(model, tok, "cpu"), [i], 1)[0].text() for i in (1, 2)]
    for long_tokens in (1, 3):  # it leaves at its first token (at the join) or a decode step
        runs = run(Engine(model, tok, "cpu"), [0, 1, 2], long_tokens)
        assert [ends(r) for r in runs] == [["finish"]] * 3
        assert [r.text() for r in runs[1:]] == solo


def test_an_answer_cut_at_max_tokens_mid_character_still_stops_at_a_stop_string(
    loaded: Any,
) -> None:
    # At the end the text held back for a partial UTF-8 character goes out; a stop string in
    # it was never searched for, so the answer ended with one (here U+FFFD, what a decode
    # shows for the partial character; on real vocabularies, tokens such as " \xe2").
    tok = loaded.tokenizer
    e = Engine(loaded.model, tok, loaded.device)
    greedy = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    cuts = []
    for prompt in PROMPTS:
        seq = Sequence(tok(prompt)["input_ids"], greedy, Collector())
        e.submit(seq)
        drain(e, seq.emit)  # type: ignore[arg-type]
        ends = (n for n in range(1, 49) if tok.decode(seq.out_ids[:n]).endswith("\ufffd"))
        cuts += [(prompt, n) for n in itertools.islice(ends, 1)]
    assert cuts, "no greedy answer to PROMPTS ends in a partial character: pick others"
    prompt, n = cuts[0]
    run = submit(e, tok, prompt, max_tokens=n, stop="\ufffd")
    drain(e, run)
    assert "\ufffd" not in run.text() and run.events[-1].finish_reason == "stop"


def caches_made(e: Engine, monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref[Any]]:
    """A weak reference to each KV cache ``e``'s forward passes make or grow from now on."""
    made: list[weakref.ref[Any]] = []
    forward = e._forward

    def noting(ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        logits, cache = forward(ids, mask, positions, cache)
        made.append(weakref.ref(cache))
        return logits, cache

    monkeypatch.setattr(e, "_forward", noting)
    return made


@pytest.mark.parametrize("decode_fails", [False, True])
def test_an_idle_engine_holds_no_kv_cache(
    loaded: Any, monkeypatch: pytest.MonkeyPatch, decode_fails: bool
) -> None:
    # The last forward's cache was kept on the engine: a drained batch's whole cache (32 GiB
    # of a 7B model's 16 rows at 4,096 tokens) held while idle, and after an out-of-memory
    # decode the very cache that ran out, in the way of the next prefill.
    tok = loaded.tokenizer
    e = Engine(loaded.model, tok, loaded.device)
    made = caches_made(e, monkeypatch)
    if decode_fails:
        original = e._decode

        def failing() -> None:
            original()
            raise RuntimeError("CUDA out of memory (a test's)")

        monkeypatch.setattr(e, "_decode", failing)
    runs = [submit(e, tok, p, max_tokens=n) for p, n in zip(PROMPTS, (2, 5, 3, 4), strict=True)]
    drain(e, *runs)
    assert e._running == [] and e._cache is None
    assert made and all(ref() is None for ref in made)
