"""VLP training: the trainer, retrieval evaluation and the pretraining loop (docs/ALGORITHM.md §10; docs/ARCHITECTURE.md)."""

from falcon_rl.models.masking import MLMMasks
from falcon_rl.training.evaluation import HEADLINE, retrieval_metrics
from falcon_rl.training.trainer import StepOutput, Trainer

__all__ = ["HEADLINE", "MLMMasks", "StepOutput", "Trainer", "retrieval_metrics"]
