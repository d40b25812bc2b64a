"""Recognizer training on identity shards (accelerate: bf16, multi-GPU, exact resume).

``train(cfg, resume=None)`` is the library entry point; ``synthface recognition train``
and ``python -m synthface.recognition.training`` (for ``accelerate launch``) call it.
"""

from synthface.recognition.training.loop import (
    Run,
    TrainingDiverged,
    TrainModule,
    TrainResult,
    build_model,
    train,
)

__all__ = ["Run", "TrainModule", "TrainResult", "TrainingDiverged", "build_model", "train"]
