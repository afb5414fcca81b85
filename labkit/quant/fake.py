"""Fake-quantized models: layers whose weights and inputs are rounded as integer hardware would.

Post-training quantization (``quantize``, ``calibrate_``), quantization-aware training through the
rounding (``qat``), BatchNorm folding, and the packed bytes of the integer weights.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from labkit.quant.affine import choose_qparams, fake_quantize_ste, quantize_affine
from labkit.quant.observers import CALIBRATIONS, Observer
from labkit.quant.packing import pack_bits
from labkit.utils import check_choice, check_int

__all__ = [
    "GRANULARITIES",
    "QuantConfig",
    "QUANTIZABLE",
    "FakeQuantLayer",
    "input_batches",
    "quantize",
    "quantize_",
    "fold_bn",
    "fold_bn_",
    "calibrate_",
    "qat",
    "qat_",
    "quantized_layers",
    "packed_state_dict",
    "packed_bytes",
    "hold_zeros",
]

GRANULARITIES = ("per_tensor", "per_channel")
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""Layer types whose weight and input are quantized."""


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model: ``bits`` for weights, ``act_bits`` for the inputs of each layer.

    ``granularity`` and ``symmetric`` apply to weights (one scale per tensor or per output channel;
    zero point 0 on a signed grid, or affine on an unsigned grid). Activations are always per-tensor
    affine on an unsigned grid, with ranges from ``calibration`` (``percentile`` sets the clip for
    "percentile"). ``act_bits=None`` leaves activations in float (weight-only quantization).
    ``fold_bn`` folds each BatchNorm into the conv before it, as deployment does.

    Example: ``QuantConfig(bits=4, granularity="per_channel", calibration="mse")``
    """

    bits: int = 8
    act_bits: int | None = 8
    granularity: str = "per_tensor"
    symmetric: bool = True
    calibration: str = "minmax"
    percentile: float = 99.99
    fold_bn: bool = True

    def __post_init__(self) -> None:
        check_int("bits", self.bits, minimum=2, maximum=8)
        if self.act_bits is not None:
            check_int("act_bits", self.act_bits, minimum=2, maximum=8)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("symmetric", self.symmetric, (True, False))
        check_choice("calibration", self.calibration, CALIBRATIONS)
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 50 < p <= 100:
            raise ValueError(f"percentile must be a number in (50, 100]; got {p!r}")
        check_choice("fold_bn", self.fold_bn, (True, False))


# --------------------------------------------------------------------------- the fake-quant layer


class FakeQuantLayer(nn.Module):
    """A Linear/Conv1d/Conv2d computing on fake-quantized weights and inputs.

    The float weight stays the trainable parameter (``layer.weight``); each forward rounds it to
    the integer grid (fresh min-max qparams, per tensor or per output channel) and rounds the input
    with the calibrated activation qparams (``act_scale``, ``act_zero_point``). Rounding passes
    gradients straight through (:class:`FakeQuantSTE`), so the same layer serves PTQ and QAT.

    Example: ``FakeQuantLayer(nn.Linear(64, 10), QuantConfig(act_bits=None))(torch.randn(2, 64))``
    """

    def __init__(self, layer: nn.Module, config: QuantConfig) -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise ValueError(f"layer must be nn.Linear, nn.Conv1d or nn.Conv2d; got {type(layer)}")
        self.layer = layer
        self.config = config
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero_point", torch.zeros((), dtype=torch.int64))
        self.observer: Observer | None = None  # set while calibrating

    def weight_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) of the weight: shapes () per tensor, (out_channels,) per channel."""
        axis = 0 if self.config.granularity == "per_channel" else None
        return choose_qparams(
            self.layer.weight.detach(), self.config.bits, self.config.symmetric, axis
        )

    def quantized_weight(self) -> Tensor:
        """The weight rounded to the integer grid, in float, with a straight-through gradient."""
        scale, zp = self.weight_qparams()
        axis = 0 if self.config.granularity == "per_channel" else None
        w = self.layer.weight
        return fake_quantize_ste(w, scale, zp, self.config.bits, self.config.symmetric, axis)

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:  # calibrating: record the input range, compute in float
            self.observer.update(x.detach())
            return self.layer(x)
        if self.config.act_bits is not None:
            x = fake_quantize_ste(
                x, self.act_scale, self.act_zero_point, self.config.act_bits, False
            )
        w = self.quantized_weight()  # same shape as layer.weight
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)  # (..., out_features)
        return self.layer._conv_forward(x, w, self.layer.bias)  # (B, C_out, *spatial)

    def extra_repr(self) -> str:
        c = self.config
        acts = "float" if c.act_bits is None else f"{c.act_bits}-bit {c.calibration}"
        return f"weights={c.bits}-bit {c.granularity}, inputs={acts}"


def quantized_layers(model: nn.Module) -> dict[str, FakeQuantLayer]:
    """The model's fake-quant layers by name, in module order.

    Example: ``list(quantized_layers(qmodel))  # ['stem.0', 'blocks.0.depthwise.0', ...]``
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLayer)}


# --------------------------------------------------------------------------- model transforms


def quantize(
    model: nn.Module,
    config: QuantConfig | None = None,
    calib_data: Any = None,
    *,
    num_samples: int = 512,
    batch_size: int = 256,
) -> nn.Module:
    """Post-training quantization in simulation: a new model with fake-quant weights and inputs.

    The original ``model`` is untouched. See :func:`quantize_` for the arguments.
    Example: ``qmodel = quantize(model, QuantConfig(bits=8), data)  # data: ArrayData or X``
    """
    return quantize_(
        copy.deepcopy(model), config, calib_data, num_samples=num_samples, batch_size=batch_size
    )


def quantize_(
    model: nn.Module,
    config: QuantConfig | None = None,
    calib_data: Any = None,
    *,
    num_samples: int = 512,
    batch_size: int = 256,
) -> nn.Module:
    """In place: fold BatchNorm, wrap every Linear/Conv in :class:`FakeQuantLayer`, calibrate.

    ``calib_data`` (needed unless ``config.act_bits`` is None): an ArrayData (its train split), an
    ``(X, y)`` tuple, a tensor X, or an iterable of such batches; the first ``num_samples`` inputs
    are used. Returns ``model`` (in eval mode).
    Example: ``quantize_(model, QuantConfig(granularity="per_channel"), data)``
    """
    config = QuantConfig() if config is None else config
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a QuantConfig; got {type(config).__name__}")
    if quantized_layers(model):
        raise ValueError("model must be a float model; got one that is already quantized")
    if config.act_bits is not None and calib_data is None:
        raise ValueError("calib_data must be given when act_bits is set (or use act_bits=None)")
    model.eval()
    if config.fold_bn:
        fold_bn_(model)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    for name, layer in targets:
        _set_submodule(model, name, FakeQuantLayer(layer, config))
    if config.act_bits is not None:
        calibrate_(model, calib_data, num_samples=num_samples, batch_size=batch_size)
    return model


@torch.no_grad()
def calibrate_(
    model: nn.Module, calib_data: Any, *, num_samples: int = 512, batch_size: int = 256
) -> nn.Module:
    """Run calibration batches through ``model`` and set every layer's activation qparams.

    Each :class:`FakeQuantLayer` gets a fresh :class:`Observer` (its config's method) on its input;
    the float layers compute while observing. Example: ``calibrate_(qmodel, data.X_train[:512])``
    """
    layers = list(quantized_layers(model).values())
    if not layers:
        raise ValueError("model must hold FakeQuantLayer modules; call quantize_ first")
    for m in layers:
        c = m.config
        m.observer = Observer(c.calibration, c.act_bits or 8, percentile=c.percentile)
    training = model.training
    model.eval()
    try:
        seen = 0
        for X in input_batches(calib_data, batch_size):
            X = X[: num_samples - seen]  # (b, *input_shape)
            model(X)
            seen += len(X)
            if seen >= num_samples:
                break
        if seen == 0:
            raise ValueError("calib_data must hold at least one sample; got none")
        for m in layers:
            scale, zp = m.observer.qparams()
            m.act_scale.copy_(scale)
            m.act_zero_point.copy_(zp)
    finally:
        for m in layers:
            m.observer = None
        model.train(training)
    return model


def qat(model: nn.Module, data: Any, config: QuantConfig | None = None, **kwargs: Any) -> nn.Module:
    """Quantization-aware training: a new model, PTQ-initialised, fine-tuned through fake-quant.

    ``model`` may be float (it is quantized first with ``config``, calibrating on ``data``'s train
    split) or already fake-quantized. The forward pass rounds weights and inputs exactly as at
    inference; the backward pass treats rounding as identity inside the clamp range (STE), so the
    float weights learn to sit where rounding hurts least. Activation ranges stay as calibrated.
    Keyword arguments (``num_epochs=3, lr=1e-4, batch_size=64, num_samples=512, seed=0,
    progress=None``) are those of :func:`qat_`.
    Example: ``qmodel = qat(model, data, QuantConfig(bits=4), num_epochs=3)``
    """
    return qat_(copy.deepcopy(model), data, config, **kwargs)


def qat_(
    model: nn.Module,
    data: Any,
    config: QuantConfig | None = None,
    *,
    num_epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 64,
    num_samples: int = 512,
    seed: int = 0,
    progress: bool | None = None,
) -> nn.Module:
    """In-place :func:`qat`; returns ``model`` in eval mode. Example: ``qat_(qmodel, data)``"""
    from labkit import train

    if not quantized_layers(model):
        quantize_(model, config, data, num_samples=num_samples)
    elif config is not None:
        raise ValueError("config must be None when model is already quantized; got a QuantConfig")
    train.fit(
        model,
        data,
        num_epochs=num_epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        val=False,
        progress=progress,
    )
    return model.eval()


def fold_bn(model: nn.Module) -> nn.Module:
    """A new model with each BatchNorm folded into the conv before it. Example: ``fold_bn(m)``"""
    return fold_bn_(copy.deepcopy(model))


def fold_bn_(model: nn.Module) -> nn.Module:
    """In place: fold ``Conv -> BatchNorm`` pairs that sit next to each other in an nn.Sequential.

    In eval mode BatchNorm is the per-channel affine map ``g * (x - mean) / sqrt(var + eps) + b``,
    so it merges into the conv's weight and bias; the BatchNorm becomes ``nn.Identity``. The
    outputs are unchanged (to float rounding). Folding is why depthwise convs quantize badly per
    tensor: each channel's weights get scaled by its own ``g / sqrt(var)``.
    Example: ``fold_bn_(model.eval())``
    """
    pairs = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d))
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names[:-1], names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if any(isinstance(conv, c) and type(bn) is n for c, n in pairs):
                seq._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq._modules[b] = nn.Identity()
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def input_batches(data: Any, batch_size: int) -> Iterator[Tensor]:
    """Calibration input tensors (b, *input_shape) from ArrayData, (X, y), X, or batches."""
    if hasattr(data, "X_train"):
        data = data.X_train
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        data = data[0]
    if torch.is_tensor(data):
        yield from data.split(batch_size)
        return
    if not isinstance(data, Iterable):
        raise ValueError(f"calib_data must be ArrayData, (X, y), X or batches; got {type(data)}")
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


# --------------------------------------------------------------------------- bytes


def packed_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """What a deployment would store: integer weights packed ``bits`` per entry, plus qparams.

    Each :class:`FakeQuantLayer` contributes ``weight_packed`` (uint8, :func:`pack_bits` of the
    codes), ``weight_scale`` (float32), ``weight_zero_point`` (affine only, int8/uint8), its fp32
    bias and its activation qparams; every other parameter and buffer stays as it is (fp32).
    Example: ``sd = packed_state_dict(qmodel); torch.save(sd, "model.pt")``
    """
    packed = model.state_dict()  # keeps torch's metadata: a float model saves byte for byte alike
    layers = quantized_layers(model)
    for name in layers:
        del packed[f"{name}.layer.weight"]
    for name, m in layers.items():
        c, axis = m.config, (0 if m.config.granularity == "per_channel" else None)
        scale, zp = m.weight_qparams()
        q = quantize_affine(m.layer.weight.detach(), scale, zp, c.bits, c.symmetric, axis)
        codes = q.to(torch.int16) + (2 ** (c.bits - 1) if c.symmetric else 0)  # unsigned
        packed[f"{name}.weight_packed"] = pack_bits(codes.flatten().to(torch.uint8), c.bits)
        packed[f"{name}.weight_scale"] = scale.float()
        if not c.symmetric:
            packed[f"{name}.weight_zero_point"] = zp.to(torch.uint8)
    return packed


def packed_bytes(model: nn.Module) -> int:
    """REAL bytes of ``torch.save(packed_state_dict(model))`` (container included).

    For a float model (nothing quantized) this equals ``labkit.measure.model_bytes``.
    Example: ``packed_bytes(qmodel) / measure.model_bytes(model)  # about 0.27 at 8 bits``
    """
    buf = io.BytesIO()
    torch.save(packed_state_dict(model), buf)
    return buf.getbuffer().nbytes


@contextlib.contextmanager
def hold_zeros(model: nn.Module) -> Iterator[None]:
    """Inside the block, exactly-zero weights of ``model``'s quantized layers get zero gradient.

    The exactly-zero weights get zero gradient (so, with Adam and no weight decay, they stay zero):
    quantization-aware training of a pruned model keeps its pruned weights out.
    Example: ``with hold_zeros(qmodel): train.fit(qmodel, ...)``
    """
    handles = []
    for m in quantized_layers(model).values():
        keep = (m.layer.weight != 0).float()  # same shape as the weight
        handles.append(m.layer.weight.register_hook(lambda g, keep=keep: g * keep))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
