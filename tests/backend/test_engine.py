"""The scheduler in-process: joins and leaves between decode steps, cancellation, queue."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.engine import Engine, Event, Sequence
from backend.errors import QueueFull
from backend.sampling import SamplingParams


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
    e.submit(Sequence(ids, params, Collector()))
    e.submit(Sequence(ids, params, Collector()))
    with pytest.raises(QueueFull) as err:  # not started: nothing leaves the queue
        e.submit(Sequence(ids, params, Collector()))
    assert err.value.headers["Retry-After"] == "1"
