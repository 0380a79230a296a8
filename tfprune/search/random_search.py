"""random_search(): per-group keep ratios drawn at random under a MACs budget, the equal-budget baseline of a
structure search (as EagleEye, Li et al., ECCV 2020, samples layer-wise pruning ratios)."""

import numpy as np

from tfprune.pruning.planning import check_positive_int
from tfprune.search.fitness import Evaluations, plan_fitness
from tfprune.search.width_space import DEFAULT_GRID, WidthSpace


def random_search(model, train_data=None, val_data=None, target_macs=0.5, *, fitness=None, evaluations=20,
                  grid=DEFAULT_GRID, fine_tune_steps=50, batch_size=64, criterion="l1", criterion_data=None,
                  groups=None, round_to=1, seed=None, verbose=1):
    """Score `evaluations` random width configurations under the budget and keep the fittest.

    Candidates are the uniform one (one common keep ratio at the budget) first, then keep ratios drawn
    uniformly from `grid` for every group and repaired onto the budget exactly as `tfprune.search.abc` repairs
    its candidates; repeats are drawn again (up to 20 times the budget of draws). Give it the `evaluations` an
    ABC search used to compare the two at equal cost. Every argument but `evaluations` is as in
    `tfprune.search.abc`.

    Args:
        evaluations: how many distinct candidates to score.

    Returns:
        A `tfprune.search.SearchResult`; its curve has the best and mean fitness after each evaluation.

    Example:

    >>> import tfprune
    >>> model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    >>> result = tfprune.search.random_search(model, target_macs=0.4, evaluations=5, seed=0, verbose=0,
    ...                                       fitness=lambda slim: -slim.count_params())
    >>> result.evaluations, result.macs_ratio <= 0.4
    (5, True)
    """
    evaluations = check_positive_int(evaluations, "evaluations")
    space = WidthSpace(model, target_macs, grid, groups, criterion, criterion_data, round_to, seed)
    score = plan_fitness(model, fitness, train_data, val_data, fine_tune_steps, batch_size, seed, space.graph)
    rng = np.random.default_rng(seed)
    evaluate = Evaluations(model, space, score, total=evaluations, verbose=verbose, count_hits=False)
    curve, draws = [], 0
    while len(evaluate.history) < evaluations and draws < 20 * evaluations:
        if draws == 0:
            x, plan = space.uniform_candidate()
        else:
            x, plan = space.settle(rng.choice(space.grid, size=len(space.groups)), rng)
        draws += 1
        seen = len(evaluate.history)
        evaluate(x, plan, seen + 1, "random")
        if len(evaluate.history) > seen:
            values = [h["fitness"] for h in evaluate.history]
            curve.append({"step": len(values), "best": max(values), "mean": float(np.mean(values))})
    return evaluate.result("random", curve)
