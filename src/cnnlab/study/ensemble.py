"""Ensembles from saved predictions: mean probability or majority vote over member runs, no model rebuilt.

Each member's `predictions/{val,test}.npz` holds probs (N, K), labels (N,) and indices (N,) into its source
split; members are aligned by index. A split is combined only when every member predicted the same images
(under k-fold the validation folds differ, so such an ensemble reports test accuracy only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import runfolder
from cnnlab.errors import CnnlabError

ENSEMBLES_DIR = "ensembles"


def combine(probs: Sequence[np.ndarray], method: str) -> tuple[np.ndarray, np.ndarray]:
    """(ensemble probabilities, predicted classes) from member probabilities (each (N, K)).

    `mean` averages probabilities; `vote` counts each member's arg-max (probabilities are vote shares) and
    breaks a tied vote by the higher mean probability.
    """
    stacked = np.stack(probs)
    mean = stacked.mean(axis=0)
    if method == "mean":
        return mean, mean.argmax(axis=1)
    if method != "vote":
        raise CnnlabError(f"ensemble method {method!r} is not allowed; allowed: mean, vote")
    classes = stacked.shape[2]
    votes = np.eye(classes)[stacked.argmax(axis=2)].sum(axis=0)
    predicted = (votes + 0.5 * mean).argmax(axis=1)  # counts differ by ≥ 1, so 0.5·mean only breaks ties
    return votes / len(probs), predicted


def build_ensemble(name: str, method: str, member_dirs: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    """Combine the members' saved predictions and write `out_dir/result.json` and `predictions/*.npz`."""
    results = [runfolder.read_result(d) or {} for d in member_dirs]
    class_names = list(results[0].get("class_names") or [])
    summary: dict[str, Any] = {
        "kind": "ensemble",
        "name": name,
        "method": method,
        "members": [str(r.get("run_id") or d.name) for r, d in zip(results, member_dirs)],
        "val": None,
        "test": None,
        "per_class_accuracy": None,
        "class_names": class_names,
        "member_accuracy": {
            str(r.get("run_id") or d.name): {
                "val": (r.get("best") or {}).get("val_acc"),
                "test": (r.get("test") or {}).get("acc"),
            }
            for r, d in zip(results, member_dirs)
        },
    }
    for split in runfolder.PREDICTION_SPLITS:
        members = [runfolder.read_predictions(d, split) for d in member_dirs]
        if any(m is None for m in members) or not _aligned(members):
            continue
        probs, predicted = combine([m.probs for m in members], method)
        labels, indices = members[0].labels, members[0].indices
        summary[split] = {"acc": float(np.mean(predicted == labels)), "n": int(len(labels))}
        summary["per_class_accuracy"] = _per_class(predicted, labels, class_names)
        runfolder.write_predictions(out_dir, split, probs, labels, indices)
    runfolder.write_result(out_dir, summary)
    return summary


def _aligned(members: Sequence[runfolder.Predictions | None]) -> bool:
    first = members[0]
    assert first is not None
    return all(
        m is not None and np.array_equal(m.indices, first.indices) and np.array_equal(m.labels, first.labels)
        for m in members
    )


def _per_class(predicted: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Accuracy per true class, keyed by class name (the last split combined: test when present)."""
    names = list(class_names) or [str(k) for k in range(int(labels.max()) + 1)]
    return {
        names[k]: float(np.mean(predicted[labels == k] == k))
        for k in range(len(names))
        if np.any(labels == k)
    }
