"""Models: one bottleneck skeleton -> RedNet, ResNet and local self-attention (SASA) families."""

from involution.models.checkpoint import CheckpointMismatchError, load_checkpoint
from involution.models.counting import count_macs, count_params, mac_breakdown
from involution.models.features import BottleneckFeatures, FeatureInfo
from involution.models.network import STAGE_DEPTHS, BottleneckNet
from involution.models.registry import FAMILIES, create_model, list_models, register_model

__all__ = [
    "FAMILIES",
    "STAGE_DEPTHS",
    "BottleneckFeatures",
    "BottleneckNet",
    "CheckpointMismatchError",
    "FeatureInfo",
    "count_macs",
    "count_params",
    "create_model",
    "list_models",
    "load_checkpoint",
    "mac_breakdown",
    "register_model",
]
