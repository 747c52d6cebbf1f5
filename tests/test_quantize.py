"""Chapter 14's quantization: the rules, whole quantized models and checkpoints, and agreement with torchao."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from tinyllm.model import GPTConfig, make_model
from tinyllm.quantize import (QuantizedEmbedding, QuantizedLinear, dequantize, dequantize_int4, dequantize_weight,
                              fake_quantize_model, load_quantized, model_bytes, pack_int4, quantize_int4,
                              quantize_int8, quantize_model, quantize_weight, save_quantized, unpack_int4)

SMALL = dict(vocab_size=300, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)


def matrix(seed: int, rows: int = 6, cols: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.1
    w[1] = 0.0  # a row of zeros
    w[2, 3] = -4.0  # a negative outlier
    return w


def test_int8_codes_scales_and_error_bound():
    w = matrix(0)
    codes, scale = quantize_int8(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (6, 1)
    assert int(codes.abs().max()) == 127 and int(codes.min()) >= -127  # symmetric: -128 never used
    assert scale[1, 0] == 1 and (codes[1] == 0).all()  # the zero row
    assert codes[2, 3] == -127  # the negative extreme is exact
    error = (dequantize(codes, scale) - w).abs()
    assert (error <= scale / 2 + 1e-7).all()
    assert dequantize(codes, scale).dtype == torch.float32


def test_rounding_is_to_nearest_with_halves_to_even():
    """The rule is torch.round's (torchao's too): 2.5 -> 2, 3.5 -> 4, -2.5 -> -2."""
    w = torch.tensor([[127.0, 2.5, 3.5, -2.5, 0.49]])  # scale 1: the codes are the rounded values
    codes, scale = quantize_int8(w)
    assert scale.item() == 1.0 and codes.tolist() == [[127, 2, 4, -2, 0]]


def test_int4_groups_are_consecutive_and_local():
    w = torch.full((2, 12), 0.07)
    w[0, 5] = 3.5  # an outlier in row 0's second group of 4
    codes, scales = quantize_int4(w, 4)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 7
    assert scales.shape == (2, 3)
    assert torch.allclose(scales[0], torch.tensor([0.01, 0.5, 0.01]))  # only the outlier's group is coarse
    assert torch.allclose(scales[1], torch.full((3,), 0.01))
    step = scales.repeat_interleave(4, dim=1)
    assert ((dequantize_int4(codes, scales, 4) - w).abs() <= step / 2 + 1e-7).all()
    with pytest.raises(ValueError, match="does not divide"):
        quantize_int4(w, 5)
    zero_codes, zero_scales = quantize_int4(torch.zeros(1, 8), 4)
    assert (zero_scales == 1).all() and (zero_codes == 0).all()


def test_the_other_schemes_reuse_the_two_rules():
    """8 bits per group is int8 on each group as a row; 4 bits per row is one group as wide as the row."""
    w = matrix(1)
    codes, scales = quantize_weight(w, 8, group_size=4)
    by_rows, row_scales = quantize_int8(w.reshape(-1, 4))
    assert torch.equal(codes, by_rows.reshape(w.shape)) and torch.equal(scales, row_scales.reshape(6, 4))
    codes, scales = quantize_weight(w, 4)
    expected_codes, expected_scales = quantize_int4(w, w.shape[1])
    assert torch.equal(codes, expected_codes) and torch.equal(scales, expected_scales)
    assert torch.equal(dequantize_weight(codes, scales), dequantize_int4(codes, scales, w.shape[1]))
    with pytest.raises(ValueError, match="8 or 4"):
        quantize_weight(w, 3)


def test_two_codes_per_byte_round_trip():
    codes = torch.randint(-7, 8, (5, 10), generator=torch.Generator().manual_seed(2)).to(torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 5)
    assert torch.equal(unpack_int4(packed), codes)
    with pytest.raises(ValueError, match="even"):
        pack_int4(codes[:, :3])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("bits, group", [(8, None), (8, 16), (4, None), (4, 8)])
def test_a_quantized_model_computes_what_its_dequantized_weights_compute(arch, bits, group):
    torch.manual_seed(0)
    model = make_model(GPTConfig(**SMALL, arch=arch)).eval()
    stored = quantize_model(copy.deepcopy(model), bits, group)
    fake = fake_quantize_model(copy.deepcopy(model), bits, group)
    idx = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.equal(stored(idx)[0], fake(idx)[0])
    assert not any(isinstance(m, nn.Linear) for m in stored.modules())
    assert stored.tok_emb.qweight is stored.lm_head.qweight  # the tied table stays one table
    assert isinstance(stored.tok_emb, QuantizedEmbedding) and isinstance(stored.lm_head, QuantizedLinear)
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2)
    others = sum(p.numel() for p in model.parameters() if p.dim() != 2)
    rows = sum(p.shape[0] * (1 if group is None else p.shape[1] // group)
               for p in model.parameters() if p.dim() == 2)
    assert model_bytes(stored) == matrices * bits // 8 + 4 * rows + 4 * others  # codes, scales, float32 rest
    assert model_bytes(model) == 4 * (matrices + others)


def test_a_group_size_that_does_not_divide_names_the_layer_and_changes_nothing():
    torch.manual_seed(0)
    model = make_model(GPTConfig(**{**SMALL, "d_ff": 40}, arch="llama"))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"group size 16 does not divide the 40 input features of blocks\.0\.ffn\.w_down"):
        quantize_model(model, 4, 16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_quantized_checkpoint_loads_and_is_refused_as_a_training_one(tmp_path):
    from tinyllm.bpe import BPETokenizer
    from tinyllm.train import TrainConfig, Trainer, build_model, load_checkpoint

    text = "the cat sat on the mat. " * 40
    tokenizer = BPETokenizer.train(text, 260, end_of_text=False)
    ids = torch.tensor(tokenizer.encode(text))
    config = GPTConfig(vocab_size=260, context_length=16, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    trainer = Trainer(build_model(config, 0), ids, ids, TrainConfig(samples="windows", max_steps=3, warmup_steps=1,
                      batch_size=2, eval_interval=3), merges=tokenizer.merges)
    trainer.train()
    trainer.save(tmp_path / "float.pt")
    ckpt = load_checkpoint(tmp_path / "float.pt")
    save_quantized(tmp_path / "int4.pt", ckpt, 4, 8)
    loaded = load_quantized(tmp_path / "int4.pt")
    assert (loaded.bits, loaded.group_size, loaded.merges) == (4, 8, ckpt.merges)
    expected = quantize_model(ckpt.model(), 4, 8)
    x = ids[:12][None]
    with torch.no_grad():
        assert torch.equal(loaded.model()(x)[0], expected(x)[0])
    with pytest.raises(ValueError, match="not a tinyllm checkpoint"):
        load_checkpoint(tmp_path / "int4.pt")
    with pytest.raises(ValueError, match="not a quantized tinyllm checkpoint"):
        load_quantized(tmp_path / "float.pt")


# ---------------------------------------------------------------- against torchao, on the book's models


def torchao():
    """torchao's quantization API (the test extra pins it); its C++ extensions are optional and not used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine
    return Int8WeightOnlyConfig, quantize_, MappingType, choose_qparams_affine, quantize_affine


def book_matrices():
    """Every weight matrix of the book's two trained models (loaded from the build's cache)."""
    from tinyllm.book import trained_tiny_gpt
    from tinyllm.model import modern_counterpart
    from tinyllm.train import TrainConfig

    gpt, _, _ = trained_tiny_gpt()
    modern, _, _ = trained_tiny_gpt(modern_counterpart(GPTConfig(), n_kv_heads=2), TrainConfig())
    return [(f"{label}.{name}", w.detach()) for label, model in (("gpt", gpt), ("modern", modern))
            for name, w in model.named_parameters() if w.dim() == 2]


@pytest.mark.slow
def test_int8_per_row_equals_torchao_with_the_same_range():
    """torchao's affine primitives, symmetric, per row, codes -127..127: the same scales to the last bit and the
    same code for every weight of both book models (torchao rounds w * (1/s) where we round w / s)."""
    _, _, MappingType, choose_qparams_affine, quantize_affine = torchao()
    total = 0
    for name, w in book_matrices():
        codes, scale = quantize_int8(w)
        block = (1, w.shape[1])
        their_scale, zero = choose_qparams_affine(w, MappingType.SYMMETRIC, block, torch.int8, quant_min=-127,
                                                  quant_max=127, scale_dtype=torch.float32, keepdim=True,
                                                  eps=torch.finfo(torch.float32).eps)
        their_codes = quantize_affine(w, block, their_scale, zero, torch.int8, quant_min=-127, quant_max=127)
        assert torch.equal(their_scale.reshape(-1), scale.reshape(-1)), name
        assert torch.equal(their_codes, codes), f"{name}: {(their_codes != codes).sum()} codes differ"
        total += w.numel()
    assert total > 200_000


@pytest.mark.slow
def test_torchaos_int8_weight_only_config_differs_only_by_its_range():
    """Int8WeightOnlyConfig (per row): codes -128..127 with s = max|w| / 127.5, our scale times 127/127.5; the same
    half-step error bound; a row's positive extreme clamped to 127."""
    Int8WeightOnlyConfig, quantize_, _, _, _ = torchao()
    for name, w in book_matrices():
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
        layer.weight.data.copy_(w)
        quantize_(layer, Int8WeightOnlyConfig(set_inductor_config=False))
        theirs = layer.weight
        _, scale = quantize_int8(w)
        assert torch.allclose(theirs.scale.reshape(-1), scale.reshape(-1) * 127 / 127.5, rtol=1e-6), name
        assert int(theirs.qdata.min()) >= -128 and int(theirs.qdata.max()) <= 127
        assert ((theirs.dequantize() - w).abs() <= theirs.scale.reshape(-1, 1) / 2 * (1 + 1e-4)).all(), name
        top = w.argmax(dim=1, keepdim=True)  # each row's largest value
        positive = w.gather(1, top)[:, 0] == w.abs().amax(dim=1)
        assert (theirs.qdata.gather(1, top)[positive] == 127).all(), name
