"""Dynamic networks: compute that follows the input, and one model with several operating points.

Three ideas, each with honest accounting (MACs counted for the path a sample actually takes,
latency measured at batch 1 against the full network in the same run):

* **Early exit** (BranchyNet): :class:`EarlyExitCNN1d` puts a classifier head after every block
  of a ``CNN1d``; :func:`fit_exits` trains all heads jointly with per-exit loss weights. At
  inference, :class:`EarlyExit` stops at the first head whose confidence (:func:`exit_confidence`:
  max-prob or 1 - normalised entropy) reaches a threshold. :func:`path_macs` counts what each
  exit costs (blocks *and* the heads tried on the way); :func:`exit_report` replays any threshold
  from cached per-head logits, so a slider over thresholds is instant; :func:`exit_latency` times
  the real thing with ``measure.compare_latency``.
* **Mixture of experts**: :class:`MoE` routes each token to its ``top_k`` of ``n_experts`` MLPs
  (:func:`top_k_gating`: top-1 gates are the router's softmax probability as in Switch
  Transformer, top-k gates the softmax renormalised over the chosen experts) with the
  Switch-Transformer :func:`load_balancing_loss`; :func:`moe_params` gives total vs active
  parameters per token.
* **Slimmable width**: :class:`SlimmableCNN1d` shares one set of weights across 25/50/75/100 %
  width (switchable BatchNorm per width); :meth:`SlimmableCNN1d.at_width` cuts out a real, smaller
  ``CNN1d`` so MACs and latency are those of a physically smaller network.

Trained models are cached on disk (``cache_dir("dynamic")``), keyed by everything that shapes them.

Files: ``exits`` (the early-exit model, exit rule, reports, threshold choice and training),
``latency`` (batch-1 timing of early exits), ``slimmable`` (width), ``moe`` (gating, experts,
load balancing) and ``zoo`` (the ``pretrained_*`` builders and their cache).

Example:
    >>> import torch
    >>> from labkit import dynamic
    >>> model = dynamic.EarlyExitCNN1d(dynamic.EXIT_CONFIG)
    >>> dynamic.path_macs(model, torch.zeros(1, 1, 40))
    [4800, 33600, 88000]
"""

from labkit.dynamic.exits import (
    CRITERIA,
    EXIT_CONFIG,
    WEIGHTS,
    EarlyExit,
    EarlyExitCNN1d,
    ExitPath,
    average_macs,
    choose_threshold,
    exit_confidence,
    exit_logits,
    exit_report,
    first_exit,
    fit_exits,
    operating_point,
    path_macs,
)
from labkit.dynamic.latency import exit_latency, per_sample_latency
from labkit.dynamic.moe import MoE, MoEHead, fit_moe, load_balancing_loss, moe_params, top_k_gating
from labkit.dynamic.slimmable import SlimmableCNN1d, fit_slimmable, width_channels
from labkit.dynamic.zoo import MOE_VERSION as MOE_VERSION  # the cache versions, outside __all__
from labkit.dynamic.zoo import VERSION as VERSION
from labkit.dynamic.zoo import (
    pretrained_exits,
    pretrained_moe,
    pretrained_slimmable,
    pretrained_static,
)

__all__ = [
    "CRITERIA",
    "EXIT_CONFIG",
    "WEIGHTS",
    "EarlyExitCNN1d",
    "ExitPath",
    "EarlyExit",
    "exit_confidence",
    "first_exit",
    "path_macs",
    "average_macs",
    "exit_logits",
    "exit_report",
    "choose_threshold",
    "operating_point",
    "exit_latency",
    "per_sample_latency",
    "fit_exits",
    "pretrained_exits",
    "pretrained_static",
    "SlimmableCNN1d",
    "fit_slimmable",
    "pretrained_slimmable",
    "top_k_gating",
    "load_balancing_loss",
    "MoE",
    "MoEHead",
    "moe_params",
    "fit_moe",
    "pretrained_moe",
    "width_channels",
]
