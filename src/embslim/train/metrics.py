"""Evaluation metrics per task, named in lower case as results.json reports them."""
from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score

PRIMARY = {"ctr": ("auc", "max"), "rating": ("rmse", "min"), "topk": ("ndcg@10", "max")}


def ctr_metrics(label: np.ndarray, logit: np.ndarray) -> dict[str, float]:
    prob = expit(logit.astype(np.float64))  # no overflow warning for a diverging model's huge logits
    prob = np.clip(prob, 1e-7, 1 - 1e-7)
    auc = float(roc_auc_score(label, prob)) if 0 < label.sum() < len(label) else float("nan")
    return {"auc": auc, "logloss": float(log_loss(label, prob, labels=[0, 1]))}


def rating_metrics(label: np.ndarray, pred: np.ndarray, low: float, high: float) -> dict[str, float]:
    """RMSE and MAE of predictions clipped to the training rating range."""
    err = np.clip(pred, low, high) - label
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def is_better(task: str, value: float, best: float | None) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(value)
    return value > best if PRIMARY[task][1] == "max" else value < best


def headline_metrics(metrics: dict[str, float]) -> str:
    """The metrics a one-line summary shows: all but the top-k cut-offs beyond 10 (and Recall@10, which equals HR@10)."""
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "@" not in k or (k.endswith("@10") and "recall" not in k))
