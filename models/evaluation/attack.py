"""The paper's privacy metric: ID accuracy of attackers that learn identity from features.

An attacker is trained on gallery features with their identity labels and scored on the
query features of the same identities (lower accuracy = less identity information).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _attacker(kind: str, dim: int, num_classes: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    raise ValueError(f"unknown attacker kind {kind!r}; use 'linear' or 'mlp'")


def id_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    kind: str = "linear",
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    hidden: int = 512,
    seed: int = 0,
) -> float:
    """Train an attacker (full-batch Adam, fixed seed) and return its test accuracy.

    Features are standardised with the training set's mean and std first, so the score
    does not depend on the feature scale. Test items whose identity never appears in the
    training labels count as errors.
    """
    generator = torch.Generator().manual_seed(seed)
    classes, y_train = np.unique(train_labels, return_inverse=True)
    class_index = {int(c): i for i, c in enumerate(classes)}
    y_test = np.array([class_index.get(int(c), -1) for c in test_labels])
    x_train = torch.as_tensor(train_features, dtype=torch.float32)
    x_test = torch.as_tensor(test_features, dtype=torch.float32)
    mean, std = x_train.mean(0, keepdim=True), x_train.std(0, keepdim=True).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        model = _attacker(kind, x_train.shape[1], len(classes), hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    targets = torch.as_tensor(y_train, dtype=torch.long)
    for _ in range(epochs):
        optimiser.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x_train), targets)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        predicted = model(x_test).argmax(1).numpy()
    return float(np.mean(predicted == y_test))
