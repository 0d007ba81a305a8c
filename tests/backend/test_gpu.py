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
