"""Integer-only inference from first principles (Jacob et al., 2018, sections 2.2-2.4).

"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"
(Jacob, Kligys, Chen, Zhu, Tang, Howard, Adam and Kalenichenko, CVPR 2018) runs a whole network on
integers: uint8 activations ``q`` standing for ``s * (q - z)``, int8 weights, int32 accumulators.

* A layer multiplies uint8 by int8 and sums in **int32** (eq. 7: the zero point of the input comes
  out as ``z_x * sum(w)``, precomputed per output channel); the **bias** is an int32 at scale
  ``s_x * s_w`` and zero point 0, added to the accumulator.
* The accumulator is **requantized** to the output scale by ``M = s_x * s_w / s_y``, the one real
  number left, written as ``M = M0 * 2^-n`` with ``M0`` in [0.5, 1) stored as an int32 in Q31
  (:func:`quantize_multiplier`). Multiplying by it is a rounding, saturating "doubling high
  multiply" (:func:`saturating_rounding_doubling_high_mul`) then a rounding right shift
  (:func:`rounding_divide_by_pot`): gemmlowp's ``SaturatingRoundingDoublingHighMul`` and
  ``RoundingDivideByPOT``, as TensorFlow Lite uses them.
* The output zero point is added and the result **saturates** to [0, 255]; a ReLU after the layer
  is fused as a clamp at the output zero point (the code of the real 0).

:class:`IntegerLinear` and :class:`IntegerConv2d` do exactly that on integer tensors (int64 only
inside the high multiply); :func:`to_integer` turns a float chain of layers (the zoo's MLP, LeNet,
DSCNN) into an :class:`IntegerModel` whose only float operations are quantizing the input and
dequantizing the logits. :func:`torch_ao_reference` builds the same network from ``torch.ao``'s
quantized kernels. Their requantization is float32, ``nearbyint(float(acc) * M)``; with the same
float32 ``M`` (which ``M0`` holds exactly) and ``rounding="single"`` the two agree except where
``acc * M`` lies within float32 rounding of a half-integer (off by 1 code, a few outputs in a
million; ours is the nearest integer). gemmlowp's double rounding (``rounding="double"``, the
default) is off by 1 for about one output in ``2^n`` besides. FBGEMM's depthwise kernel differs
by a few codes on some outputs; QNNPACK and oneDNN do not.

Example:
    >>> import torch
    >>> from labkit.quant import integer as qi
    >>> m0, n = qi.quantize_multiplier(torch.tensor(0.3))  # float32 0.3 = 0.6 * 2^-1
    >>> int(m0), int(n)
    (1288490240, 1)
    >>> qi.multiply_by_quantized_multiplier(torch.tensor([100, -7], dtype=torch.int32), m0, n)
    tensor([30, -2], dtype=torch.int32)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.quant.affine import choose_qparams, qparams_from_range, quantize_affine
from labkit.quant.fake import fold_bn_, input_batches
from labkit.quant.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    ROUNDINGS,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from labkit.utils import ArgumentTypeError, check_choice, check_int

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "quantize_multiplier",
    "multiply_by_quantized_multiplier",
    "requantize",
    "IntegerLinear",
    "IntegerConv2d",
    "IntegerModel",
    "to_integer",
    "torch_ao_reference",
]
GRANULARITIES = ("per_tensor", "per_channel")


# --------------------------------------------------------------------------- integer layers


class _IntegerLayer(nn.Module):
    """Shared parts of IntegerLinear/IntegerConv2d: quantized weight, int32 bias, requantization."""

    def __init__(
        self,
        layer: nn.Linear | nn.Conv2d,
        input_qparams: tuple[float, int],
        output_qparams: tuple[float, int],
        granularity: str = "per_channel",
        relu: bool = False,
        rounding: str = "double",
    ) -> None:
        super().__init__()
        check_choice("granularity", granularity, GRANULARITIES)
        check_choice("relu", relu, (True, False))
        self.rounding = check_choice("rounding", rounding, ROUNDINGS)
        w = layer.weight.detach().float()
        k = w[0].numel()  # products summed per output (per group for convs)
        if k > 65793:  # 255 * 128 * k must stay below 2^31
            raise ValueError(f"layer fan-in must be at most 65793 for an int32 sum; got {k}")
        axis = 0 if granularity == "per_channel" else None
        w_scale, _ = choose_qparams(w, 8, True, axis)  # symmetric: zero point 0
        s_x = torch.tensor(float(input_qparams[0]), dtype=torch.float32)
        s_y = torch.tensor(float(output_qparams[0]), dtype=torch.float32)
        w_scale = w_scale.float().expand(w.shape[0]).clone()  # (C_out,) in both granularities
        bias_scale = s_x * w_scale  # (C_out,) float32, as torch.ao computes it
        bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(w.shape[0])
        bias_q = torch.round(bias / bias_scale).clamp(INT32_MIN, INT32_MAX)
        m0, n = quantize_multiplier(bias_scale / s_y)  # M = s_x * s_w / s_y, per channel
        self.granularity, self.relu = granularity, relu
        self.input_scale, self.input_zero_point = float(s_x), int(input_qparams[1])
        self.output_scale, self.output_zero_point = float(s_y), int(output_qparams[1])
        zeros = torch.zeros(w.shape[0], dtype=torch.int64)
        weight = quantize_affine(w, w_scale, zeros, 8, True, 0)  # per tensor: equal scales
        self.register_buffer("weight", weight)  # int8, same shape as layer.weight
        self.register_buffer("weight_scale", w_scale)
        self.register_buffer("bias", bias_q.to(torch.int32))  # (C_out,) at scale s_x * s_w
        w_sum = self.weight.to(torch.int32).flatten(1).sum(dim=1, dtype=torch.int32)
        self.register_buffer("weight_sum", w_sum)  # (C_out,) int32, for eq. 7
        self.register_buffer("multiplier", m0)  # (C_out,) int32, Q31
        self.register_buffer("shift", n)  # (C_out,) int64, right shift

    def requantize(self, acc: Tensor, channel_dim: int) -> Tensor:
        shape = [1] * acc.dim()
        shape[channel_dim] = -1
        z = self.output_zero_point
        qmin = z if self.relu else 0
        m0, n = self.multiplier.view(shape), self.shift.view(shape)
        return requantize(acc, m0, n, z, qmin, 255, self.rounding)

    def forward(self, x: Tensor) -> Tensor:
        return self.steps(x)["output"]

    def extra_repr(self) -> str:
        relu = ", relu fused" if self.relu else ""
        shape = tuple(self.weight.shape)
        return f"{shape}, int8 {self.granularity} weights, {self.rounding} rounding{relu}"


class IntegerLinear(_IntegerLayer):
    """A Linear layer on uint8 inputs, int8 weights, int32 accumulator and bias; uint8 outputs.

    Build it from a float ``nn.Linear`` and the (scale, zero_point) of its input and output
    (uint8, affine). ``steps(x)`` returns every intermediate; ``forward`` the uint8 output.
    Example: ``IntegerLinear(nn.Linear(64, 10), (0.02, 0), (0.1, 128))(x_uint8)  # (B, 10)``
    """

    def __init__(self, layer: nn.Linear, input_qparams, output_qparams, granularity="per_channel",
                 relu=False, rounding="double") -> None:  # fmt: skip
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"layer must be an nn.Linear; got {type(layer).__name__}")
        super().__init__(layer, input_qparams, output_qparams, granularity, relu, rounding)

    def steps(self, x: Tensor) -> dict[str, Tensor]:
        """``input`` (uint8), ``accumulator`` (int32, bias included), ``output`` (uint8)."""
        _check_uint8(x)
        if x.dim() > 2:
            x = x.flatten(1)  # (B, features)
        products = x.to(torch.int32) @ self.weight.to(torch.int32).T  # (B, C_out) sum of q_x * q_w
        acc = products - self.input_zero_point * self.weight_sum + self.bias  # eq. 7, + bias
        return {"input": x, "accumulator": acc, "output": self.requantize(acc, 1)}


class IntegerConv2d(_IntegerLayer):
    """A Conv2d on integers: the unfolded uint8 input patches times int8 filters, in int32.

    Zero padding pads with the input zero point (the code of the real 0). Any stride, padding,
    dilation and groups (depthwise included); padding mode "zeros" only.
    Example: ``IntegerConv2d(nn.Conv2d(1, 8, 3, padding=1), (1 / 255, 0), (0.05, 0))(x)``
    """

    def __init__(self, layer: nn.Conv2d, input_qparams, output_qparams, granularity="per_channel",
                 relu=False, rounding="double") -> None:  # fmt: skip
        if not isinstance(layer, nn.Conv2d):
            raise ValueError(f"layer must be an nn.Conv2d; got {type(layer).__name__}")
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"padding must be numbers with mode 'zeros'; got {layer.padding!r}")
        super().__init__(layer, input_qparams, output_qparams, granularity, relu, rounding)
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups

    def steps(self, x: Tensor) -> dict[str, Tensor]:
        """``input``, ``patches`` (uint8), ``accumulator`` (int32), ``output`` (uint8)."""
        _check_uint8(x)
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        c_out, c_g, kh, kw = self.weight.shape
        g = self.groups
        xp = F.pad(x, (pw, pw, ph, ph), value=self.input_zero_point)  # (B, C, H + 2ph, W + 2pw)
        patches = xp.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
        patches = patches[..., ::dh, ::dw]  # (B, C, H_out, W_out, kh, kw)
        B, _, h_out, w_out = patches.shape[:4]
        cols = patches.reshape(B, g, c_g, h_out, w_out, kh * kw).permute(0, 1, 3, 4, 2, 5)
        cols = cols.reshape(B, g, h_out * w_out, c_g * kh * kw)  # (B, G, HW, K)
        w = self.weight.to(torch.int32).reshape(g, c_out // g, c_g * kh * kw)  # (G, C_out/G, K)
        products = torch.einsum("bgpk,gok->bgop", cols.to(torch.int32), w)  # (B, G, C_out/G, HW)
        products = products.reshape(B, c_out, h_out, w_out)  # (B, C_out, H_out, W_out)
        shape = (1, c_out, 1, 1)
        acc = products - self.input_zero_point * self.weight_sum.view(shape)
        acc = acc + self.bias.view(shape)  # int32
        return {"input": x, "patches": cols, "accumulator": acc, "output": self.requantize(acc, 1)}


class _IntegerMaxPool2d(nn.Module):
    """Max pooling on codes: quantizing is monotone, so the max of codes is the code of the max."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        k, s = pool.kernel_size, pool.stride
        self.kernel = (k, k) if isinstance(k, int) else tuple(k)
        self.stride = (s, s) if isinstance(s, int) else tuple(s)
        if pool.padding not in (0, (0, 0)) or pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            raise ValueError("MaxPool2d must have padding=0, dilation=1, ceil_mode=False")

    def forward(self, x: Tensor) -> Tensor:
        patches = x.unfold(2, self.kernel[0], self.stride[0]).unfold(
            3, self.kernel[1], self.stride[1]
        )
        return patches.amax(dim=(-2, -1))  # (B, C, H_out, W_out), uint8


class _IntegerGlobalAvgPool(nn.Module):
    """Global average pooling on codes: the same scale and zero point, ``sum / N`` rounded half
    to even by integer division (as ``torch.ao``'s quantized adaptive average pool rounds)."""

    def forward(self, x: Tensor) -> Tensor:
        total = x.to(torch.int32).sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        n = x.shape[2] * x.shape[3]
        q, r = torch.div(total, n, rounding_mode="floor"), torch.remainder(total, n)
        up = (2 * r > n) | ((2 * r == n) & (q % 2 == 1))
        return (q + up.to(torch.int32)).to(torch.uint8)


class _IntegerReLU(nn.Module):
    """A ReLU that did not follow a layer: clamp the codes at the zero point."""

    def __init__(self, zero_point: int) -> None:
        super().__init__()
        self.zero_point = zero_point

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(min=self.zero_point)


def _check_uint8(x: Tensor) -> None:
    if x.dtype != torch.uint8:
        raise ValueError(f"x must be a uint8 tensor of codes; got dtype {x.dtype}")


# --------------------------------------------------------------------------- whole models


class IntegerModel(nn.Module):
    """A chain of integer layers between one input quantization and one output dequantization.

    ``forward(x)``: float in, float logits out (for ``train.evaluate``); ``forward_int(q)``: uint8
    codes in and out, integers only; ``trace(x)``: every intermediate's name, dtype and shape.
    Example: ``imodel = to_integer(model, data); imodel(X).argmax(1)``
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], input_qparams, output_qparams) -> None:
        super().__init__()
        self.names = [n for n, _ in layers]
        self.layers = nn.ModuleList([m for _, m in layers])
        self.input_scale, self.input_zero_point = float(input_qparams[0]), int(input_qparams[1])
        self.output_scale, self.output_zero_point = float(output_qparams[0]), int(output_qparams[1])

    def quantize_input(self, x: Tensor) -> Tensor:
        """The one float step before the integers: ``clamp(round(x / s) + z, 0, 255)`` (uint8)."""
        s, z = torch.tensor(self.input_scale), torch.tensor(self.input_zero_point)
        return quantize_affine(x.float(), s, z, 8, symmetric=False)

    def forward_int(self, q: Tensor) -> Tensor:
        """Run the integer layers: uint8 codes ``q`` in, uint8 codes out, integers only."""
        _check_uint8(q)
        for layer in self.layers:
            q = layer(q)
        return q

    def forward(self, x: Tensor) -> Tensor:
        q = self.forward_int(self.quantize_input(x))
        return (q.to(torch.int32) - self.output_zero_point).float() * self.output_scale

    def trace(self, x: Tensor) -> list[dict]:
        """One row per intermediate tensor: ``layer, step, dtype, shape`` (steps of each layer)."""
        rows = [{"layer": "input", "step": "float input", "dtype": x.dtype, "shape": x.shape}]
        q = self.quantize_input(x)
        rows.append({"layer": "input", "step": "quantized", "dtype": q.dtype, "shape": q.shape})
        for name, layer in zip(self.names, self.layers):
            steps = layer.steps(q) if hasattr(layer, "steps") else {"output": layer(q)}
            for step, t in steps.items():
                if step != "input":
                    rows.append({"layer": name, "step": step, "dtype": t.dtype, "shape": t.shape})
            q = steps["output"]
        return rows


_LEAVES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)
_SKIPPED = (nn.Identity, nn.Dropout)


@torch.no_grad()
def to_integer(
    model: nn.Module,
    calib_data: Any,
    *,
    granularity: str = "per_channel",
    rounding: str = "double",
    num_samples: int = 512,
    batch_size: int = 256,
) -> IntegerModel:
    """An :class:`IntegerModel` computing ``model`` (float, untouched) in integers only.

    BatchNorm is folded first; each Linear/Conv2d (with the ReLU after it fused) becomes an
    integer layer; MaxPool2d, AdaptiveAvgPool2d(1), Flatten and stray ReLUs work on the codes.
    Activation qparams are min-max over the first ``num_samples`` inputs of ``calib_data`` (a
    tensor X, ``(X, y)`` or ArrayData): uint8 affine for the input and every layer's output.
    Weights are int8 symmetric, ``granularity`` "per_channel" or "per_tensor"; ``rounding`` is
    that of :func:`multiply_by_quantized_multiplier`. The model's forward
    must run its leaf modules one after the other in the order they are registered.
    Example: ``imodel = to_integer(models.pretrained("mlp", "digits"), digits)``
    """
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("rounding", rounding, ROUNDINGS)
    check_int("num_samples", num_samples, minimum=1)
    float_model = fold_bn_(copy.deepcopy(model).eval().float())
    leaves = [(n, m) for n, m in float_model.named_modules() if not list(m.children())]
    leaves = [(n, m) for n, m in leaves if not isinstance(m, _SKIPPED)]
    for name, m in leaves:
        if not isinstance(m, _LEAVES):
            raise ValueError(
                "model layers must be Linear, Conv2d, ReLU, MaxPool2d, AdaptiveAvgPool2d(1), "
                f"Flatten, BatchNorm after a conv; got {type(m).__name__} at {name!r}"
            )
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1)):
            raise ValueError(f"AdaptiveAvgPool2d output_size must be 1; got {m.output_size!r}")
    X = torch.cat(list(input_batches(calib_data, batch_size)))[:num_samples]
    if len(X) == 0:
        raise ValueError("calib_data must hold at least one sample; got none")
    order: list[str] = []
    lo: dict[str, Tensor] = {}
    hi: dict[str, Tensor] = {}

    def hook(name):
        def record(module, args, out):
            order.append(name)
            lo[name] = torch.minimum(lo.get(name, out.min()), out.min())
            hi[name] = torch.maximum(hi.get(name, out.max()), out.max())

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        for batch in X.split(batch_size):
            order.clear()
            float_model(batch)
    finally:
        for h in handles:
            h.remove()
    if order != [n for n, _ in leaves]:
        raise ValueError(
            "model must run its leaf modules once each, in registration order; got " + str(order)
        )

    def qparams(low: Tensor, high: Tensor) -> tuple[float, int]:
        scale, zp = qparams_from_range(low, high, 8, symmetric=False)
        return float(scale), int(zp)

    current = input_qparams = qparams(X.min(), X.max())
    layers: list[tuple[str, nn.Module]] = []
    i = 0
    while i < len(leaves):
        name, m = leaves[i]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            relu = i + 1 < len(leaves) and isinstance(leaves[i + 1][1], nn.ReLU)
            last = leaves[i + 1][0] if relu else name
            out = qparams(lo[last], hi[last])
            cls = IntegerLinear if isinstance(m, nn.Linear) else IntegerConv2d
            layers.append((name, cls(m, current, out, granularity, relu, rounding)))
            current, i = out, i + (2 if relu else 1)
            continue
        if isinstance(m, nn.MaxPool2d):
            layers.append((name, _IntegerMaxPool2d(m)))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            layers.append((name, _IntegerGlobalAvgPool()))
        elif isinstance(m, nn.ReLU):
            layers.append((name, _IntegerReLU(current[1])))
        else:
            layers.append((name, nn.Flatten(m.start_dim, m.end_dim)))
        i += 1
    return IntegerModel(layers, input_qparams, current).eval()


# --------------------------------------------------------------------------- torch.ao reference


class _TorchAOModel(nn.Module):
    def __init__(self, model: IntegerModel, layers: list[nn.Module], backend: str) -> None:
        super().__init__()
        self.integer_model, self.layers, self.backend = model, nn.ModuleList(layers), backend

    def forward_int(self, q: Tensor) -> Tensor:
        from labkit.quant.int8 import quiet

        m = self.integer_model
        with quiet():
            torch.backends.quantized.engine = self.backend
            x = torch._make_per_tensor_quantized_tensor(q, m.input_scale, m.input_zero_point)
            for layer in self.layers:
                x = layer(x)
        return x.int_repr()

    def forward(self, x: Tensor) -> Tensor:
        m = self.integer_model
        q = self.forward_int(m.quantize_input(x))
        return (q.to(torch.int32) - m.output_zero_point).float() * m.output_scale


def torch_ao_reference(model: IntegerModel, backend: str = "fbgemm") -> nn.Module:
    """The same network on ``torch.ao``'s quantized kernels: the oracle for :func:`to_integer`.

    It has the very same integer weights, int32 biases (passed as ``bias * s_x * s_w``) and scales.

    Its ``forward_int(q)`` maps uint8 codes to uint8 codes like ``model.forward_int``.
    Example: ``ref = torch_ao_reference(imodel); (ref.forward_int(q) == imodel.forward_int(q))``
    """
    from labkit.quant.int8 import quiet

    if not isinstance(model, IntegerModel):
        raise ArgumentTypeError(f"model must be an IntegerModel; got {type(model).__name__}")
    check_choice("backend", backend, tuple(torch.backends.quantized.supported_engines))
    with quiet():
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        torch.backends.quantized.engine = backend
        layers: list[nn.Module] = []
        for layer in model.layers:
            if isinstance(layer, _IntegerLayer):
                layers.append(_torch_ao_layer(layer, nnq, nniq))
            elif isinstance(layer, _IntegerMaxPool2d):
                layers.append(nn.MaxPool2d(layer.kernel, layer.stride))
            elif isinstance(layer, _IntegerGlobalAvgPool):
                layers.append(nn.AdaptiveAvgPool2d(1))
            elif isinstance(layer, _IntegerReLU):
                layers.append(nn.ReLU())
            else:
                layers.append(layer)
    return _TorchAOModel(model, layers, backend)


def _torch_ao_layer(layer: _IntegerLayer, nnq: Any, nniq: Any) -> nn.Module:
    w_scale = layer.weight_scale.double()
    zeros = torch.zeros(len(w_scale), dtype=torch.int64)
    w = torch._make_per_channel_quantized_tensor(layer.weight, w_scale, zeros, 0)
    bias = (layer.bias.double() * (layer.input_scale * layer.weight_scale.double())).float()
    if isinstance(layer, IntegerLinear):
        c_out, c_in = layer.weight.shape
        mod = (nniq.LinearReLU if layer.relu else nnq.Linear)(c_in, c_out)
        mod.set_weight_bias(w, bias)
        flatten = nn.Flatten()
    else:
        c_out, c_g, kh, kw = layer.weight.shape
        cls = nniq.ConvReLU2d if layer.relu else nnq.Conv2d
        mod = cls(c_g * layer.groups, c_out, (kh, kw), layer.stride, layer.padding,
                  layer.dilation, layer.groups)  # fmt: skip
        mod.set_weight_bias(w, bias)
        flatten = nn.Identity()
    mod.scale, mod.zero_point = layer.output_scale, layer.output_zero_point
    return nn.Sequential(flatten, mod)
