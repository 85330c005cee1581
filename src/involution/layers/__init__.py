"""Spatial operators for the bottleneck: involution, convolution and local self-attention.

``make_spatial_op`` turns an operator description (the Hydra ``operator`` group, as a plain dict)
into the module that sits in the middle of a bottleneck block. One module per job:

- ``checks``: the operator hyperparameters' rules (one table) and the checks against channels;
- ``involution``: ``Involution2d`` (kernel generation fused with the aggregation);
- ``attention``: ``LocalSelfAttention2d``;
- ``factory``: ``make_spatial_op`` and the keys each operator takes;
- ``pool``: ``CeilAvgPool2d``; ``folding``: batch norm folded into convolutions in eval mode;
- ``recompute``: ``recomputed``, a module region recomputed in backward (the RedNet stem's), and
  ``RebuiltMaps``, single maps rebuilt in backward (the bottleneck's BN -> ReLU maps).
"""

from __future__ import annotations

from involution.layers.attention import LocalSelfAttention2d
from involution.layers.checks import (
    OPERATOR_RULES,
    check_operator_fit,
    check_operator_spec,
)
from involution.layers.factory import OPERATOR_KEYS, make_spatial_op
from involution.layers.folding import ConvBNReLU, conv_bn, fold_batch_norm, uses_running_stats
from involution.layers.involution import Involution2d
from involution.layers.pool import CeilAvgPool2d
from involution.layers.recompute import (
    RebuiltMaps,
    batch_norm_relu_again,
    recomputed,
    saving_is_hooked,
)

__all__ = [
    "OPERATOR_KEYS",
    "OPERATOR_RULES",
    "RebuiltMaps",
    "CeilAvgPool2d",
    "ConvBNReLU",
    "Involution2d",
    "LocalSelfAttention2d",
    "batch_norm_relu_again",
    "check_operator_fit",
    "check_operator_spec",
    "conv_bn",
    "fold_batch_norm",
    "make_spatial_op",
    "recomputed",
    "saving_is_hooked",
    "uses_running_stats",
]
