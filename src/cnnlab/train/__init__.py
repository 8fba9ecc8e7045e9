"""One run: the Lightning system, fine-tune callbacks, `fit`, and evaluate/predict/export."""

from cnnlab.train.callbacks import RunAbandoned
from cnnlab.train.inference import evaluate_checkpoint, export_checkpoint, load_model, predict_images
from cnnlab.train.run import RunResult, completed_result, fit

__all__ = [
    "RunAbandoned",
    "RunResult",
    "completed_result",
    "evaluate_checkpoint",
    "export_checkpoint",
    "fit",
    "load_model",
    "predict_images",
]
