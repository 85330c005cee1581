"""Tasks: one LightningModule per task (loss, optimizer, schedule, torchmetrics), built by the
runner from the ``task`` config group (``module._target_``) with the ``model`` argument assembled
from the model and operator groups and the data's shape.

- :class:`ImageClassifier` (``task=classification``): the paper's ImageNet recipe, top-1/5.
- :class:`Diverged`: what a task raises when its loss stops being finite.
"""

from involution.tasks.base import Diverged, stop_if_diverged
from involution.tasks.classification import ImageClassifier

__all__ = ["Diverged", "ImageClassifier", "stop_if_diverged"]
