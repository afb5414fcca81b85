"""Real int8 execution on CPU, for speed and size, through PyTorch's ``torch.ao.quantization``.

``labkit.quant`` teaches quantization in plain torch and *simulates* integer arithmetic in float
(fake-quant), which shows the accuracy but runs no faster. To see the speed, the model must run on
integer kernels. On x86 CPUs PyTorch ships them in its ``torch.ao.quantization`` flow (FBGEMM /
oneDNN kernels): :func:`to_int8` converts a model, :func:`compare_speed` times it against the best
fp32 variant (layout, BatchNorm folded) in the same run.

``torch.ao.quantization`` is deprecated upstream (its successor, ``torchao``, targets newer hardware
and on a CPU without VNNI its int8 paths run slower than fp32). It still works in the pinned torch,
so this module uses it for measuring speed only and silences its deprecation warnings locally;
none of the teaching code depends on it.

* ``mode="static"``: weights AND activations in int8, activation ranges calibrated beforehand
  (FX graph mode: Conv+BatchNorm+ReLU are fused first). Best for conv nets.
* ``mode="dynamic"``: int8 weights for ``nn.Linear``; each activation batch is quantized on the fly
  with its own range. No calibration; good for linear-heavy models (MLPs, transformers).

Example:
    >>> import torch
    >>> from labkit.quant import int8 as quant_int8
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> qmodel = quant_int8.to_int8(model.eval(), torch.randn(8, 64), mode="dynamic")
    >>> qmodel(torch.randn(2, 64)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from labkit import measure
from labkit.quant.fake import fold_bn
from labkit.utils import check_choice, check_int

__all__ = ["MODES", "BACKENDS", "to_int8", "compare_speed", "quiet"]

MODES = ("static", "dynamic")
BACKENDS = ("x86", "fbgemm", "onednn", "qnnpack")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence ``torch.ao.quantization``'s deprecation and advisory warnings inside the block only.

    Example: ``with quiet(): qmodel(X)``
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*reduce_range.*", category=UserWarning)
        warnings.filterwarnings(
            "ignore", message=r".*Vector Neural Network.*", category=UserWarning
        )
        yield


def to_int8(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    mode: str = "static",
    backend: str = "x86",
    calib_data: Any = None,
    num_samples: int = 512,
    batch_size: int = 256,
) -> nn.Module:
    """A new model running on real int8 kernels (the float ``model`` is left untouched).

    ``static`` traces the model with ``torch.fx``, inserts observers, runs calibration inputs
    (``calib_data``: a tensor X, an ``(X, y)`` tuple or an ArrayData's train split, first
    ``num_samples``; default: ``example_inputs``) and converts. ``dynamic`` quantizes the weights
    of every ``nn.Linear`` only. ``backend`` selects the kernels and is set as
    ``torch.backends.quantized.engine`` (the converted model must run under the same engine).
    Static mode needs a model ``torch.fx`` can trace (the zoo's CNNs and MLPs; not the ViT, whose
    forward checks the input shape); dynamic mode works on any model.
    Example: ``q = to_int8(model, X[:64], mode="static", calib_data=data)``
    """
    check_choice("mode", mode, MODES)
    check_choice("backend", backend, BACKENDS)
    if backend not in torch.backends.quantized.supported_engines:
        shown = ", ".join(repr(e) for e in torch.backends.quantized.supported_engines)
        raise ValueError(
            f"backend must be one this torch build supports ({shown}); got {backend!r}"
        )
    check_int("num_samples", num_samples, minimum=1)
    args = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    float_model = copy.deepcopy(model).eval().cpu()
    with quiet():
        from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = backend
        if mode == "dynamic":
            return quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
        try:
            prepared = prepare_fx(float_model, get_default_qconfig_mapping(backend), args)
        except torch.fx.proxy.TraceError as err:
            raise ValueError(
                "model must be traceable by torch.fx for mode='static' (no Python control flow "
                f"on tensors); use mode='dynamic' for it ({str(err).splitlines()[0]})"
            ) from None
        with torch.no_grad():
            if calib_data is None:
                prepared(*args)
            else:
                X = _inputs(calib_data)[:num_samples]  # (n, *input_shape)
                for batch in X.split(batch_size):
                    prepared(batch)
        return convert_fx(prepared).eval()


def compare_speed(
    model: nn.Module,
    int8_models: Mapping[str, nn.Module],
    inputs: Tensor,
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
) -> list[dict]:
    """Latency of int8 variants against the BEST fp32 variant, all timed in one interleaved run.

    The fp32 candidates: the model as given and, when it has BatchNorm, the model with BatchNorm
    folded into its convs (:func:`labkit.quant.fold_bn`, as the int8 conversion does; otherwise
    int8 would be credited with the fusion). Each runs in NCHW and, for 4-D inputs to a model with
    ``nn.Conv2d``, in channels_last too; each int8 model likewise. One
    :func:`labkit.measure.compare_latency` run times every variant round-robin. Returns one row
    per variant (``name, layout, fp32, median_ms, p10_ms, p90_ms, speedup``), fastest first;
    ``speedup`` = best fp32 median / this median (> 1 is faster).
    Example: ``compare_speed(model, {"int8 static": q}, X[:64], threads=2)``
    """
    if not isinstance(int8_models, Mapping) or not int8_models:
        raise ValueError(
            "int8_models must be a non-empty dict {name: model}; got " + repr(int8_models)
        )
    if any(name.startswith("fp32") for name in int8_models):
        raise ValueError(f"int8_models names must not start with 'fp32'; got {list(int8_models)}")
    layouts = ["nchw"]
    if inputs.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        layouts.append("channels_last")
    fp32 = {"fp32": model}
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        fp32["fp32 BN folded"] = fold_bn(model.eval())
    variants: dict[str, nn.Module] = {}
    channels_last: dict[str, bool] = {}
    origin: dict[str, tuple[str, str]] = {}
    for name, m in {**fp32, **int8_models}.items():
        for layout in layouts:
            key = f"{name} [{layout}]"
            variants[key], channels_last[key], origin[key] = m, layout != "nchw", (name, layout)
    with quiet():
        timings = measure.compare_latency(
            variants,
            inputs,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            channels_last=channels_last,
        )
    best_fp32 = min(t["median_ms"] for k, t in timings.items() if origin[k][0] in fp32)
    rows = [
        {
            "name": origin[k][0],
            "layout": origin[k][1],
            "fp32": origin[k][0] in fp32,
            "median_ms": t["median_ms"],
            "p10_ms": t["p10_ms"],
            "p90_ms": t["p90_ms"],
            "speedup": best_fp32 / t["median_ms"],
            "threads": t["threads"],
            "batch_size": t["batch_size"],
        }
        for k, t in timings.items()
    ]
    return sorted(rows, key=lambda r: r["median_ms"])


def _inputs(data: Any) -> Tensor:
    if hasattr(data, "X_train"):
        return data.X_train
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return data[0]
    if isinstance(data, Tensor):
        return data
    raise ValueError(
        f"calib_data must be a tensor X, (X, y) or ArrayData; got {type(data).__name__}"
    )
