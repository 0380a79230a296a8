"""sensitivity(): how much each channel group alone can be pruned before the model gets worse (Li et al., 2017).

Each prunable group is pruned alone at each ratio, without retraining, by masking a copy of the model with the plan
`tfprune.plan` makes for that group (the very channels `rebuild` would remove), and the copy is evaluated. The curves
(one per group, the paper's Figure 2) show which layers are sensitive; `SensitivityResult` turns them into per-group
ratios for a tolerated drop or for a MACs target, a dict that `tfprune.plan(model, ratio=...)` accepts.
"""

import math
import numbers

import keras
import numpy as np

from tfprune import criteria
from tfprune.graph import ChannelGraph
from tfprune.measurement.cost_targets import cost_model
from tfprune.measurement.costs import parse_target
from tfprune.measurement.counting import count_macs
from tfprune.measurement.macs_model import MacsModel
from tfprune.pruning.masking import mask
from tfprune.pruning.planning import plan as make_plan
from tfprune.pruning.plans import Plan
from tfprune.pruning.rebuilding import rebuild
from tfprune.pruning.targets import plan_for_macs

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class SensitivityResult:
    """The metric of the model with each group pruned alone at each ratio.

    Attributes:
        groups: the group names, one row each.
        ratios: the ratios, one column each; the first is 0.0 (the unpruned model).
        values: array (groups × ratios) of the metric; column 0 is `baseline` for every group.
        baseline: the metric of the unpruned model.
        metric: the metric's name.
    """

    def __init__(self, groups, ratios, values, baseline, metric, model, graph, criterion, data):
        self.groups, self.ratios, self.values = list(groups), tuple(ratios), np.asarray(values, np.float64)
        self.baseline, self.metric = float(baseline), metric
        self._model, self._graph, self._criterion, self._data = model, graph, criterion, data

    @property
    def drops(self) -> np.ndarray:
        """`baseline - values` (groups × ratios): how much worse each pruning is (the metric is higher-better)."""
        return self.baseline - self.values

    def ratios_for_drop(self, max_drop) -> dict:
        """`{group: the largest ratio whose drop, and that of every smaller ratio, is at most max_drop}`.

        Groups that cannot lose even the smallest ratio get 0.0. The dict is a `ratio` for `tfprune.plan`.
        """
        if isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real) or math.isnan(max_drop):
            raise ValueError(f"max_drop must be a number; got {max_drop!r}.")
        envelope = np.maximum.accumulate(self.drops, axis=1)
        chosen = {}
        for name, row in zip(self.groups, envelope, strict=True):
            allowed = np.flatnonzero(row <= max_drop)
            chosen[name] = float(self.ratios[allowed.max()]) if len(allowed) else 0.0
        return chosen

    def ratios_for_macs(self, reduction, min_channels=1, round_to=1, cost=None) -> dict:
        """Per-group ratios that remove at least `reduction` of the model's MACs with the smallest tolerated drop.

        Bisects over the tolerated drop (the distinct values of the curves): for each, `ratios_for_drop` gives the
        ratios, `tfprune.plan` the plan (same criterion as the analysis), `MacsModel` its MACs.

        Args:
            reduction: fraction of MACs to remove, in (0, 1), e.g. 0.5 for half the MACs.
            min_channels, round_to: as in `tfprune.plan` (use the same when planning with the result).
            cost: another cost model to remove `reduction` of (`tfprune.measurement.costs.CostModel`: params,
                latency); default the MACs.

        Returns:
            `{group: ratio}` for `tfprune.plan(model, ratio=...)`.

        Raises:
            ValueError: when even the largest measured ratios of every group do not reach the target.
        """
        if isinstance(reduction, bool) or not isinstance(reduction, numbers.Real) or not 0 < reduction < 1:
            raise ValueError(f"reduction must be a fraction of MACs in (0, 1); got {reduction!r}.")
        cost = cost or MacsModel(self._model, graph=self._graph)
        target = 1 - reduction
        tolerances = np.unique(np.maximum.accumulate(self.drops, axis=1))
        lo, hi = 0, len(tolerances) - 1
        lowest = self._ratio(cost, self.ratios_for_drop(tolerances[hi]), min_channels, round_to)
        if lowest > target:
            raise ValueError(f"Pruning every group at its largest measured ratio removes only {1 - lowest:.1%} of the "
                             f"{cost.unit}, less than the {reduction:.1%} asked; measure larger ratios.")
        while lo < hi:
            mid = (lo + hi) // 2
            if self._ratio(cost, self.ratios_for_drop(tolerances[mid]), min_channels, round_to) <= target:
                hi = mid
            else:
                lo = mid + 1
        return self.ratios_for_drop(tolerances[lo])

    def plan_for_macs(self, target, min_channels=1, round_to=1) -> Plan:
        """A plan that keeps at most `target` of the MACs (or another cost) and uses that budget, shaped by the curves.

        `ratios_for_macs(1 - target)` meets the target but often falls well below it (the tolerated drop moves in
        steps, and each step moves several groups at once). Its ratios are therefore scaled by one common factor in
        [0, 2), bisected by `tfprune.plan_for_macs` to the largest plan within the target: the least sensitive
        groups still lose the most, and groups the curves leave whole stay whole.

        Args:
            target: the ratio to keep, slim over original, in (0, 1): a number (MACs) or a dict naming the cost,
                `{"params": 0.5}`, `{"latency": 0.5, "runtime": "litert"}` (see `tfprune.plan_for_macs`).
            min_channels, round_to: as in `tfprune.plan`.

        Returns:
            The `Plan` (same criterion as the analysis).
        """
        parsed = parse_target(target, high=1, closed=False)
        cost = cost_model(self._model, parsed, graph=self._graph)
        ratios = self.ratios_for_macs(1 - parsed.ratio, min_channels, round_to, cost=cost)
        chosen, _ = plan_for_macs(self._model, parsed, lambda r: make_plan(
            self._model, {name: min(0.999, 2 * r * ratio) for name, ratio in ratios.items()},
            criterion=self._criterion, data=self._data, graph=self._graph, min_channels=min_channels,
            round_to=round_to), graph=self._graph, cost=cost)
        return chosen

    def macs(self, ratios, min_channels=1, round_to=1) -> int:
        """MACs of the model pruned with `ratios` (a dict for `tfprune.plan`) by the analysis' criterion."""
        ratios = {name: r for name, r in ratios.items() if r > 0}
        if not ratios:
            return count_macs(self._model)
        chosen = make_plan(self._model, ratios, criterion=self._criterion, data=self._data, graph=self._graph,
                           min_channels=min_channels, round_to=round_to)
        return MacsModel(self._model, graph=self._graph).macs(chosen)

    def _ratio(self, cost, ratios, min_channels, round_to):
        """The cost ratio of the model pruned with `ratios` by the analysis' criterion."""
        ratios = {name: r for name, r in ratios.items() if r > 0}
        if not ratios:
            return 1.0
        chosen = make_plan(self._model, ratios, criterion=self._criterion, data=self._data, graph=self._graph,
                           min_channels=min_channels, round_to=round_to)
        return cost.ratio(chosen)

    def table(self, fmt="markdown") -> str:
        """The curves as a table, a row per group and a column per ratio: "markdown" or "text"."""
        if fmt not in ("markdown", "text"):
            raise ValueError(f"fmt must be 'markdown' or 'text'; got {fmt!r}.")
        header = ["group", "width"] + [f"{r:g}" for r in self.ratios]
        rows = [[name, str(self._graph[name].width)] + [f"{v:.4f}" for v in values]
                for name, values in zip(self.groups, self.values, strict=True)]
        if fmt == "markdown":
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        else:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows]]
        return f"{self.metric} with one group pruned at each ratio (baseline {self.baseline:.4f})\n\n" + \
            "\n".join(lines)

    def figure(self, title=None):
        """A matplotlib `Figure` with one curve per group: the metric against the ratio pruned (no pyplot)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for name, values in zip(self.groups, self.values, strict=True):
            ax.plot(self.ratios, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("fraction of the group's channels pruned")
        ax.set_ylabel(self.metric)
        ax.set_title(title or f"Sensitivity to pruning ({self._model.name})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=max(1, len(self.groups) // 12), loc="lower left")
        return fig

    def __str__(self):
        return self.table("text")

    def __repr__(self):
        return f"SensitivityResult({len(self.groups)} groups × {len(self.ratios)} ratios of {self.metric!r})"


def _evaluator(model, data, metric, batch_size):
    """`(copy) -> float` and the metric's name."""
    if callable(metric):
        return (lambda copy: float(metric(copy, data))), getattr(metric, "__name__", "metric")
    if metric is not None and not isinstance(metric, str):
        raise ValueError(f"metric must be None, the name of a compiled metric, or a callable (model, data) -> "
                         f"float; got {metric!r}.")
    if not getattr(model, "compiled", False):
        raise ValueError("sensitivity evaluates with the model's compiled metrics: compile the model (e.g. "
                         "metrics=['accuracy']) or pass metric=callable(model, data) -> float.")
    config = model.get_compile_config()
    x, y = (data[0], data[1]) if isinstance(data, tuple) and len(data) in (2, 3) else (data, None)

    def evaluate(copy):
        if not copy.compiled:
            copy.compile_from_config(config)
        results = copy.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        name = metric or next((k for k in results if "acc" in k), None)
        if name not in results:
            raise ValueError(f"The compiled model reports {sorted(results)}; " +
                             (f"there is no {metric!r}." if metric else "none is an accuracy: pass metric=."))
        evaluate.name = name
        return float(results[name])

    return evaluate, None


def sensitivity(model, data, ratios=DEFAULT_RATIOS, metric=None, criterion="l1", groups=None, batch_size=None,
                verbose=1, graph=None, seed=None):
    """Prune each group alone at each ratio, without retraining, and evaluate: Li et al.'s sensitivity analysis.

    Args:
        model: a Functional or Sequential Keras model (read only: a copy is masked).
        data: evaluation data: `(x, y)` arrays or a dataset of `(x, y)` batches (as `model.evaluate` takes them);
            also passed to data-driven criteria.
        ratios: fractions of a group's channels to remove, in (0, 1); 0.0 is always added as the first column.
        metric: None (the compiled accuracy metric), the name of another compiled metric, or a callable
            `(model, data) -> float`. Higher must be better.
        criterion: which channels go, as in `tfprune.plan` (a name or a criterion object); scores are computed
            once (a named criterion becomes one object for the whole analysis).
        groups: names of the groups to analyse (default: every prunable group).
        batch_size: for `evaluate` with array data.
        verbose: 1 shows a progress bar over the (group, ratio) evaluations.
        graph: the model's `ChannelGraph`, if already built.
        seed: seed of the "random" criterion.

    Returns:
        A `SensitivityResult`: `.values` (groups × ratios), `.table()`, `.figure()`, `.ratios_for_drop(d)`,
        `.ratios_for_macs(r)`.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> data = (np.random.rand(16, 8, 8, 1), np.arange(16) % 2)
    >>> result = tfprune.sensitivity(model, data, ratios=(0.25, 0.5), verbose=0,
    ...                              metric=lambda m, d: -float(np.abs(m.predict(d[0], verbose=0)).mean()))
    >>> result.values.shape, result.ratios
    ((1, 3), (0.0, 0.25, 0.5))
    """
    ratios = tuple(float(r) for r in ratios)
    for r in ratios:
        if not 0 < r < 1:
            raise ValueError(f"ratios must be fractions in (0, 1); got {r!r}.")
    if not ratios or list(ratios) != sorted(set(ratios)):
        raise ValueError(f"ratios must be increasing and distinct; got {ratios}.")
    if data is None:
        raise ValueError("sensitivity needs evaluation data: (x, y) arrays or a dataset of (x, y) batches.")
    graph = graph or ChannelGraph(model)
    names = [g.name for g in graph.prunable_groups] if groups is None else list(groups)
    for name in names:
        if not graph[name].prunable:
            raise ValueError(f"Group '{name}' cannot be pruned: {'; '.join(graph[name].reasons)}.")
    score_fn = criteria.get(criterion, seed=seed)
    evaluate, metric_name = _evaluator(model, data, metric, batch_size)

    copy = rebuild(model, Plan(keep={}, widths={}), graph=graph)  # the same model, to mask
    copy_graph = ChannelGraph(copy)
    baseline = evaluate(copy)
    metric_name = metric_name or evaluate.name
    values = np.full((len(names), len(ratios) + 1), baseline)
    progress = keras.utils.Progbar(len(names) * len(ratios), verbose=verbose, unit_name="evaluation")
    done = 0
    for i, name in enumerate(names):
        layers = [copy_graph.layers[m.layer] for m in graph[name].members if m.layer in copy_graph.layers]
        saved = [[v.numpy() for v in layer.weights] for layer in layers]
        for j, r in enumerate(ratios):
            chosen = make_plan(model, {name: r}, criterion=score_fn, data=data, graph=graph)
            values[i, j + 1] = evaluate(mask(copy, chosen, graph=copy_graph))  # a new model for a spanning group
            for layer, weights in zip(layers, saved, strict=True):
                for variable, value in zip(layer.weights, weights, strict=True):
                    variable.assign(value)
            done += 1
            if verbose:
                progress.update(done)
    return SensitivityResult(names, (0.0, *ratios), values, baseline, metric_name, model, graph, score_fn, data)
