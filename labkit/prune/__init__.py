"""Pruning: remove weights, channels, heads or layers, and store or run what is left.

One file per idea:

- ``unstructured``: magnitude masks as ``torch.nn.utils.prune`` reparametrizations, sensitivity
  scans, iterative pruning with fine-tuning, lottery tickets, cubic schedules.
- ``structured``: whole channels of convolutions and linear layers, removed for real (a smaller
  dense model) or masked.
- ``transformer``: attention heads and whole blocks of the zoo's Transformers.
- ``sparse``: the bytes of what is left (COO/CSR/bitmap storage, break-even density) and a
  sparse linear layer.

Every public name is here (``prune.magnitude``, ``prune.prune_channels``, ``prune.prune_heads``,
``prune.to_sparse_bytes``); the files are also importable on their own
(``from labkit.prune import structured as ps``).

Example:
    >>> from torch import nn
    >>> from labkit import prune
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> pruned = prune.magnitude(model, amount=0.5)
    >>> round(prune.sparsity(pruned)["global"], 2)
    0.5
"""

from labkit.prune import sparse, structured, transformer, unstructured
from labkit.prune.sparse import (
    FORMATS,
    SparseLinear,
    break_even_density,
    effective_state_dict,
    from_sparse_bytes,
    pack_state_dict,
    sparse_model_bytes,
    sparse_nbytes,
    to_sparse_bytes,
    to_sparse_linear,
    unpack_state_dict,
)
from labkit.prune.structured import (
    ChannelGroup,
    channel_groups,
    channel_importance,
    mask_channels,
    prune_channels,
    select_channels,
    shrink_,
)
from labkit.prune.transformer import (
    PrunedSelfAttention,
    attention_modules,
    drop_layers,
    head_importance,
    mask_heads,
    prune_heads,
    select_heads,
)
from labkit.prune.unstructured import (
    PRUNABLE,
    amount_to_count,
    amounts_for_drop,
    apply_masks_,
    copy_model,
    cubic_schedule,
    global_masks,
    lottery_ticket,
    magnitude,
    magnitude_,
    magnitude_mask,
    masks,
    prunable,
    prune_finetune,
    remove,
    remove_,
    sensitivity_scan,
    sparsity,
)

__all__ = [
    "PRUNABLE",
    "amount_to_count",
    "prunable",
    "magnitude",
    "magnitude_",
    "remove",
    "remove_",
    "copy_model",
    "masks",
    "apply_masks_",
    "sparsity",
    "sensitivity_scan",
    "amounts_for_drop",
    "prune_finetune",
    "lottery_ticket",
    "magnitude_mask",
    "global_masks",
    "cubic_schedule",
    "ChannelGroup",
    "channel_groups",
    "select_channels",
    "prune_channels",
    "mask_channels",
    "shrink_",
    "channel_importance",
    "PrunedSelfAttention",
    "attention_modules",
    "head_importance",
    "select_heads",
    "prune_heads",
    "mask_heads",
    "drop_layers",
    "FORMATS",
    "to_sparse_bytes",
    "from_sparse_bytes",
    "sparse_nbytes",
    "break_even_density",
    "effective_state_dict",
    "pack_state_dict",
    "unpack_state_dict",
    "sparse_model_bytes",
    "SparseLinear",
    "to_sparse_linear",
    "unstructured",
    "structured",
    "transformer",
    "sparse",
]
