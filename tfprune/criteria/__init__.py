"""Channel importance criteria: `criterion(graph, group, model, data) -> one score per channel` (higher = keep)."""

import numpy as np

from tfprune.criteria.activations import ActivationTaps, channel_statistics
from tfprune.criteria.lasso import LassoSelection
from tfprune.criteria.magnitude import l1, l2


class RandomScores:
    """Uniform random scores: the floor any real criterion must beat. Seeded for reproducibility."""

    def __init__(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def __call__(self, graph, group, model=None, data=None):
        return self.rng.random(group.width)


def get(criterion, seed=None):
    """A criterion callable from a name ("l1", "l2", "random", "lasso") or the callable itself."""
    if callable(criterion):
        return criterion
    named = {"l1": l1, "l2": l2, "random": RandomScores(seed), "lasso": LassoSelection(seed=seed)}
    if criterion not in named:
        raise ValueError(f"Unknown criterion {criterion!r}; use one of {sorted(named)} or a callable "
                         "(graph, group, model, data) -> scores.")
    return named[criterion]


__all__ = ["ActivationTaps", "LassoSelection", "RandomScores", "channel_statistics", "get", "l1", "l2"]
