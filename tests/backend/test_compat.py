"""What the first GPU run (bench/gpu.py, transformers 5.17 there) found, pinned on the CPU."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from backend import cli
from backend.batchkv import cache_keyword
from backend.engine import Engine, Event, Sequence
from backend.errors import ModelLoadError
from backend.loader import Loaded, load_model
from backend.sampling import SamplingParams
from backend.tiny import TinySpec, make_tiny_model

PROMPTS = ["hello", "the quick brown fox", "users in london"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compat") / "tiny"
    make_tiny_model(out, TinySpec())
    return out


@pytest.fixture(scope="module")
def loaded(tiny: Path) -> Loaded:
    return load_model(tiny, device="cpu")


class OldNames(torch.nn.Module):
    """A model whose forward() knows the KV cache only as ``past_key_values``, as on
    transformers 5.17: given ``cache=`` such a model ignored it (or raised)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = True,
    ) -> Any:
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{cache_keyword(self.inner): past_key_values},
        )


def run_together(engine: Engine, tok: Any, prompts: list[str], n: int) -> list[list[int]]:
    """Greedy, all submitted at once so they share the batch; stops at EOS like generate."""
    seqs = []
    done = [threading.Event() for _ in prompts]
    for p, d in zip(prompts, done, strict=True):

        def emit(e: Event, d: threading.Event = d) -> None:
            if e.kind != "token":
                d.set()

        seq = Sequence(tok(p)["input_ids"], SamplingParams(max_tokens=n, temperature=0), emit)
        engine.submit(seq)
        seqs.append(seq)
    while not all(d.is_set() for d in done):
        engine.step()  # on this thread: no engine thread to start or stop
    return [s.out_ids for s in seqs]


def generate(loaded: Loaded, prompt: str, n: int, eos: set[int]) -> list[int]:
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = loaded.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )
    new: list[int] = out[0, ids.shape[1] :].tolist()
    # Up to its EOS, which the engine keeps in out_ids (usage counts it, as OpenAI's does).
    return new[: next((i + 1 for i, t in enumerate(new) if t in eos), len(new))]


@pytest.mark.parametrize("old_names", [False, True])
def test_engine_greedy_equals_generate(loaded: Loaded, old_names: bool) -> None:
    model = OldNames(loaded.model) if old_names else loaded.model
    engine = Engine(model, loaded.tokenizer, "cpu")
    assert engine._cache_kw == ("past_key_values" if old_names else cache_keyword(loaded.model))
    got = run_together(engine, loaded.tokenizer, PROMPTS, 12)
    assert got == [generate(loaded, p, 12, engine.eos) for p in PROMPTS]
    assert all(len(g) > 1 for g in got)  # more than the prefill's token: the cache was used


def test_missing_quantization_backend_is_one_line(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> Any:
        # transformers' own words when accelerate is missing (it raises by hand: no .name)
        raise ImportError(
            "Using `bitsandbytes` 8-bit quantization requires accelerate: "
            "`pip install 'accelerate>=1.1.0'`\nsecond line"
        )

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(ModelLoadError) as e:
        load_model(tiny, device="cpu")
    assert "requires accelerate" in str(e.value) and "\n" not in str(e.value)


def test_cli_names_a_hand_raised_import_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def serve(argv: Any) -> None:
        raise ImportError("bitsandbytes needs a CUDA build of torch")

    monkeypatch.setattr(cli, "_serve", serve)
    with pytest.raises(SystemExit):
        cli.main(["--model", "x", "--port", "1"])
    err = capsys.readouterr().err
    assert "bitsandbytes needs a CUDA build of torch" in err and "None" not in err


def test_tiny_model_in_bfloat16(tmp_path: Path) -> None:
    from safetensors import safe_open

    make_tiny_model(tmp_path / "m", TinySpec(), dtype="bfloat16")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"}
    # The tokenizer's window is the model's: transformers' warning of a longer prompt, which
    # a client's mistake writes to the log, said 4096 for this 512-token model.
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == TinySpec().max_position_embeddings == 512


def test_int8_computes_in_float16_by_default() -> None:
    from backend.loader import _dtype

    # bitsandbytes' LLM.int8() casts bfloat16 inputs to float16 on every matmul, warning each
    # time: --quantize int8 picks float16 itself unless --dtype says otherwise.
    assert _dtype("auto", "cuda", "int8") is torch.float16
    assert _dtype("bfloat16", "cuda", "int8") is torch.bfloat16
    assert _dtype("auto", "cpu", "int8-dynamic") is torch.float32
