"""8-bit (and fewer-bit) quantization from first principles, simulated with fake-quant in torch.

A number ``x`` is stored as an integer ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``
and read back as ``(q - zero_point) * scale``. Everything here is that formula, applied with care:

* **Primitives** (bottom of the file): :func:`choose_qparams`, :func:`quantize_affine`,
  :func:`dequantize_affine`, :func:`fake_quantize_affine`, bit-exact against PyTorch's
  ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` (round half to even, and
  ``x * (1 / scale)`` rather than ``x / scale``, as PyTorch's kernels do).
* **Observers** collect activation ranges on calibration batches: ``"minmax"``, ``"percentile"``
  (clip rare outliers) or ``"mse"`` (the clipping range with the least squared error).
* **Model transforms**: :func:`quantize` / :func:`quantize_` fold BatchNorm into the convs, then
  wrap every Linear/Conv1d/Conv2d so its weight and its input are fake-quantized: the float model
  computes what integer hardware would. :func:`qat` fine-tunes through the rounding with the
  straight-through estimator (:class:`FakeQuantSTE`). :func:`packed_bytes` is the real serialized
  size of the integer weights, packed ``bits`` per weight.

Real int8 kernels (for speed, via ``torch.ao``) live in ``labkit.quant_int8``; this file never needs
them.

Example:
    >>> import torch
    >>> from labkit import quant
    >>> x = torch.tensor([-1.0, 0.0, 0.3, 2.0])
    >>> scale, zp = quant.choose_qparams(x, bits=8, symmetric=True)
    >>> quant.quantize_affine(x, scale, zp, bits=8, symmetric=True)
    tensor([-64,   0,  19, 127], dtype=torch.int8)
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from labkit.utils import check_choice, check_int

__all__ = [
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
    "Observer",
    "FakeQuantSTE",
    "fake_quantize_ste",
    "qrange",
    "qparams_from_range",
    "choose_qparams",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
    "pack_bits",
    "hold_zeros",
    "unpack_bits",
]

GRANULARITIES = ("per_tensor", "per_channel")
CALIBRATIONS = ("minmax", "percentile", "mse")
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


# --------------------------------------------------------------------------- observers


class Observer:
    """Collects the range of the tensors it sees; turns it into (scale, zero_point).

    ``method``: "minmax" (the extreme values), "percentile" (the ``percentile`` / ``100 -
    percentile`` quantiles: rare outliers get clipped), "mse" (the clipping range, among ``grid``
    shrunk copies of the min-max range, whose fake-quant has the least mean squared error).
    Percentile and MSE work on a seeded random sample of at most ``max_samples`` values.
    Example: ``obs = Observer("percentile"); obs.update(x); scale, zp = obs.qparams()``
    """

    def __init__(
        self,
        method: str = "minmax",
        bits: int = 8,
        symmetric: bool = False,
        *,
        percentile: float = 99.99,
        grid: int = 64,
        max_samples: int = 2**17,
        seed: int = 0,
    ) -> None:
        self.method = check_choice("method", method, CALIBRATIONS)
        self.bits = check_int("bits", bits, minimum=2, maximum=8)
        self.symmetric = check_choice("symmetric", symmetric, (True, False))
        self.percentile = float(percentile)
        self.grid = check_int("grid", grid, minimum=1)
        self.max_samples = check_int("max_samples", max_samples, minimum=1)
        self.min_val = torch.tensor(float("inf"))
        self.max_val = torch.tensor(float("-inf"))
        self.samples: list[Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, x: Tensor) -> None:
        """Record one batch (any shape)."""
        x = x.detach().float().flatten()  # (N,)
        if x.numel() == 0:
            return
        self.min_val = torch.minimum(self.min_val, x.min())
        self.max_val = torch.maximum(self.max_val, x.max())
        if self.method != "minmax":
            if x.numel() > self.max_samples:
                idx = torch.randint(x.numel(), (self.max_samples,), generator=self._generator)
                x = x[idx]  # (max_samples,)
            self.samples.append(x)
            pool = torch.cat(self.samples)
            if pool.numel() > self.max_samples:
                idx = torch.randperm(pool.numel(), generator=self._generator)[: self.max_samples]
                pool = pool[idx]
            self.samples = [pool]

    def range(self) -> tuple[Tensor, Tensor]:
        """(low, high) of the quantization range, by the observer's method."""
        if not torch.isfinite(self.min_val):
            raise ValueError("observer must see at least one batch before range(); got none")
        lo, hi = self.min_val, self.max_val
        if self.method == "percentile":
            sample = self.samples[0]
            q = torch.tensor([100 - self.percentile, self.percentile]) / 100
            lo, hi = torch.quantile(sample, q)
        elif self.method == "mse":
            lo, hi = self._mse_range(self.samples[0], lo, hi)
        return lo, hi

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) for :func:`fake_quantize_affine` on the observed range."""
        lo, hi = self.range()
        return qparams_from_range(lo, hi, self.bits, self.symmetric)

    def _mse_range(self, sample: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        best, best_err = (lo, hi), float("inf")
        for i in range(self.grid, 0, -1):
            frac = i / self.grid
            scale, zp = qparams_from_range(lo * frac, hi * frac, self.bits, self.symmetric)
            err = fake_quantize_affine(sample, scale, zp, self.bits, self.symmetric) - sample
            err = float(err.square().mean())
            if err < best_err:
                best, best_err = (lo * frac, hi * frac), err
        return best


# --------------------------------------------------------------------------- straight-through


class FakeQuantSTE(torch.autograd.Function):
    """Fake-quant whose backward is the straight-through estimator.

    Forward: :func:`fake_quantize_affine`. Backward: the gradient passes unchanged where the
    unclamped integer ``round(x / scale) + zero_point`` lies inside ``[qmin, qmax]`` and is zero
    outside (clipped values cannot move the output), exactly as PyTorch's fake-quant backward.
    Example: ``y = FakeQuantSTE.apply(x, scale, zp, 8, True, None)``
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, bits=8, symmetric=True, axis=None):  # noqa: D102
        qmin, qmax = qrange(bits, symmetric)
        s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
        q = torch.round(x * torch.reciprocal(s)) + z  # unclamped integers, as floats
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None, None, None


def fake_quantize_ste(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
) -> Tensor:
    """:func:`fake_quantize_affine` with a straight-through gradient (:class:`FakeQuantSTE`).

    Example: ``w_q = fake_quantize_ste(w, scale, zp, 4, True, axis=0)``
    """
    return FakeQuantSTE.apply(x, scale, zero_point, bits, symmetric, axis)


# --------------------------------------------------------------------------- pure primitives


def qrange(bits: int = 8, symmetric: bool = True) -> tuple[int, int]:
    """The integer grid: signed ``[-2^(b-1), 2^(b-1)-1]`` if symmetric, else ``[0, 2^b - 1]``.

    Example: ``qrange(8, True)  # (-128, 127)``; ``qrange(4, False)  # (0, 15)``
    """
    check_int("bits", bits, minimum=2, maximum=8)
    check_choice("symmetric", symmetric, (True, False))
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def qparams_from_range(
    x_min: Tensor | float, x_max: Tensor | float, bits: int = 8, symmetric: bool = True
) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) that map the range ``[x_min, x_max]`` (widened to hold 0) onto the grid.

    Symmetric: ``scale = max(|x_min|, |x_max|) / (2^(b-1) - 1)``, zero_point 0, so ``±max`` land on
    ``±qmax`` (the code ``-2^(b-1)`` stays unused). Affine: ``scale = (x_max - x_min) / (2^b - 1)``,
    ``zero_point = qmin - round(x_min / scale)``, as ``torch.ao``'s MinMaxObserver. Either way 0.0
    is exactly representable and the scale is at least float32 eps. Shapes follow ``x_min``.
    Example: ``qparams_from_range(0.0, 2.55, 8, False)  # (tensor(0.0100), tensor(0))``
    """
    qmin, qmax = qrange(bits, symmetric)
    x_min = torch.as_tensor(x_min, dtype=torch.float32)
    x_max = torch.as_tensor(x_max, dtype=torch.float32)
    if bool((x_min > x_max).any()):
        raise ValueError("x_min must be <= x_max; got a range with x_min > x_max")
    min_neg = torch.clamp(x_min, max=0.0)
    max_pos = torch.clamp(x_max, min=0.0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = torch.maximum(-min_neg, max_pos) / qmax
        return scale.clamp(min=eps), torch.zeros_like(scale, dtype=torch.int64)
    scale = ((max_pos - min_neg) / float(qmax - qmin)).clamp(min=eps)
    zero_point = qmin - torch.round(min_neg / scale).to(torch.int64)
    return scale, zero_point.clamp(qmin, qmax)


def choose_qparams(
    x: Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None
) -> tuple[Tensor, Tensor]:
    """Min-max (scale, zero_point) of ``x``: one pair (shape ``()``), or one per slice on ``axis``.

    Example: ``scale, zp = choose_qparams(conv.weight, 8, True, axis=0)  # (C_out,), (C_out,)``
    """
    if axis is None:
        return qparams_from_range(x.min(), x.max(), bits, symmetric)
    axis = check_int("axis", axis, minimum=-x.dim(), maximum=x.dim() - 1) % x.dim()
    flat = x.transpose(0, axis).reshape(x.shape[axis], -1)  # (C, rest)
    return qparams_from_range(flat.min(dim=1).values, flat.max(dim=1).values, bits, symmetric)


def quantize_affine(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
) -> Tensor:
    """Integer codes ``clamp(round(x * (1/scale)) + zero_point, qmin, qmax)`` (int8 or uint8).

    ``round`` is half-to-even (like ``torch.round`` and C's ``nearbyint``); multiplying by the
    float32 reciprocal, not dividing, is what PyTorch's kernels do, so results match bit for bit.
    Per-channel ``scale``/``zero_point`` have shape ``(x.shape[axis],)``.
    Example: ``quantize_affine(torch.tensor([0.26]), torch.tensor(0.1), torch.tensor(0))  # [3]``
    """
    qmin, qmax = qrange(bits, symmetric)
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    q = torch.clamp(torch.round(x * torch.reciprocal(s)) + z, qmin, qmax)  # same shape as x
    return q.to(torch.int8 if symmetric else torch.uint8)


def dequantize_affine(
    q: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None
) -> Tensor:
    """Float values ``(q - zero_point) * scale`` of integer codes ``q``.

    Example: ``dequantize_affine(torch.tensor([3]), torch.tensor(0.1), torch.tensor(0))  # [0.3]``
    """
    s, z = _broadcast(scale, q, axis), _broadcast(zero_point, q, axis)
    return (q.float() - z.float()) * s  # same shape as q


def fake_quantize_affine(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
) -> Tensor:
    """``dequantize_affine(quantize_affine(x))`` in float: x snapped to the nearest grid point.

    Equal, bit for bit, to ``torch.fake_quantize_per_tensor_affine`` (``axis=None``) and
    ``torch.fake_quantize_per_channel_affine`` with ``qrange(bits, symmetric)``.
    Example: ``fake_quantize_affine(x, *choose_qparams(x, 4), bits=4)``
    """
    qmin, qmax = qrange(bits, symmetric)
    s, z = _broadcast(scale, x, axis), _broadcast(zero_point, x, axis)
    q = torch.clamp(torch.round(x * torch.reciprocal(s)) + z, qmin, qmax)  # integers, as floats
    return (q - z) * s  # same shape as x


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack unsigned integer codes (values < 2^bits) into bytes, ``bits`` per code.

    One little-endian bit stream, the first code in the lowest bits: two 4-bit codes per byte (low
    nibble first), four 2-bit codes, eight 1-bit codes; 3-bit codes run across byte boundaries (8
    codes in 3 bytes). ``n`` codes take ``ceil(n * bits / 8)`` bytes (uint8), the end padded with
    zero bits. Vectorised per chunk of ``lcm(bits, 8)`` bits. Inverse: :func:`unpack_bits`.
    Example: ``pack_bits(torch.tensor([1, 2, 3, 0]), 2)  # tensor([57], dtype=torch.uint8)``
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    codes = codes.flatten().to(torch.int64)  # (n,)
    n = codes.numel()
    if n and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"codes must be integers in [0, {2**bits - 1}]; got values outside")
    per = math.lcm(bits, 8) // bits  # codes per chunk
    nbytes = math.lcm(bits, 8) // 8  # bytes per chunk
    chunks = F.pad(codes, (0, -n % per)).view(-1, per)  # (C, per)
    value = (chunks << (bits * torch.arange(per))).sum(dim=1)  # (C,) <= 56 bits, no overlap
    out = (value[:, None] >> (8 * torch.arange(nbytes))) & 255  # (C, nbytes)
    return out.flatten()[: math.ceil(n * bits / 8)].to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """The first ``numel`` codes stored by :func:`pack_bits`, int64, shape ``(numel,)``.

    Example: ``unpack_bits(torch.tensor([57], dtype=torch.uint8), 2, 4)  # tensor([1, 2, 3, 0])``
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    numel = check_int("numel", numel, minimum=0)
    per, nbytes = math.lcm(bits, 8) // bits, math.lcm(bits, 8) // 8
    needed = math.ceil(numel * bits / 8)
    if packed.numel() < needed:
        raise ValueError(f"packed must hold {needed} bytes; got {packed.numel()}")
    raw = packed.flatten().to(torch.int64)
    raw = F.pad(raw, (0, -raw.numel() % nbytes)).view(-1, nbytes)  # (C, nbytes)
    value = (raw << (8 * torch.arange(nbytes))).sum(dim=1)  # (C,)
    codes = (value[:, None] >> (bits * torch.arange(per))) & (2**bits - 1)  # (C, per)
    return codes.flatten()[:numel]


def _broadcast(t: Tensor | float, x: Tensor, axis: int | None) -> Tensor:
    """A per-tensor qparam as a 0-d tensor; a per-channel (C,) one shaped to broadcast on axis."""
    t = torch.as_tensor(t, device=x.device)
    if axis is None:
        if t.numel() != 1:
            raise ValueError(
                f"axis must be set for per-channel qparams; got shape {tuple(t.shape)}"
            )
        return t.reshape(())
    axis = axis % x.dim()
    if t.dim() != 1 or t.numel() != x.shape[axis]:
        raise ValueError(
            f"scale and zero_point must have shape ({x.shape[axis]},) for axis={axis}; "
            f"got {tuple(t.shape)}"
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.view(shape)  # broadcasts along every other dimension


@contextlib.contextmanager
def hold_zeros(model: nn.Module) -> Iterator[None]:
    """Inside the block, the exactly-zero weights of ``model``'s quantized layers get zero gradient
    (so, with Adam and no weight decay, they stay zero): quantization-aware training of a pruned
    model keeps its pruned weights out. Example: ``with hold_zeros(qmodel): train.fit(qmodel, ...)``
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
