"""Temperature scaling (Guo et al. 2017): one scalar fitted on validation data.

Dividing the logits by ``T`` keeps every ranking (AUC, the arg-max) and only sharpens or
softens the probabilities, so it can be fitted after training and baked into the graph.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from medops.errors import InvalidInputError

_EPS = 1e-7


def _log_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InvalidInputError(f"probs: expected (N, K) probabilities, got shape {p.shape}")
    # log-probabilities are logits up to a per-row constant, which softmax ignores
    return np.log(np.clip(p, _EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax(log(probs) / T): the probabilities of the logits divided by ``temperature``."""
    z = _log_probs(probs) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of ``labels``."""
    z = _log_probs(probs)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(z) or len(y) == 0:
        raise InvalidInputError(f"labels: {len(y)} labels for {len(z)} probability rows")

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(np.mean(log_norm - scaled[np.arange(len(y)), y]))

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))
