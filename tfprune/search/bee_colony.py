"""abc(): ABCPruner (Lin et al., IJCAI 2020), an artificial bee colony searching the width of every layer."""

import numpy as np

from tfprune.pruning.planning import check_positive_int
from tfprune.search.fitness import Evaluations, plan_fitness
from tfprune.search.width_space import DEFAULT_GRID, WidthSpace


def abc(model, train_data=None, val_data=None, target_macs=0.5, *, fitness=None, food_sources=10, limit=5,
        cycles=10, grid=DEFAULT_GRID, fine_tune_steps=50, batch_size=64, criterion="l1", criterion_data=None,
        groups=None, round_to=1, seed=None, verbose=1):
    """Search per-group keep ratios under a MACs budget with an artificial bee colony (ABCPruner).

    Each food source is one keep ratio per channel group (from `grid`); its fitness is how well the slim model
    does. Every cycle, an *employed* bee per source moves 2 of its ratios towards or away from those of another
    random source (x + U(-1, 1)·(x − x_k), snapped to the grid) and the source keeps the move if it is fitter;
    *onlookers* do the same from sources picked in proportion to their fitness; a source not improved `limit`
    times is abandoned for a random one (*scout*). The fittest widths found are returned.

    Changes from the reference code (lmbxmu/ABCPruner, `bee_cifar.py`), each fixing a fault of it:

    * A hard MACs budget: every candidate is repaired onto `target_macs` (grid steps down while over it, or up
      while a step still fits, then single channels — the finest step `round_to` allows — added to random groups
      while they fit), so all evaluated candidates have a MACs ratio ≤ the target and under it by less than one
      channel's MACs. The reference has no budget; its compression comes only from the grid's ceiling.
    * Fitness on `val_data`, a validation split, never the test set (the reference scores on the test set).
    * The slim model inherits BatchNormalization statistics with the kept channels' weights (the reference
      drops them), and every prunable group is searched, residual streams included (the reference keeps them).
    * A cache keyed by the widths: a candidate seen before is not re-trained (the reference re-evaluates repeats
      with fresh noise), and a seeded search is reproducible.
    * The uniform candidate (one common keep ratio at the budget) is in the first population, so the result is
      never worse than uniform widths on the search's own fitness.
    * The grid may end at 1.0 (a group stays whole; the reference's stops at 0.9), and the dimensions a move
      changes are drawn from all groups (the reference never changes the last one).

    Args:
        model: a Functional or Sequential model, compiled for the default fitness; never modified.
        train_data: `(x, y)` or a dataset of batches, for the default fitness's fine-tuning.
        val_data: `(x, y)` or a dataset, on which the default fitness scores each candidate.
        target_macs: the budget, slim over original, in (0, 1]: a MACs ratio, or a dict naming the cost,
            `{"params": 0.5}` or `{"latency": 0.5, "runtime": "litert", "threads": 1}` (priced by
            `tfprune.measurement.latency_tables.LatencyModel`); every candidate meets it.
        fitness: a callable `(slim_model) -> float`, higher is better, replacing the default; then no data.
        food_sources: the number of food sources (candidates kept at once).
        limit: unimproved trials after which a source is abandoned.
        cycles: search cycles (each: one employed and one onlooker move per source, then at most one scout).
        grid: the keep ratios a group may take, increasing, in (0, 1].
        fine_tune_steps: fine-tuning steps of the default fitness (0: score the inherited weights as they are).
        batch_size: batch size of the default fitness for array data.
        criterion: which channels a group keeps for a given width ("l1", "l2", "random", a data-driven name with
            `criterion_data`, or a callable; see `tfprune.plan`).
        criterion_data: data for a data-driven criterion.
        groups: names of the groups to search (default every prunable group); the others stay whole.
        round_to: kept counts are rounded up to a multiple of this.
        seed: seeds the search (and the default fitness's fine-tuning): same seed, same result.
        verbose: 0 silent, 1 a progress bar (one step per candidate scored) with the best fitness so far.

    Cost: about `food_sources · (1 + 2 · cycles)` fitness evaluations (fewer with cache hits, one more per scout),
    each a rebuild plus `fine_tune_steps` training steps and one pass over `val_data`.

    Returns:
        A `tfprune.search.SearchResult`.

    Example:

    >>> import numpy as np, tfprune
    >>> model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    >>> weight = {"stage1_1_conv": 1.0, "stage2_1_conv": 3.0, "fc": 0.1}
    >>> def fitness(slim):  # a made-up fitness: widths of some groups matter more
    ...     return sum(w * slim.get_layer(name).get_weights()[0].shape[-1] for name, w in weight.items())
    >>> result = tfprune.search.abc(model, target_macs=0.5, fitness=fitness, food_sources=4, cycles=3,
    ...                             seed=0, verbose=0)
    >>> result.macs_ratio <= 0.5
    True
    """
    food_sources = check_positive_int(food_sources, "food_sources")
    if food_sources < 2:
        raise ValueError(f"food_sources must be at least 2 (a move needs another source); got {food_sources}.")
    limit, cycles = check_positive_int(limit, "limit"), check_positive_int(cycles, "cycles")
    space = WidthSpace(model, target_macs, grid, groups, criterion, criterion_data, round_to, seed)
    score = plan_fitness(model, fitness, train_data, val_data, fine_tune_steps, batch_size, seed, space.graph)
    rng = np.random.default_rng(seed)
    evaluate = Evaluations(model, space, score, total=food_sources * (1 + 2 * cycles) + cycles, verbose=verbose)
    n = len(space.groups)

    sources, values = [], []
    for i in range(food_sources):
        x, plan = space.uniform_candidate() if i == 0 else space.settle(rng.choice(space.grid, size=n), rng)
        sources.append(x)
        values.append(evaluate(x, plan, 0, "initial"))
    trials = np.zeros(food_sources, np.int64)
    curve = [{"step": 0, "best": evaluate.best[0], "mean": float(np.mean(values))}]

    def move(i, step, phase):
        for _ in range(10):  # a move that changes nothing would only cost a trial: draw it again
            k = rng.choice([j for j in range(food_sources) if j != i])
            dims = rng.choice(n, size=min(2, n), replace=False)
            x = sources[i].copy()
            for d in dims:
                x[d] = space.snap(np.clip(x[d] + rng.uniform(-1, 1) * (x[d] - sources[k][d]), space.grid[0],
                                          space.grid[-1]))
            if not np.array_equal(x, sources[i]):
                break
        x, plan = space.settle(x, rng, moved=dims)
        value = evaluate(x, plan, step, phase)
        if value > values[i]:
            sources[i], values[i], trials[i] = x, value, 0
        else:
            trials[i] += 1

    for cycle in range(1, cycles + 1):
        for i in range(food_sources):
            move(i, cycle, "employed")
        low, high = min(values), max(values)
        chance = 0.9 * (np.asarray(values) - low) / (high - low) + 0.1 if high > low else np.ones(food_sources)
        i = sent = 0
        while sent < food_sources:  # onlookers visit sources in turn, each accepted with its chance
            if rng.random() < chance[i]:
                move(i, cycle, "onlooker")
                sent += 1
            i = (i + 1) % food_sources
        worst = int(np.argmax(trials))
        if trials[worst] >= limit:
            x, plan = space.settle(rng.choice(space.grid, size=n), rng)
            sources[worst], values[worst], trials[worst] = x, evaluate(x, plan, cycle, "scout"), 0
        curve.append({"step": cycle, "best": evaluate.best[0], "mean": float(np.mean(values))})
    return evaluate.result("abc", curve)
