"""8-bit (and fewer-bit) quantization from first principles, simulated with fake-quant in torch.

A number ``x`` is stored as an integer ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``
and read back as ``(q - zero_point) * scale``. Everything here is that formula, applied with care:

* **Primitives** (``affine``): :func:`choose_qparams`, :func:`quantize_affine`,
  :func:`dequantize_affine`, :func:`fake_quantize_affine`, bit-exact against PyTorch's
  ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` (round half to even, and
  ``x * (1 / scale)`` rather than ``x / scale``, as PyTorch's kernels do).
* **Observers** (``observers``) collect activation ranges on calibration batches:
  ``"minmax"``, ``"percentile"`` (clip rare outliers) or ``"mse"`` (the clipping range with the
  least squared error).
* **Model transforms** (``fake``): :func:`quantize` / :func:`quantize_` fold BatchNorm into the
  convs, then wrap every Linear/Conv1d/Conv2d so its weight and its input are fake-quantized: the
  float model computes what integer hardware would. :func:`qat` fine-tunes through the rounding
  with the straight-through estimator (:class:`FakeQuantSTE`). :func:`packed_bytes` is the real
  serialized size of the integer weights, packed ``bits`` per weight.

The package also holds ``packing`` (one bit packer, 1 to 8 bits per code), ``int8`` (real int8
kernels via ``torch.ao``, for speed), ``integer`` and ``fixedpoint`` (integer-only inference, as
integer hardware runs it), and ``lowbit`` and ``codes`` (4/3/2-bit, ternary and binary weights,
GPTQ, codebooks). Their names are used through the file: ``from labkit.quant import lowbit``;
every name listed below is ``quant.<name>``.

Example:
    >>> import torch
    >>> from labkit import quant
    >>> x = torch.tensor([-1.0, 0.0, 0.3, 2.0])
    >>> scale, zp = quant.choose_qparams(x, bits=8, symmetric=True)
    >>> quant.quantize_affine(x, scale, zp, bits=8, symmetric=True)
    tensor([-64,   0,  19, 127], dtype=torch.int8)
"""

from labkit.quant import affine, codes, fake, fixedpoint, int8, integer, lowbit, observers, packing
from labkit.quant.affine import *  # noqa: F403 - the package's names are its files' __all__
from labkit.quant.fake import *  # noqa: F403
from labkit.quant.observers import *  # noqa: F403
from labkit.quant.packing import *  # noqa: F403

__all__ = [
    *fake.__all__,
    *observers.__all__,
    *affine.__all__,
    *packing.__all__,
    "affine",
    "codes",
    "fake",
    "fixedpoint",
    "int8",
    "integer",
    "lowbit",
    "observers",
    "packing",
]
