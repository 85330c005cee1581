"""Involution (Li et al., CVPR 2021): operator, layers, models and training workspace.

Kept import-light on purpose: ``involution.kernels`` must stay importable without torch.
"""

__version__ = "0.1.0"
