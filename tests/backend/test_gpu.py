"""CUDA-only paths: run where a GPU is, skipped (and only these) elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@pytest.mark.parametrize("quantize", ["none", "int8", "nf4"])
def test_cuda_quantization_loads_and_generates(model_dir: Path, quantize: str) -> None:
    from backend.loader import load_model

    loaded = load_model(model_dir, quantize, device="cuda")  # type: ignore[arg-type]
    assert loaded.device == "cuda" and loaded.weight_bytes > 0
    ids = loaded.tokenizer("hello", return_tensors="pt").input_ids.to("cuda")
    out = loaded.model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


@gpu
@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_cuda_engine_greedy_equals_generate(model_dir: Path, quantize: str) -> None:
    # Alone in the batch the engine's greedy text is generate's exactly (bench/gpu.py checks
    # shared batches too: there bf16 rounding, and int8's batch-wide outlier columns, split
    # texts after a few tokens).
    from backend.engine import Engine, Sequence
    from backend.loader import load_model
    from backend.sampling import SamplingParams

    loaded = load_model(model_dir, quantize, device="cuda")  # type: ignore[arg-type]
    # The default: no cuDNN plan built per new shape (bench/results/gpu_attention.md).
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    engine = Engine(loaded.model, loaded.tokenizer, "cuda")
    ids = loaded.tokenizer("the quick brown fox")["input_ids"]
    events: list[object] = []
    seq = Sequence(ids, SamplingParams(max_tokens=16, temperature=0), events.append)
    engine.submit(seq)
    while not any(getattr(e, "kind", "") != "token" for e in events):
        engine.step()
    x = torch.tensor([ids], device="cuda")
    out = loaded.model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False
    )[0, len(ids) :].tolist()
    # Up to its EOS, which out_ids keeps (usage counts it, as OpenAI's does).
    cut = next((i + 1 for i, t in enumerate(out) if t in engine.eos), len(out))
    assert seq.out_ids == out[:cut]
