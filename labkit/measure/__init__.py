"""Honest measurements: parameters, real bytes, MACs/FLOPs, latency against the best fp32 baseline.

Three rules the course keeps:

* **Size means real bytes.** :func:`model_bytes` is the length of ``torch.save(state_dict)``,
  not ``4 × params``. "Would be" sizes (fp16, int8) are labelled ``estimated_*`` in
  :func:`bytes_report`.
* **Work means counted MACs.** :func:`flops` asks PyTorch's ``FlopCounterMode``;
  :func:`macs_by_hand` re-derives the Linear/Conv part from closed-form formulas, so the two
  check each other.
* **Speed means latency measured in the same run against the best fp32 baseline.**
  :func:`compare_latency` interleaves variants so machine drift hits all of them equally, and
  :func:`best_fp32_baseline` picks NCHW or channels_last, whichever is faster here, for conv nets.
  :class:`ScriptedWorkload` is a stand-in model with a known, scripted latency to test a timer on.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from labkit import measure
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> measure.count_params(model), measure.macs(model, torch.randn(1, 1, 8, 8))
    (650, 640)
"""

from labkit.measure.compute import (
    conv1d_macs,
    conv2d_macs,
    conv_output_size,
    flops,
    flops_by_module,
    linear_macs,
    macs,
    macs_by_hand,
)
from labkit.measure.energy import (
    ENERGY_ASSUMPTIONS,
    energy_estimate_j,
    footprint,
    inference_footprint,
)
from labkit.measure.report import summary
from labkit.measure.size import (
    bytes_report,
    count_nonzero,
    count_params,
    file_bytes,
    model_bytes,
    payload_bytes,
)
from labkit.measure.timing import (
    ScriptedWorkload,
    best_fp32_baseline,
    compare_latency,
    latency,
)

__all__ = [
    "count_params",
    "count_nonzero",
    "model_bytes",
    "payload_bytes",
    "file_bytes",
    "bytes_report",
    "flops",
    "macs",
    "flops_by_module",
    "linear_macs",
    "conv1d_macs",
    "conv2d_macs",
    "conv_output_size",
    "macs_by_hand",
    "latency",
    "compare_latency",
    "best_fp32_baseline",
    "ScriptedWorkload",
    "summary",
    "energy_estimate_j",
    "ENERGY_ASSUMPTIONS",
    "footprint",
    "inference_footprint",
]
