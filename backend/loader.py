"""Load a Hugging Face causal LM and its tokenizer from a local directory, quantized as asked.

Never from a hub: ``local_files_only`` everywhere and HF_HUB_OFFLINE set, so a typo in a path
is an error here, not a download attempt.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from backend.errors import ModelLoadError

log = logging.getLogger("geogate.backend")

Quantize = Literal["none", "int8", "nf4", "int8-dynamic"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    quantize: Quantize
    weight_bytes: int
    load_s: float
    context_len: int
    name: str


def check_model_dir(path: Path) -> None:
    """One error naming everything missing, so a half-copied directory is obvious."""
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config (config.json)")
    if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    if missing:
        raise ModelLoadError(f"model directory {path} has no {', no '.join(missing)}")


def _device(device: Device) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda: this machine has no CUDA GPU; use --device cpu")
    return device


def _dtype(dtype: DType, device: str, quantize: Quantize = "none") -> Any:
    import torch

    if dtype == "auto":
        if device == "cuda" and quantize == "int8":
            # LLM.int8() computes in float16: given bfloat16 it casts every matmul's input
            # and warns each time (a log line per int8 matmul). Measured on an H200
            # (bench/gpu.py), float16 int8 was 5-18 % faster in tokens/s, TTFT 19-24 % lower.
            return torch.float16
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU half-precision matmuls are slow or missing
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def weight_bytes(model: Any) -> int:
    """Bytes held by weights, including int8 packed params that are not Parameters."""
    import torch

    total = 0
    seen: set[int] = set()
    alive: list[Any] = []  # keeps counted tensors alive: a freed tensor's id() can be reused

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            alive.append(t)
            if t.is_quantized:
                total += t.numel() * t.element_size()
            else:
                total += t.untyped_storage().nbytes() if t.numel() else 0

    for t in model.state_dict().values():
        add(t)
    for mod in model.modules():  # torch.ao dynamic Linear keeps its weight packed
        packed = getattr(mod, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            add(w)
            add(b)
    return total


def _int8_dynamic(model: Any) -> Any:
    """Dynamic int8 Linear layers for the CPU with torch.ao.

    torchao's Int8DynamicActivationInt8WeightConfig was measured 2x *slower* than fp32 on this
    CPU (8.5 vs 4.2 ms per decode step at hidden 512), torch.ao's quantize_dynamic 1.5x
    faster (2.8 ms); torch.ao is deprecated in favour of torchao, so revisit when torchao's
    CPU kernels catch up.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _check_quantize(quantize: Quantize, dev: str) -> None:
    if quantize in ("int8", "nf4") and dev != "cuda":
        raise ModelLoadError(
            f"--quantize {quantize} uses bitsandbytes, which needs a CUDA GPU; this machine has "
            "none. On the CPU use --quantize int8-dynamic"
        )
    if quantize == "int8-dynamic" and dev != "cpu":
        raise ModelLoadError("--quantize int8-dynamic is the CPU path; on a GPU use int8 or nf4")


def _load_kwargs(quantize: Quantize, dev: str, torch_dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s arguments: local files only, the dtype, bitsandbytes' config."""
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch_dtype}
    if quantize in ("int8", "nf4"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quantize == "int8"
            else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
            )
        )
    if dev == "cuda":
        # Straight onto the GPU, also unquantized: loading on the CPU first and moving the
        # model after holds a second full copy of the weights in host memory.
        kwargs["device_map"] = {"": 0}
    return kwargs


def choose_attention(dev: str, cudnn: bool) -> None:
    """Keep torch's scaled-dot-product attention off cuDNN on CUDA unless ``cudnn``.

    cuDNN's attention builds an execution plan for every shape it has not seen, and a decode
    step's shape is new at every token (the KV length grows; the batch changes as requests
    come and go), so with it a server spends its time building plans: bench/gpu_attention.py
    measures that. Flash and memory-efficient attention need no plan. The setting is the
    process's (torch's global flags), which is the model server's whole process.
    """
    if dev == "cuda":
        import torch

        torch.backends.cuda.enable_cudnn_sdp(cudnn)


def load_model(
    path: Path,
    quantize: Quantize = "none",
    dtype: DType = "auto",
    device: Device = "auto",
    name: str | None = None,
    cudnn_attention: bool = False,
) -> Loaded:
    os.environ["HF_HUB_OFFLINE"] = "1"
    check_model_dir(path)
    dev = _device(device)
    _check_quantize(quantize, dev)
    choose_attention(dev, cudnn_attention)
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar per start-up is noise in service logs
    torch_dtype = _dtype(dtype, dev, quantize)
    kwargs = _load_kwargs(quantize, dev, torch_dtype)
    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError, SafetensorError) as exc:
        # ImportError: transformers raises one by hand, with a message and no module name,
        # when a quantization backend is missing (bitsandbytes, or accelerate, which its
        # bitsandbytes integration requires); the message is the useful part. RuntimeError:
        # weights of other sizes than config.json says; SafetensorError: a truncated file.
        # Both were a traceback and exit 1.
        raise ModelLoadError(f"cannot load the model in {path}: {exc}".splitlines()[0]) from None
    if dev == "cpu":
        model = model.to(dev)
    if quantize == "int8-dynamic":
        model = _int8_dynamic(model)
    model.eval()
    if dev == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    if getattr(tokenizer, "chat_template", None) is None:
        log.warning(
            "the tokenizer in %s has no chat template: /v1/chat/completions will "
            "join messages as plain text",
            path,
        )
    ctx = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    loaded = Loaded(
        model,
        tokenizer,
        dev,
        str(torch_dtype).removeprefix("torch."),
        quantize,
        weight_bytes(model),
        load_s,
        ctx,
        # The resolved path's: "--model ." (or "models/tiny/") has an empty last part, and
        # the model was served under the name "".
        name or path.resolve().name,
    )
    log.info(
        "loaded %s: weights %d bytes, load %.2f s, device %s, dtype %s, quantize %s, context %d",
        loaded.name,
        loaded.weight_bytes,
        load_s,
        dev,
        loaded.dtype,
        quantize,
        ctx,
    )
    return loaded
