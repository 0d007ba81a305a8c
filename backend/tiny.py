"""``geogate backend make-tiny-model DIR``: a small random Llama and its tokenizer, built
locally (no download), for tests, the quickstart and benchmarks.

The tokenizer is a byte-level BPE trained here on a short built-in text, so any input encodes
without unknown tokens; it carries a chat template. Weights are random (seeded): the text is
gibberish, but every code path — tokenizing, templating, batching, sampling, streaming — is
the real one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CORPUS = (
    "the quick brown fox jumps over the lazy dog. geogate routes every request to the "
    "nearest healthy region. a gateway in each region picks the backend from measured "
    "round trip time, health and load, and retries before the first byte. users in london, "
    "singapore, new york, sydney and sao paulo get answers from a nearby gpu. "
    "hello world! how are you today? i am fine, thank you. 0123456789 +-*/=()[]{}<>:;,.?! "
)


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 172
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    seed: int = 0


# About 1.1 B parameters: the "larger random model" for GPU measurements.
ONE_B = TinySpec(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)
# ~3 M parameters: slow enough per decode step (~1-2 ms on a CPU core) that tests can count
# decode steps against wall-clock events such as a client disconnecting.
SMALL = TinySpec(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# ~90 M parameters: big enough that matrix multiplies, not per-call overhead, dominate a CPU
# decode step — where int8 weights start to pay (benchmarks).
MEDIUM = TinySpec(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=4,
    max_position_embeddings=1024,
)
# LLaMA-2-7B's shapes (6.7 B parameters): checks claims made about that model's memory and
# speed without downloading it. Build it in bfloat16 on a GPU (`--dtype bfloat16 --device
# cuda`): in float32 on a CPU it is 27 GB and minutes of random initialisation.
SEVEN_B = replace(  # 1b's vocabulary and head count, no grouped-query attention
    ONE_B,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)
PRESETS = {"tiny": TinySpec(), "small": SMALL, "medium": MEDIUM, "1b": ONE_B, "7b": SEVEN_B}


def build_tokenizer(vocab_size: int, max_length: int) -> Any:
    """A byte-level BPE tokenizer; ``max_length``: the model's window, which transformers'
    warning of a longer prompt names (it named 4096 for a 512-token model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=_fill_vocab(tok, vocab_size),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
    )


def _fill_vocab(tok: Any, size: int) -> Any:
    """Give every id up to ``size`` a text of its own (" w1234").

    The built-in text trains a few hundred tokens; a model with a 32 000-token vocabulary then
    emits, at random, ids the tokenizer cannot decode, which stream as nothing: on the 1b
    preset most steps added no text, so a streaming client saw its first content late and
    timed the wrong thing. The fillers have no merges leading to them, so encoding is as
    before.
    """
    import json

    from tokenizers import Tokenizer

    doc = json.loads(tok.to_str())
    vocab: dict[str, int] = doc["model"]["vocab"]
    i = len(vocab)
    while len(vocab) < size:
        word = f"\u0120w{i}"  # \u0120 is the byte-level alphabet's space
        i += 1
        if word not in vocab:
            vocab[word] = len(vocab)
    return Tokenizer.from_str(json.dumps(doc))


def make_tiny_model(
    out: Path, spec: TinySpec = TinySpec(), dtype: str = "float32", device: str = "cpu"
) -> int:
    """Write model + tokenizer to ``out``; returns the number of parameters.

    ``device`` is where the random weights are drawn (a GPU draws 7 B in about a second); the
    same seed gives different weights on a GPU than on the CPU.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(spec.vocab_size, spec.max_position_embeddings)
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=max(vocab, spec.vocab_size),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # drawn in the saved dtype: no fp32 copy
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())
