"""Did a run learn? A finished run whose validation accuracy (training accuracy when it has no validation
split) is not clearly above always answering the majority class, or whose loss spiked by orders of
magnitude, is flagged, so no comparison is read off a broken run unawares. The flags go into result.json
(`flags`), the run's closing line and the report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CLEAR_MARGIN = 0.05  # "clearly above": at least 5 percentage points over the majority-class share
SPIKE_FACTOR = 100.0  # a loss over 100 x ln(classes) (chance level) is a blow-up, not training


def learning_flags(
    rows: Sequence[Mapping[str, float]], best_val_acc: float | None, class_counts: Sequence[int]
) -> list[str]:
    """Sentences naming what is wrong with a finished run's learning; [] when it learned."""
    flags = []
    total = sum(class_counts)
    majority = max(class_counts) / total if total else 0.0
    best, split = _best_accuracy(rows, best_val_acc)
    if best is not None and best < majority + CLEAR_MARGIN:
        flags.append(
            f"did not learn: best {split} accuracy {best:.3f} is not clearly above always "
            f"predicting the majority class ({majority:.3f})"
        )
    spike = _loss_spike(rows, len(class_counts))
    if spike:
        flags.append(spike)
    return flags


def _best_accuracy(
    rows: Sequence[Mapping[str, float]], best_val_acc: float | None
) -> tuple[float | None, str]:
    """The best validation accuracy; a run without a validation split is judged on its training accuracy."""
    if best_val_acc is not None:
        return best_val_acc, "validation"
    scores = [row["train_acc"] for row in rows if math.isfinite(row.get("train_acc", math.nan))]
    return (max(scores), "training") if scores else (None, "training")


def _loss_spike(rows: Sequence[Mapping[str, float]], classes: int) -> str | None:
    limit = SPIKE_FACTOR * math.log(max(classes, 2))
    for row in rows:
        for key in ("train_loss", "val_loss"):
            value = row.get(key)
            if isinstance(value, float) and math.isfinite(value) and value > limit:
                return (
                    f"loss spiked: {key} {value:,.4g} at epoch {int(row['epoch'])} (chance level is "
                    f"{math.log(max(classes, 2)):.2f}); lower optim.lr or add warmup"
                )
    return None


def flags_note(summary: Mapping[str, Any]) -> str:
    """' — did not learn: ...' for a closing line, '' for a run that learned."""
    flags = summary.get("flags") or []
    return f" — {'; '.join(flags)}" if flags else ""
