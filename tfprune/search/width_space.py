"""WidthSpace: the per-group widths a structure search may choose, and the budget every candidate meets (MACs, or
params or latency: any cost of `tfprune.measurement.costs`).

A candidate is one keep ratio per searched group. Its widths are the ratios times the group widths (at least one
channel, rounded up to `round_to` and to equal blocks), and its plan keeps each group's best channels by a
criterion, so the slim model inherits the trained weights. Costs come from the cost model, without rebuilding.

A candidate is settled onto the budget in two passes: on the grid (steps of 10% of a group by default), then by
the finest step a group can take (one channel, or the multiple `round_to` and equal blocks ask for), which uses
the rest of the budget a grid step is too coarse for.
"""

import math

import numpy as np

from tfprune import criteria
from tfprune.deployment.channel_tiles import resolve_round_to
from tfprune.errors import PlanError
from tfprune.graph import ChannelGraph
from tfprune.measurement.cost_targets import cost_model
from tfprune.measurement.costs import parse_target
from tfprune.measurement.macs_model import MacsModel
from tfprune.pruning.planning import keep_count, plan_removals

DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class WidthSpace:
    """Keep ratios per group on a grid, under a budget.

    Args:
        model: the model searched (read only).
        target_macs: the budget, slim over original, in (0, 1]: a MACs ratio, or a dict naming the cost
            (`{"params": 0.5}`, `{"latency": 0.5, "runtime": "litert"}`; see `tfprune.measurement.costs.parse_target`).
        grid: the keep ratios a group may take, increasing, in (0, 1].
        groups: names of the groups to search (default: every prunable group).
        criterion: which channels a group keeps for a width (a `tfprune.plan` criterion name or callable).
        criterion_data: data for a data-driven criterion.
        round_to: kept counts are rounded up to a multiple of this, or "auto": the channel tile on this CPU of the
            runtime a latency target names (LiteRT's for other targets).
        seed: seed of a "random" criterion.
    """

    def __init__(self, model, target_macs, grid=DEFAULT_GRID, groups=None, criterion="l1", criterion_data=None,
                 round_to=1, seed=None):
        self.target_spec = parse_target(target_macs, "target_macs")
        self.target = self.target_spec.ratio
        self.grid = _check_grid(grid)
        # "auto": the tile of the runtime a latency target names, else LiteRT's
        self.round_to = resolve_round_to(round_to, self.target_spec.runtime or "litert")
        self.graph = ChannelGraph(model)
        self.macs = MacsModel(model, graph=self.graph)
        self.cost = self.macs if self.target_spec.kind == "macs" else cost_model(model, self.target_spec, self.graph)
        self.groups = self._searched(groups)
        score_fn = criteria.get(criterion, seed=seed)
        if getattr(score_fn, "uses_plan_so_far", False) or hasattr(score_fn, "scores_for_keep"):
            raise ValueError(f"criterion {criterion!r} scores a group only once its kept count or the plan of the "
                             "groups before it is known; a structure search needs one fixed order of channels "
                             "per group: use 'l1', 'l2', 'random' or a data-driven criterion.")
        self.scores = {g.name: np.asarray(score_fn(self.graph, g, model, criterion_data), np.float64)
                       for g in self.groups}
        # rank 0 is kept first: the order `select` keeps channels in (ties to the lower index)
        self.ranks = {name: np.argsort(np.argsort(-s, kind="stable"), kind="stable") for name, s in self.scores.items()}
        self._check_reachable()

    @property
    def names(self):
        return [g.name for g in self.groups]

    def _searched(self, names):
        if names is None:
            groups = self.graph.prunable_groups
            if not groups:
                raise PlanError(f"Model '{self.graph.model.name}' has no prunable channel group, so there is no width "
                                f"to search. {self._why_none()}")
            return groups
        if isinstance(names, str) or not names:
            raise ValueError(f"groups must be a non-empty list of group names; got {names!r}.")
        groups = [self.graph[name] for name in names]
        for g in groups:
            if not g.prunable:
                raise PlanError(f"Group '{g.name}' cannot be searched: {'; '.join(g.reasons)}.")
        if len({g.name for g in groups}) != len(groups):
            raise ValueError(f"groups lists a group twice: {list(names)}.")
        return groups

    def _why_none(self):
        reasons = sorted({g.reasons[0] for g in self.graph.groups if g.reasons})
        return f"Why the groups are fixed: {'; '.join(reasons[:3])}." if reasons else ""

    # ---- candidates -> widths, plans and MACs -------------------------------------------------------------

    def widths(self, ratios) -> dict:
        """`{group: kept count}` for one keep ratio per searched group."""
        return {g.name: keep_count(g, g.width - max(1, round(r * g.width)), 1, self.round_to)
                for g, r in zip(self.groups, ratios, strict=True)}

    def estimate(self, ratios) -> float:
        """The cost ratio of a candidate, by the criterion's channel order (the plan's, up to blocks and parts)."""
        return self.cost.ratio_of_widths(self.widths(ratios), self.ranks)

    def plan(self, ratios):
        """The `Plan` keeping each group's best channels at the candidate's widths."""
        widths = self.widths(ratios)
        return plan_removals(self.graph, self.scores, {n: self.graph[n].width - w for n, w in widths.items()},
                             round_to=self.round_to)

    def fits(self, ratios) -> bool:
        return self.estimate(ratios) <= self.target

    # ---- moves on the grid --------------------------------------------------------------------------------

    def snap(self, value) -> float:
        """The grid value nearest to `value`."""
        return float(self.grid[np.argmin(np.abs(self.grid - value))])

    def step(self, value, direction):
        """The next grid value below (direction -1) or above (+1) `value`, or None at the end of the grid."""
        options = self.grid[self.grid < value - 1e-12] if direction < 0 else self.grid[self.grid > value + 1e-12]
        if not len(options):
            return None
        return float(options[-1] if direction < 0 else options[0])

    def random(self, rng):
        """A candidate drawn uniformly from the grid, repaired and filled onto the budget."""
        return self.fill(self.repair(rng.choice(self.grid, size=len(self.groups)), rng), rng)

    def uniform_candidate(self):
        """`(ratios, plan)` of `uniform()`, within the budget but not repaired, so that it stays uniform."""
        x = self.uniform()
        plan = self.plan(x)
        while self.cost.ratio(plan) > self.target:  # blocks or parts kept more than the estimate
            x = np.full(len(x), self.step(x[0], -1) or self.grid[0])
            plan = self.plan(x)
        return x, plan

    def uniform(self):
        """One common keep ratio for every group, the largest under the budget (not limited to the grid)."""
        low, high = 0.0, 1.0
        if self.fits(np.full(len(self.groups), high)):
            return np.full(len(self.groups), high)
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if self.fits(np.full(len(self.groups), mid)) else (low, mid)
        return np.full(len(self.groups), low)

    def repair(self, ratios, rng, moved=()):
        """Bring a candidate onto the budget: grid steps down while it is over it, or, if it was under it, steps up
        while one still fits.

        Steps go to randomly chosen groups other than those in `moved` (the dimensions a search move just
        changed, so that the move itself survives), and to those only when no other group can step. Only one of
        the two phases runs, so a candidate over the budget changes no more groups than needed; the result is
        within one grid step of one group of the budget.
        """
        x = np.array(ratios, np.float64)
        moved = {int(d) for d in moved}
        if not self.fits(x):
            while not self.fits(x):
                down = [d for d in range(len(x)) if self.step(x[d], -1) is not None]
                free = [d for d in down if d not in moved] or down
                d = free[rng.integers(len(free))]
                x[d] = self.step(x[d], -1)
            return x
        while True:
            up = []
            for d in range(len(x)):
                higher = self.step(x[d], +1)
                if higher is not None and d not in moved:
                    trial = x.copy()
                    trial[d] = higher
                    if self.fits(trial):
                        up.append((d, higher))
            if not up:
                return x
            d, higher = up[rng.integers(len(up))]
            x[d] = higher

    def fill(self, ratios, rng, moved=()):
        """Grow groups by their finest step (`finest_step`) while the candidate still fits the budget: what a grid
        step was too coarse to use. No group grows past the width of the grid's largest ratio.

        Groups are taken in random order, those in `moved` last (so that a search move stays as it was made where
        it can), and each grows by as many steps as fit, so few groups leave the grid. In the result no group below
        the grid's largest ratio can grow by one more step: the candidate is under the budget by less than the MACs
        of one finest step of any of them.
        """
        x = np.array(ratios, np.float64)
        widths, widest = self.widths(x), self.widths(np.full(len(x), self.grid[-1]))
        moved = {int(d) for d in moved}
        order = [int(d) for d in rng.permutation(len(x))]
        for d in [d for d in order if d not in moved] + [d for d in order if d in moved]:
            name, unit = self.groups[d].name, self.finest_step(self.groups[d])
            fits, steps = 0, -(-(widest[name] - widths[name]) // unit)  # fits <= what fits < steps + 1
            while fits < steps:  # MACs grow with the width: bisect the number of steps that fit
                mid = (fits + steps + 1) // 2
                if self._fits_widths({**widths, name: min(widths[name] + mid * unit, widest[name])}):
                    fits = mid
                else:
                    steps = mid - 1
            if fits:
                widths[name] = min(widths[name] + fits * unit, widest[name])
                x[d] = widths[name] / self.groups[d].width
        return x

    def finest_step(self, group):
        """The smallest change of `group`'s kept count: one channel, or the multiple of `round_to` and of the
        group's equal blocks."""
        return math.lcm(self.round_to, group.n_blocks)

    def _fits_widths(self, widths):
        return self.cost.ratio_of_widths(widths, self.ranks) <= self.target

    def settle(self, ratios, rng, moved=()):
        """`(ratios, plan)`: the candidate repaired onto the budget on the grid (`repair`), grown by finest steps
        into the rest of it (`fill`), and its plan, whose exact MACs ratio (where blocks or layers fed by part of a
        group made the plan keep more than the estimate) is within the budget too: finest steps down otherwise."""
        x = self.fill(self.repair(ratios, rng, moved), rng, moved)
        plan = self.plan(x)
        narrowest = self.widths(np.full(len(x), self.grid[0]))
        while self.cost.ratio(plan) > self.target:
            widths = self.widths(x)
            down = [d for d, g in enumerate(self.groups) if widths[g.name] > narrowest[g.name]]
            if not down:
                raise PlanError(f"The target {self.target_spec} cannot be met: at the smallest grid ratio the plan "
                                f"keeps {self.cost.ratio(plan):.3f} of the {self.cost.unit} (layers fed by part of a "
                                "group need a channel each).")
            d = down[rng.integers(len(down))]
            group = self.groups[d]
            x[d] = (widths[group.name] - self.finest_step(group)) / group.width
            plan = self.plan(x)
        return x, plan

    def _check_reachable(self):
        lowest = np.full(len(self.groups), self.grid[0])
        floor = self.estimate(lowest)
        if floor <= self.target:
            return
        prunable = {g.name: 1 for g in self.graph.prunable_groups}
        fixed = self.cost.ratio_of_widths(prunable)
        at_min = self.widths(lowest)
        cost = {}  # what each group not searched would save by keeping one channel
        for g in self.graph.prunable_groups:
            if g.name not in at_min:
                cost[g.name] = floor - self.cost.ratio_of_widths({**at_min, g.name: 1}, self.ranks)
        biggest = sorted(cost, key=cost.get, reverse=True)[:3]
        hint = (f" Groups not searched that hold the most {self.cost.unit}: "
                f"{', '.join(f'{n} ({cost[n]:.3f})' for n in biggest)}; add them to groups=." if biggest else "")
        raise PlanError(
            f"The target {self.target_spec} cannot be reached: with every searched group at the smallest grid ratio "
            f"({self.grid[0]}) the slim model keeps {floor:.3f} of the {self.cost.unit}. Layers no plan can shrink "
            f"(fixed groups, boundaries) hold {fixed:.3f}.{hint} Allowed targets: at least {floor:.3f}, or lower the "
            "grid's smallest ratio.")


def _check_grid(grid):
    try:
        values = np.asarray(grid, np.float64)
    except (TypeError, ValueError):
        values = None
    if (values is None or values.ndim != 1 or len(values) < 2 or not np.all(np.diff(values) > 0)
            or values[0] <= 0 or values[-1] > 1):
        raise ValueError(f"grid must list at least two increasing keep ratios in (0, 1], e.g. {DEFAULT_GRID}; "
                         f"got {grid!r}.")
    return values

