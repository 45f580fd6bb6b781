"""Linear probe: logistic regression on frozen image features, with the L2 regularisation
strength chosen on a validation split (CLIP paper, appendix A.3: a parametric binary search
over C in [1e-6, 1e6]; here a coarse log grid, then a finer one around the best)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["linear_probe"]


def _fit_score(xtr, ytr, xva, yva, c: float, max_iter: int) -> tuple[float, object]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter)
    clf.fit(xtr, ytr)
    return float((clf.predict(xva) == yva).mean()), clf


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, val_fraction: float = 0.2, seed: int = 0,
                 max_iter: int = 1000) -> dict[str, float]:  # fmt: skip
    """Top-1 on the test set, and the chosen C."""
    x, y = train_features.float().numpy(), train_labels.numpy()
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(len(x) * val_fraction))
    val, tr = order[:n_val], order[n_val:]
    best_c, best = 1.0, -1.0
    for grid in (np.logspace(-6, 6, 7), None):
        if grid is None:  # refine: a decade either side of the coarse optimum
            grid = best_c * np.logspace(-1, 1, 5)
        for c in grid:
            score, _ = _fit_score(x[tr], y[tr], x[val], y[val], float(c), max_iter)
            if score > best:
                best, best_c = score, float(c)
    _, clf = _fit_score(x, y, test_features.float().numpy(), test_labels.numpy(), best_c, max_iter)
    accuracy = float((clf.predict(test_features.float().numpy()) == test_labels.numpy()).mean())
    return {"acc1": accuracy, "C": best_c, "val_acc1": best}
