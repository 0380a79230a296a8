"""SearchResult: what a structure search (ABCPruner, random search, DMCP) found, in one type."""

import dataclasses

import numpy as np

from tfprune.pruning.plans import Plan
from tfprune.pruning.rebuilding import rebuild


@dataclasses.dataclass
class SearchResult:
    """The per-group widths a search chose, the plan that keeps them, and how the search got there.

    Attributes:
        plan: the `tfprune.Plan` (which channels each searched group keeps).
        widths: `{group name: kept channels}`.
        macs_ratio: MACs of the slim model over the original's, as `count_macs(rebuild(model, plan))` gives them.
        fitness: the fitness of the chosen widths (higher is better), or None for a search without one.
        evaluations: how many candidates were scored (cache hits not counted).
        cache_hits: how many candidates had been scored before and were answered from the cache.
        history: one record per evaluation, in order: `{"widths", "macs_ratio", "fitness", "step", "phase"}`.
        model: the model that was searched (read only; `slim_model` rebuilds it).
        method: "abc", "random" or "dmcp".
        target_macs: the budget of the search, a ratio of `cost` (the MACs unless the target named another).
        uniform_widths: the widths of one common keep ratio under the same budget, for comparison.
        curve: progress per step (a cycle, or an evaluation for random search): `{"step", "best", "mean"}`.
        seconds: wall time of the search.
        cost: the cost of the budget: "macs", "params" or "latency".
        cost_ratio: the plan's ratio on that cost, by its cost model (`macs_ratio` for MACs).
    """

    plan: Plan
    widths: dict
    macs_ratio: float
    fitness: float | None
    evaluations: int
    history: list
    model: object = dataclasses.field(repr=False)
    method: str = ""
    target_macs: float | None = None
    uniform_widths: dict = dataclasses.field(default_factory=dict, repr=False)
    curve: list = dataclasses.field(default_factory=list, repr=False)
    seconds: float = 0.0
    cache_hits: int = 0
    cost: str = "macs"
    cost_ratio: float | None = None

    def slim_model(self, reinit="keep", initial_weights=None, seed=None):
        """`tfprune.rebuild(model, plan, reinit, initial_weights, seed)`: the slim model with these widths.

        Args:
            reinit: "keep" (inherit the searched model's weights and fine-tune), "lottery" (rewind to
                `initial_weights`) or "scratch" (fresh initialisers), as in `tfprune.rebuild`.
            initial_weights: the snapshot for "lottery".
            seed: seed of the fresh initialisation for "scratch".
        """
        return rebuild(self.model, self.plan, reinit=reinit, initial_weights=initial_weights, seed=seed)

    def keep_ratios(self, widths=None) -> dict:
        """`{group: kept fraction}` of `widths` (default: the chosen ones)."""
        return {name: n / self.plan.widths[name] for name, n in (widths or self.widths).items()}

    def figure(self, title=None):
        """A matplotlib `Figure`: best and mean fitness per step, and each group's keep ratio next to uniform."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4), layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=(1, 2))
        if self.curve:
            steps = [c["step"] for c in self.curve]
            left.plot(steps, [c["best"] for c in self.curve], marker="o", markersize=3, label="best")
            left.plot(steps, [c["mean"] for c in self.curve], marker="s", markersize=3, label="mean")
            left.set_xlabel("evaluation" if self.method == "random" else "cycle")
            left.legend()
        left.set_ylabel("fitness")
        left.grid(alpha=0.3)
        names = list(self.widths)
        x = np.arange(len(names))
        right.bar(x, list(self.keep_ratios().values()), color="tab:orange", label=f"{self.method} (chosen)")
        if self.uniform_widths:
            right.plot(x, [self.keep_ratios(self.uniform_widths)[n] for n in names], "k_", markersize=14,
                       markeredgewidth=2, label="uniform, same MACs")
        right.set_xticks(x, names, rotation=60, ha="right", fontsize="x-small")
        right.set_ylabel("fraction of channels kept")
        right.set_ylim(0, 1.05)
        right.legend(fontsize="small")
        right.grid(axis="y", alpha=0.3)
        fitness = "" if self.fitness is None else f", fitness {self.fitness:.4g}"
        fig.suptitle(title or f"{self.method} search of '{getattr(self.model, 'name', 'model')}': "
                     f"MACs ratio {self.macs_ratio:.3f}{fitness}, {self.evaluations} evaluations")
        return fig
