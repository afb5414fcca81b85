"""labkit.ship: the shipped file read back bit-exact, its bytes, its one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit import measure, models, prune, quant, ship
from labkit.quant import lowbit

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

CNN = models.CNN1dConfig(channels=(6, 8, 8))


def _cnn(seed: int = 0, config: models.CNN1dConfig = CNN) -> nn.Module:
    torch.manual_seed(seed)
    model = models.CNN1d(config)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has work to do
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def _signals(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 40, generator=torch.Generator().manual_seed(seed))


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# --------------------------------------------------------------------------- the shipped file


@pytest.mark.parametrize(
    "make",
    [
        lambda m: quant.quantize(
            m, quant.QuantConfig(bits=8, act_bits=None, granularity="per_channel")
        ),
        lambda m: quant.quantize(m, quant.QuantConfig(bits=4, act_bits=None)),
        lambda m: quant.quantize(
            prune.remove(prune.magnitude(m, 0.6, "global")),
            quant.QuantConfig(bits=3, act_bits=None, granularity="per_channel"),
        ),
    ],
    ids=["int8-per-channel", "4bit-per-tensor", "pruned-3bit"],
)
def test_quantized_models_read_back_bit_exact(make):
    qmodel = make(_cnn())
    payload = ship.to_bytes(qmodel)
    back = ship.from_bytes(payload)
    x = _signals()
    assert isinstance(back, models.CNN1d) and not back.training
    torch.testing.assert_close(_outputs(back, x), _outputs(qmodel, x), rtol=0, atol=0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_lowbit_layers_read_back_bit_exact(symmetric):
    torch.manual_seed(0)
    mlp = models.build("mlp", in_features=40, hidden=(48,))
    qmodel = lowbit.quantize(mlp, lowbit.LowBitConfig(bits=3, group_size=16, symmetric=symmetric))
    back = ship.from_bytes(ship.to_bytes(qmodel))
    x = _signals()
    torch.testing.assert_close(_outputs(back, x), _outputs(qmodel, x), rtol=0, atol=0)


def test_float_models_read_back_with_batchnorm_folded():
    model = _cnn()
    pruned = prune.magnitude(model, 0.7, "global")  # masks still attached
    for m in (model, pruned):
        back = ship.from_bytes(ship.to_bytes(m))
        assert not any(isinstance(b, nn.BatchNorm1d) for b in back.modules()), "BN folded"
        torch.testing.assert_close(
            _outputs(back, _signals()), _outputs(m, _signals()), rtol=1e-5, atol=1e-5
        )
    assert measure.count_nonzero(ship.from_bytes(ship.to_bytes(pruned))) == (
        measure.count_nonzero(quant.fold_bn(prune.remove(pruned)))
    )


def test_bytes_follow_the_encodings():
    model = _cnn()
    dense = len(ship.to_bytes(model))
    assert dense < measure.model_bytes(model), "no BN statistics, no torch.save records"
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, prune.PRUNABLE))
    q4 = quant.quantize(model, quant.QuantConfig(bits=4, act_bits=None, granularity="per_channel"))
    q8 = quant.quantize(model, quant.QuantConfig(bits=8, act_bits=None, granularity="per_channel"))
    # going from 8 to 4 bits per code saves exactly half a byte per weight (each layer rounded up)
    saved = len(ship.to_bytes(q8)) - len(ship.to_bytes(q4))
    layers = [m.weight.numel() for m in model.modules() if isinstance(m, prune.PRUNABLE)]
    assert saved == sum(n - math.ceil(n * 4 / 8) for n in layers)
    assert dense - len(ship.to_bytes(q8)) > 2 * weights  # 4 bytes -> 1 byte (+ scales)


def test_code_bytes_is_what_the_packer_writes():
    g = torch.Generator().manual_seed(0)
    for numel, bits, density in [(1000, 4, 0.5), (999, 3, 0.9), (64, 8, 0.1), (10, 2, 0.0)]:
        keep = torch.rand(numel, generator=g) < density
        codes = torch.randint(1, 2**bits, (numel,), generator=g) * keep  # 0: pruned
        dense = quant.pack_bits(codes, bits).numel()
        masked = quant.pack_bits(keep, 1).numel() + quant.pack_bits(codes[keep], bits).numel()
        assert ship.code_bytes(numel, int(keep.sum()), bits) == min(dense, masked)
        blob, nnz = ship._pack(codes, torch.zeros_like(codes), bits)
        assert blob.numel() == min(dense, masked) and (nnz is None) == (dense <= masked)
    assert ship.code_bytes(1000, 500, 4) == 375 and ship.code_bytes(1000, 900, 4) == 500


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("density", [0.25, 0.5])
def test_mask_saving_is_what_the_packer_saves(bits, density):
    # 1 - density - 1/bits, against the real bytes of dense and masked codes (whole bytes: numel
    # and nnz chosen so that no byte is partly filled)
    numel = 4096
    keep = torch.zeros(numel, dtype=torch.bool)
    keep[
        torch.randperm(numel, generator=torch.Generator().manual_seed(bits))[: int(density * numel)]
    ] = True
    codes = torch.randint(1, 2**bits, (numel,), generator=torch.Generator().manual_seed(1)) * keep
    dense = quant.pack_bits(codes, bits).numel()
    masked = quant.pack_bits(keep, 1).numel() + quant.pack_bits(codes[keep], bits).numel()
    assert ship.mask_saving(density, bits) == pytest.approx(1 - masked / dense, abs=1e-12)
    blob, nnz = ship._pack(codes, torch.zeros_like(codes), bits)
    if ship.mask_saving(density, bits) > 0:  # the file stores the masked form then
        assert nnz == int(keep.sum()) and blob.numel() == masked
    assert ship.mask_saving(0.5, 8) == pytest.approx(0.375)  # not "almost half"
    with pytest.raises(ValueError, match="density"):
        ship.mask_saving(1.5, 4)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="complete file") as err:
        ship.from_bytes(ship.to_bytes(_cnn())[:-40])
    _one_line(err)
    with pytest.raises(ValueError, match="zoo model") as err:
        ship.to_bytes(nn.Sequential(nn.Linear(4, 2)))
    _one_line(err)
    with pytest.raises(ValueError, match="act_bits=None") as err:
        ship.to_bytes(quant.quantize(_cnn(), quant.QuantConfig(bits=8), _signals()))
    _one_line(err)
    with pytest.raises(ValueError, match="ship.to_bytes") as err:
        ship.from_bytes(b"not a model")
    _one_line(err)
    (tmp_path / "junk.lkc").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ship.to_bytes") as err:
        ship.load(tmp_path / "junk.lkc")
    _one_line(err)
    with pytest.raises(ValueError, match="path") as err:
        ship.load(tmp_path / "missing.lkc")
    _one_line(err)


def test_save_writes_what_load_reads(tmp_path):
    model = quant.quantize(_cnn(), quant.QuantConfig(bits=4, act_bits=None))
    path = ship.save(model, tmp_path / "model.lkc")
    assert path.read_bytes() == ship.to_bytes(model)
    x = _signals()
    torch.testing.assert_close(_outputs(ship.load(path), x), _outputs(model, x), rtol=0, atol=0)


def test_identify_names_zoo_models_and_skeleton_is_their_folded_shape():
    model = _cnn()
    name, config = ship.identify(model)
    assert (name, config) == ("cnn1d", CNN)
    skeleton = ship.skeleton(name, config)
    assert isinstance(skeleton, models.CNN1d) and not skeleton.training
    assert not any(isinstance(m, nn.BatchNorm1d) for m in skeleton.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    with pytest.raises(ValueError, match="model must be a labkit zoo model"):
        ship.identify(nn.Linear(4, 2))
