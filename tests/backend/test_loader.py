from __future__ import annotations

from pathlib import Path

import pytest

from backend.errors import ModelLoadError
from backend.loader import DType, check_model_dir, load_model


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError) as e:
        check_model_dir(tmp_path)
    assert "no config (config.json)" in str(e.value) and "no tokenizer" in str(e.value)
    assert "weights" not in str(e.value)


def test_weight_memory_and_int8_dynamic(model_dir: Path) -> None:
    # The CPU path by name: "auto" is CUDA where a GPU is, and bfloat16 there (a GPU run of
    # tests/backend failed here).
    full = load_model(model_dir, device="cpu")
    q = load_model(model_dir, quantize="int8-dynamic", device="cpu")
    params = sum(p.numel() for p in full.model.parameters())
    assert full.weight_bytes == params * 4  # float32
    # Linear weights go to one byte each; embeddings and norms stay float32.
    assert full.weight_bytes / 4.5 < q.weight_bytes < full.weight_bytes / 2
    assert full.context_len == 512 and full.name == model_dir.name


def test_int8_dynamic_refused_on_cuda_request(model_dir: Path) -> None:
    with pytest.raises(ModelLoadError):
        load_model(model_dir, quantize="int8-dynamic", device="cuda")


def test_a_path_with_an_empty_last_part_is_named_by_its_directory(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "--model ." served the model under the name "".
    monkeypatch.chdir(model_dir)
    assert load_model(Path(".")).name == model_dir.name
    assert load_model(Path("."), name="alias").name == "alias"


def test_cuda_attention_stays_off_cudnn_unless_asked() -> None:
    # torch's flag is global and settable without a GPU: what the model server sets on CUDA
    # (bench/results/gpu_attention.md: cuDNN plans every new shape, and decoding makes one a
    # token), and that a CPU load leaves it alone.
    import torch

    from backend.loader import choose_attention

    def on() -> bool:
        return bool(torch.backends.cuda.cudnn_sdp_enabled())  # type: ignore[no-untyped-call]

    before = on()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        choose_attention("cpu", False)
        assert on()
        choose_attention("cuda", False)
        assert not on()
        choose_attention("cuda", True)
        assert on()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_weights_that_do_not_load_are_one_line(model_dir: Path, tmp_path: Path) -> None:
    """A truncated weights file (SafetensorError) and weights of other sizes than config.json
    says (RuntimeError) were a traceback and exit 1, where a bad config is one line."""
    import json
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(model_dir, cut)
    (cut / "model.safetensors").write_bytes((cut / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=f"cannot load the model in {cut}: "):
        load_model(cut, device="cpu")
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["hidden_size"] *= 2
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as e:
        load_model(other, device="cpu")
    assert str(e.value).startswith(f"cannot load the model in {other}: ") and "\n" not in str(
        e.value
    )


def _copy(model_dir: Path, to: Path, **config: object) -> Path:
    import json
    import shutil

    shutil.copytree(model_dir, to)
    cfg = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**cfg, **config}))
    return to


def test_weights_the_checkpoint_lacks_are_refused_in_one_line(
    model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A layer more in config.json than in the weights: transformers drew it at random,
    printed a LOAD REPORT, and the server served the noise. Shapes that differ were refused,
    under transformers' table of 18 lines."""
    import json

    cfg = json.loads((model_dir / "config.json").read_text())
    n, hidden, vocab = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
    layers = _copy(model_dir, tmp_path / "layers", num_hidden_layers=n + 1)
    with pytest.raises(ModelLoadError) as e:
        load_model(layers, device="cpu")
    said = str(e.value)
    assert said.startswith(f"cannot load the model in {layers}: its weights lack 9 ")
    assert f"model.layers.{n}." in said and "and 6 more" in said and "\n" not in said
    wide = _copy(model_dir, tmp_path / "wide", hidden_size=hidden * 2)
    with pytest.raises(ModelLoadError) as e:
        load_model(wide, device="cpu")
    shapes = f"is [{vocab}, {hidden}] in the weights, [{vocab}, {hidden * 2}] by config.json"
    assert shapes in str(e.value) and "\n" not in str(e.value)
    assert "LOAD REPORT" not in capfd.readouterr().err


def test_tied_weights_absent_from_the_checkpoint_are_not_missing(
    model_dir: Path, tmp_path: Path
) -> None:
    # lm_head with tie_word_embeddings is the embedding's: a checkpoint has no copy of it.
    from safetensors.torch import load_file, save_file

    tied = _copy(model_dir, tmp_path / "tied", tie_word_embeddings=True)
    weights = load_file(tied / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tied / "model.safetensors", metadata={"format": "pt"})
    m = load_model(tied, device="cpu").model
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


def test_unreadable_weights_and_tokenizer_say_what_is_wrong(
    model_dir: Path, tmp_path: Path
) -> None:
    # A pytorch_model.bin of garbage was an UnpicklingError in 33 lines of traceback, exit 1;
    # a tokenizer.json of {} said "cannot load the model in ...: 'added_tokens'".
    garbage = _copy(model_dir, tmp_path / "bin")
    (garbage / "model.safetensors").unlink()
    (garbage / "pytorch_model.bin").write_bytes(b"garbage\n")
    with pytest.raises(ModelLoadError) as e:
        load_model(garbage, device="cpu")
    assert "its pytorch_model*.bin weights could not be read (UnpicklingError: " in str(e.value)
    assert "\n" not in str(e.value)
    tok = _copy(model_dir, tmp_path / "tok")
    (tok / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError) as e:
        load_model(tok, device="cpu")
    assert str(e.value).endswith(": its tokenizer could not be read: KeyError 'added_tokens'")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_int8_dynamic_in_half_precision_is_refused_before_loading(
    model_dir: Path, dtype: DType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It loaded the model, then failed its warm-up: torch.ao's int8 Linear takes float32.
    from transformers import AutoModelForCausalLM

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(ModelLoadError, match=f"float32 .torch.ao., not --dtype {dtype}"):
        load_model(model_dir, quantize="int8-dynamic", dtype=dtype, device="cpu")
