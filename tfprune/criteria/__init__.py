"""Channel importance criteria: `criterion(graph, group, model, data) -> one score per channel` (higher = keep)."""

import numpy as np

from tfprune.criteria.activations import ActivationTaps, channel_statistics
from tfprune.criteria.channel_pruning.lasso import LassoSelection
from tfprune.criteria.feature_maps import APoZ, FeatureMapCriterion, HRank, MeanActivation, Taylor
from tfprune.criteria.magnitude import FilterNorm, l1, l2


class RandomScores:
    """Uniform random scores: the floor any real criterion must beat. Seeded for reproducibility."""

    def __init__(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def __call__(self, graph, group, model=None, data=None):
        return self.rng.random(group.width)


def get(criterion, seed=None):
    """A criterion callable from a name or the callable itself.

    Names: "l1", "l2" (filter norms), "random" (seeded by `seed`), "lasso" (He et al.), and the data-driven
    "mean_activation", "apoz", "hrank", "taylor". A name gives a fresh object with default settings on every call;
    build the object yourself to choose its settings or to reuse one measurement across plans.
    """
    if callable(criterion):
        return criterion
    named = {"l1": lambda: l1, "l2": lambda: l2, "random": lambda: RandomScores(seed),
             "lasso": lambda: LassoSelection(seed=seed),
             "mean_activation": MeanActivation, "apoz": APoZ, "hrank": HRank, "taylor": Taylor}
    if criterion not in named:
        raise ValueError(f"Unknown criterion {criterion!r}; use one of {sorted(named)} or a callable "
                         "(graph, group, model, data) -> scores.")
    return named[criterion]()


__all__ = ["APoZ", "ActivationTaps", "FeatureMapCriterion", "FilterNorm", "HRank", "LassoSelection",
           "MeanActivation", "RandomScores", "Taylor", "channel_statistics", "get", "l1", "l2"]
