"""One run: the Lightning system, fine-tune callbacks, `fit`, and evaluate/predict/export."""

from cnnlab.train.inference import evaluate_checkpoint, export_checkpoint, load_model, predict_images
from cnnlab.train.run import RunResult, completed_result, fit

__all__ = [
    "RunResult",
    "completed_result",
    "evaluate_checkpoint",
    "export_checkpoint",
    "fit",
    "load_model",
    "predict_images",
]
