"""A discriminant projection head for a trained encoder, fitted on the public training split.

The privacy mechanism clips every feature to unit norm and adds noise of a fixed σ to each
coordinate, so what a released record keeps is the part of its unit norm that lies in the
directions a query compares along. A 512-d Re-ID feature spends part of that norm on
within-identity variation (pose, camera, background). Linear discriminant analysis on the
training identities' (normalised) features finds the few directions with the most
between-identity variance per unit of within-identity variance; projecting onto them and
normalising again gives the mechanism a feature whose norm is spent on identity.

The head is fixed after fitting (no gradient step), fitted only on the public training split
(never on enrolled data), and is part of the encoder checkpoint, so every serving backend and
the privacy calibration see it.
"""

from __future__ import annotations

import numpy as np


def fit_lda(features: np.ndarray, labels: np.ndarray, dim: int, regularisation: float = 0.01) -> np.ndarray:
    """``[D, dim]`` projection: the top generalised eigenvectors of (between, within + reg·I) scatter."""
    import scipy.linalg

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    classes, index = np.unique(labels, return_inverse=True)
    if not 0 < dim < features.shape[1]:
        raise ValueError(f"dim must be in 1..{features.shape[1] - 1}")
    if len(classes) <= dim:
        raise ValueError(f"{len(classes)} identities cannot span {dim} discriminant directions")
    counts = np.bincount(index).astype(np.float64)
    means = np.zeros((len(classes), features.shape[1]))
    np.add.at(means, index, features)
    means /= counts[:, None]
    within = features - means[index]
    scatter_within = within.T @ within / len(features) + regularisation * np.eye(features.shape[1])
    centred = means - features.mean(axis=0)
    scatter_between = centred.T @ centred / len(classes)
    _, vectors = scipy.linalg.eigh(scatter_between, scatter_within)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dim])
