"""The fitness of a candidate width configuration, and the cached, recorded evaluation shared by the searches."""

import time

import keras
import numpy as np

from tfprune.callbacks.pruning_callback import ChainedConstraint
from tfprune.errors import PlanError
from tfprune.graph import ChannelGraph
from tfprune.pruning.masking import variable_masks
from tfprune.pruning.planning import check_positive_int
from tfprune.pruning.plans import Plan
from tfprune.pruning.rebuilding import rebuild


class FineTuneFitness:
    """The default fitness of a plan: fine-tune the slim network briefly, then score it on validation data.

    The slim network starts from the searched model's weights (BatchNormalization statistics included) and is
    trained for `steps` batches of `train_data` with the model's compiled loss, a fresh optimizer of the same
    settings and the same metrics (`model.get_compile_config()`), on the same batches for every candidate (for
    arrays, `steps` batches in the order of permutations drawn from `seed`, as many as needed; a dataset gives its
    own batches), with the Keras seed reset to `seed` first; the fitness is the first compiled
    metric on `val_data` (accuracy, typically), or minus the loss when there is none.

    Every candidate is trained as a *masked* copy of the model rather than a rebuilt one: the plan's removed
    weights are zero and held at zero by variable constraints inside the train step, which computes exactly what the
    rebuilt slim model computes (see `tfprune.mask`). So one traced train and test step serve all candidates, where
    a rebuilt model would be traced anew for each (about 2 s each on 2 cores, most of a short fine-tuning's cost).

    Args:
        model: the compiled model being searched (read only).
        train_data: `(x, y)` arrays, or a dataset of `(x, y)` batches; not needed with `steps=0`.
        val_data: `(x, y)` arrays or a dataset; never the test set.
        steps: fine-tuning steps per candidate (0 scores the inherited weights as they are).
        batch_size: for array data.
        seed: the Keras seed set before each fine-tuning.
        graph: the model's `ChannelGraph`, if already built.
    """

    def __init__(self, model, train_data, val_data, steps=50, batch_size=64, seed=0, graph=None):
        if not getattr(model, "compiled", False):
            raise ValueError(f"The default fitness fine-tunes and evaluates with the model's compiled loss and "
                             f"metrics, but model '{model.name}' is not compiled: compile it (e.g. loss=..., "
                             "optimizer=..., metrics=['accuracy']) or pass fitness=callable(slim_model) -> float.")
        if val_data is None:
            raise ValueError("The default fitness needs val_data, a validation split (x, y) carved from the "
                             "training data (never the test set), or pass fitness=callable(slim_model) -> float.")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"fine_tune_steps must be an integer >= 0; got {steps!r}.")
        if steps and train_data is None:
            raise ValueError(f"fine_tune_steps={steps} needs train_data to fine-tune on; pass train_data=(x, y) or "
                             "fine_tune_steps=0.")
        self.steps, self.seed = steps, seed
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.train, self.val = _split(train_data), _split(val_data)
        if steps and self.train[1] is not None:
            # the same batches for every candidate, drawn here: Keras's own shuffle of arrays draws from NumPy's
            # global state, which the first fit of a JAX model also consumes (its first candidate's batches differed)
            count = len(keras.tree.flatten(self.train[0])[0])
            rng = np.random.default_rng(seed)
            self.order = np.concatenate([rng.permutation(count) for _ in range(-(-steps * self.batch_size // count))])
        graph = graph or ChannelGraph(model)
        self.copy = rebuild(model, Plan(keep={}, widths={}), graph=graph)  # same layers and names, own variables
        self.graph = ChannelGraph(self.copy)
        self.weights = [v.numpy() for v in self.copy.weights]  # the model's weights, as the copy holds them
        self.masks = {}
        for group in self.graph.prunable_groups:
            for member in group.members:
                for variable in getattr(self.graph.layers.get(member.layer), "trainable_weights", ()):
                    if id(variable) not in self.masks:
                        mask = keras.Variable(np.ones(variable.shape), dtype=variable.dtype, trainable=False)
                        variable.constraint = ChainedConstraint(variable.constraint, [lambda value, m=mask: value * m])
                        self.masks[id(variable)] = mask
        self.copy.compile_from_config(model.get_compile_config())
        self.copy.optimizer.build(self.copy.trainable_variables)
        self.optimizer_state = [v.numpy() for v in self.copy.optimizer.variables]

    def __call__(self, plan):
        spanning = [name for name, kept in plan.keep.items() if len(kept) < self.graph[name].width
                    and self.graph[name].spanning]
        if spanning:
            raise PlanError(f"The default fitness fine-tunes a masked copy of the model in place, whose norms cannot "
                            f"leave removed channels out of their statistics, but the plan prunes the channel-spanning "
                            f"groups {spanning}: pass fitness=callable(slim_model) -> float, which gets the rebuilt "
                            "model, or search other groups.")
        keep = {id(variable): kept for variable, kept in variable_masks(self.copy, plan, self.graph)}
        for variable, value in zip(self.copy.weights, self.weights, strict=True):
            mask = keep.get(id(variable))
            variable.assign(value if mask is None else np.where(mask, value, 0))
            if id(variable) in self.masks:
                self.masks[id(variable)].assign(np.ones(variable.shape) if mask is None else mask)
        for variable, value in zip(self.copy.optimizer.variables, self.optimizer_state, strict=True):
            variable.assign(value)
        if keras.backend.backend() != "tensorflow":  # a compiled JAX step holds the masks as constants: retrace
            self.copy.train_function = None
        if self.steps:
            keras.utils.set_random_seed(self.seed)
            data = self.train[0] if self.train[1] is None else self._batches()
            self.copy.fit(data, epochs=1, steps_per_epoch=self.steps, shuffle=False, verbose=0)
        results = self.copy.evaluate(*self.val, batch_size=None if self.val[1] is None else self.batch_size,
                                     verbose=0, return_dict=True)
        metric = next((k for k in results if k != "loss"), None)
        return float(results[metric]) if metric else -float(results["loss"])

    def _batches(self):
        """The `steps` training batches of array data, indexed one at a time (no copy of the data)."""
        for step in range(self.steps):
            index = self.order[step * self.batch_size:(step + 1) * self.batch_size]
            yield keras.tree.map_structure(lambda a, i=index: np.asarray(a)[i], self.train)


def _split(data):
    if data is None:
        return None, None
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0], data[1]
    return data, None  # a dataset or generator of (x, y) batches


def plan_fitness(model, fitness, train_data, val_data, steps, batch_size, seed, graph):
    """`(plan) -> float`: the user's fitness of the rebuilt slim model (then no data may be given), or the default
    `FineTuneFitness`."""
    if fitness is None:
        return FineTuneFitness(model, train_data, val_data, steps, batch_size, 0 if seed is None else seed, graph)
    if not callable(fitness):
        raise TypeError(f"fitness must be a callable (slim_model) -> float, higher is better; got "
                        f"{type(fitness).__name__}.")
    if train_data is not None or val_data is not None:
        raise ValueError("Give either fitness= or train_data/val_data, not both: a custom fitness gets only the slim "
                         "model, so the data would be unused.")
    return lambda plan: fitness(rebuild(model, plan, graph=graph))


class Evaluations:
    """Scores candidates through a cache keyed by their widths, records each evaluation, and shows progress.

    Args:
        model: the searched model.
        space: the `WidthSpace`.
        fitness: `(plan) -> float` (`plan_fitness`).
        total: the expected number of progress steps, an upper bound (the bar is closed at the real count).
        verbose: 0 silent, 1 a Keras progress bar with the best fitness so far.
        count_hits: whether a cache hit is a progress step (a search that retries repeats counts only new ones).
    """

    def __init__(self, model, space, fitness, total, verbose=1, count_hits=True):
        self.model, self.space, self.fitness = model, space, fitness
        self.cache, self.history = {}, []
        self.hits = 0
        self.best = None  # (fitness, ratios, plan)
        self.start = time.perf_counter()
        self.progress = keras.utils.Progbar(total, stateful_metrics=["best", "evaluations"]) if verbose else None
        self._steps = 0
        self._count_hits = count_hits

    def __call__(self, ratios, plan, step, phase):
        """The fitness of a settled candidate (`WidthSpace.settle`), computed once per distinct widths."""
        widths = {name: len(kept) for name, kept in plan.keep.items()}
        key = tuple(widths.values())
        new = key not in self.cache
        if not new:
            self.hits += 1
            value = self.cache[key]
        else:
            value = float(self.fitness(plan))
            if not np.isfinite(value):
                raise ValueError(f"The fitness of widths {widths} is {value}; a fitness must be a finite number.")
            self.cache[key] = value
            self.history.append({"widths": widths, "macs_ratio": self.space.macs.ratio(plan), "fitness": value,
                                 "step": step, "phase": phase})
        if self.best is None or value > self.best[0]:
            self.best = (value, np.array(ratios), plan)
        if new or self._count_hits:
            self._steps += 1
            if self.progress is not None and self._steps < self.progress.target:
                self.progress.update(self._steps, [("best", self.best[0]), ("evaluations", len(self.history))])
        return value

    def result(self, method, curve):
        from tfprune.search.result import SearchResult

        fitness, _, plan = self.best
        if self.progress is not None:
            self.progress.target = self._steps
            self.progress.update(self._steps, [("best", fitness), ("evaluations", len(self.history))], finalize=True)
        space = self.space
        uniform = {n: len(k) for n, k in space.uniform_candidate()[1].keep.items()}
        return SearchResult(plan=plan, widths={n: len(k) for n, k in plan.keep.items()},
                            macs_ratio=space.macs.ratio(plan), fitness=fitness, evaluations=len(self.history),
                            history=self.history, model=self.model, method=method, target_macs=space.target,
                            uniform_widths=uniform, curve=curve,
                            seconds=time.perf_counter() - self.start, cache_hits=self.hits,
                            cost=space.cost.kind, cost_ratio=space.cost.ratio(plan))
