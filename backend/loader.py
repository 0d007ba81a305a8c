"""Load a Hugging Face causal LM and its tokenizer from a local directory, quantized as asked.

Never from a hub: ``local_files_only`` everywhere and HF_HUB_OFFLINE set, so a typo in a path
is an error here, not a download attempt.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
import warnings
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from backend.errors import ModelLoadError

log = logging.getLogger("geogate.backend")

Quantize = Literal["none", "int8", "nf4", "int8-dynamic"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
NAMED_WEIGHTS = 3  # a refusal names this many of the weights at fault
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_LINE = 200  # an error's first line past this many characters: its first sentence only


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


def check_device(device: Device) -> str:
    """The device ``device`` names (auto: cuda where there is one); ModelLoadError for cuda
    without one."""
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


def _check_quantize(quantize: Quantize, dev: str, dtype: DType = "auto") -> None:
    if quantize in ("int8", "nf4") and dev != "cuda":
        raise ModelLoadError(
            f"--quantize {quantize} uses bitsandbytes, which needs a CUDA GPU; this machine has "
            "none. On the CPU use --quantize int8-dynamic"
        )
    if quantize == "int8-dynamic" and dev != "cpu":
        raise ModelLoadError("--quantize int8-dynamic is the CPU path; on a GPU use int8 or nf4")
    if quantize == "int8-dynamic" and dtype not in ("auto", "float32"):
        # torch.ao's dynamic int8 Linear takes float32 activations: the model loaded, then its
        # warm-up failed with a traceback.
        raise ModelLoadError(
            f"--quantize int8-dynamic computes in float32 (torch.ao), not --dtype {dtype}; "
            "leave --dtype out (auto) or give float32"
        )


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


def _read_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # a tokenizer.json of {} said only "'added_tokens'" (a KeyError)
        raise ModelLoadError(
            f"cannot load the model in {path}: its tokenizer could not be read: {_said(exc)}"
        ) from None


def _read_model(path: Path, kwargs: dict[str, Any]) -> Any:
    """The model, or one line saying why not. Any exception: a pytorch_model.bin of garbage
    raised UnpicklingError, EOFError, IndexError or struct.error from torch.load, each a
    traceback of 33 lines and exit status 1."""
    from transformers import AutoModelForCausalLM

    try:
        # Mismatched shapes reported, not raised: _check_weights names them, where the raise
        # said "for details look at the above report".
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except Exception as exc:
        said = _said(exc, sentence=True)
        frames = traceback.extract_tb(exc.__traceback__)
        if any(Path(f.filename).match("torch/serialization.py") for f in frames):  # torch.load
            said = f"its pytorch_model*.bin weights could not be read ({_said(exc)})"
        raise ModelLoadError(f"cannot load the model in {path}: {said}") from None
    model, info = loaded
    _check_weights(path, info)
    return model


def _check_weights(path: Path, info: dict[str, Any]) -> None:
    """Refuse a model some of whose weights the checkpoint lacks, or has in other shapes than
    config.json says: transformers drew those at random, and the server served the noise
    (num_hidden_layers raised in config.json). Tied weights (lm_head with
    tie_word_embeddings) are not missing: transformers leaves them out of missing_keys."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelLoadError(
            f"cannot load the model in {path}: its weights lack {len(missing)} that config.json "
            f"asks for ({_few(missing)}); the checkpoint and config.json do not match"
        )
    mismatched = sorted((str(k), list(c), list(m)) for k, c, m in info.get("mismatched_keys") or ())
    if mismatched:
        shapes = [f"{k} is {c} in the weights, {m} by config.json" for k, c, m in mismatched]
        raise ModelLoadError(
            f"cannot load the model in {path}: {len(mismatched)} of its weights are not of the "
            f"shapes config.json says ({_few(shapes, 2)})"
        )
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:  # every weight the model has was loaded: served, and said
        log.warning(
            "the weights in %s hold %d that the model has no place for, left unused (%s); "
            "does config.json match the checkpoint?",
            path,
            len(unexpected),
            _few(unexpected),
        )


def _few(items: list[str], n: int = NAMED_WEIGHTS) -> str:
    more = len(items) - n
    return "; ".join(items[:n]) + (f" and {more} more" if more > 0 else "")


def _said(exc: BaseException, sentence: bool = False) -> str:
    """An exception in one line that says what it is: its type and its first line (the first
    sentence of a long one, as torch's are). With ``sentence``, transformers' and torch's own
    errors (OSError, ValueError, RuntimeError, ImportError: a missing quantization backend is
    one with a message and no module name) are their message alone, as they were."""
    text = ANSI.sub("", str(exc))  # torch's messages have bold in them
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > LONG_LINE and ". " in first:
        first = first.split(". ")[0] + "."
    detail = next((b for a, b in pairwise(lines) if a.endswith("Unpickler error:")), "")
    if detail:  # torch's UnpicklingError says what is wrong on a line of its own
        first = f"{first} {detail}"
    if sentence and isinstance(exc, OSError | ValueError | RuntimeError | ImportError) and first:
        return first
    if isinstance(exc, KeyError):  # its text is the key alone: "'added_tokens'"
        return f"KeyError {first}"
    kind = type(exc).__name__
    kind = f"{type(exc).__module__}.{kind}" if kind == "error" else kind  # struct.error
    return f"{kind}: {first}" if first else kind


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
    dev = check_device(device)
    _check_quantize(quantize, dev, dtype)
    choose_attention(dev, cudnn_attention)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar per start-up is noise in service logs
    torch_dtype = _dtype(dtype, dev, quantize)
    kwargs = _load_kwargs(quantize, dev, torch_dtype)
    t0 = time.perf_counter()
    tokenizer = _read_tokenizer(path)
    # Its LOAD REPORT (a table of every weight at fault, 18 lines for a changed hidden_size)
    # is a warning: _check_weights says it in one line, and refuses what it reports. For the
    # load alone: transformers' later warnings (generation) are the log's as before.
    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = _read_model(path, kwargs)
    finally:
        hf_logging.set_verbosity(was)
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
