"""The cost interface: MACs, params and latency of a slim model, priced from the channels each group keeps.

A cost model is built once from a model's `ChannelGraph` and prices any plan without rebuilding: every layer's
cost is a function of the kept counts of the channel positions it reads and writes (its recorded *sides*), and a
plan changes only those counts. The three costs share one interface (`CostModel`), which is what `plan_for_macs`,
`plan_for_latency`, sensitivity's plan, the searches and DMCP's differentiable budget use:

- `MacsModel` (`tfprune.macs_model`) and `ParamsModel` (`tfprune.measurement.params_model`): exact, a polynomial
  of the side counts (`PolynomialCost`);
- `LatencyModel` (`tfprune.measurement.latency_tables`): per-layer latency tables measured on a runtime,
  interpolated.

`parse_target` reads the targets they all accept: a number (a MACs ratio) or `{"macs" | "params" | "latency": ratio}`
(with `"runtime"` and `"threads"` for latency); `tfprune.measurement.cost_targets.cost_model` builds the model a
target asks for.
"""

import dataclasses
import numbers

import keras
import numpy as np

from tfprune.graph import ChannelGraph

COSTS = ("macs", "params", "latency")
RUNTIMES = ("litert", "onnxruntime")


class CostModel:
    """The cost of `rebuild(model, plan)` for any plan, from the channel counts alone (no model is built).

    Subclasses register the sides their layers depend on (`side`) and implement `_value(counts)` (numpy, the cost at
    given side counts) and `_expected_value(counts)` (keras ops, the same on tensors, differentiable).

    Args:
        model: a Functional or Sequential model with a fixed input size (read only).
        graph: its `ChannelGraph`, if already built.

    Attributes:
        kind: "macs", "params" or "latency".
        full: the cost of the unpruned model.
        graph: the `ChannelGraph`.
        unit: what the cost counts ("MACs", "params", "ms").
    """

    kind = None
    unit = ""

    def __init__(self, model, graph=None):
        self.graph = graph or ChannelGraph(model)
        groups = self.graph.groups
        self._offset = dict(zip([g.name for g in groups], np.cumsum([0] + [g.width for g in groups[:-1]]),
                                strict=True))
        self._size = sum(g.width for g in groups)
        self._position_index, self._position_sides, self._sides = [], [], {}
        self.full_counts = []  # the unpruned count of each registered side
        self.full = 0

    # ---- sides -----------------------------------------------------------------------------------------------

    def side(self, path, name):
        """`(index, full count)` of the side `name` of the layer at `path` (registered on first use)."""
        key = (path, name)
        if key not in self._sides:
            group, channel = self.graph.channels(self.graph.recorded(path)[name])
            flat = np.array([self._offset[self.graph.groups[g].name] for g in group], np.int64) + channel
            self._position_index.append(flat)
            self._position_sides.append(np.full(len(flat), len(self._sides)))
            self._sides[key] = len(self._sides), len(flat)
            self.full_counts.append(len(flat))
        return self._sides[key]

    def _freeze_sides(self):
        """Concatenate the registered positions once all sides are known (call at the end of `__init__`)."""
        self._positions = (np.concatenate(self._position_index) if self._position_index
                           else np.zeros(0, np.int64))
        self._position_side = (np.concatenate(self._position_sides) if self._position_sides
                               else np.zeros(0, np.int64))
        self._n_sides = len(self._sides)

    # ---- to implement ----------------------------------------------------------------------------------------

    def _value(self, counts):
        raise NotImplementedError

    def _expected_value(self, counts):
        raise NotImplementedError

    # ---- the interface ---------------------------------------------------------------------------------------

    def cost(self, plan) -> float:
        """The cost of `rebuild(model, plan)`."""
        return self._value(self._plan_counts(plan))

    def _plan_counts(self, plan):
        """Each registered side's kept count under `plan`."""
        keep = np.ones(self._size, np.float64)
        for name, kept in plan.keep.items():
            group_keep = np.zeros(self.graph[name].width)
            group_keep[list(kept)] = 1
            keep[self._slice(name)] = group_keep
        return self._counts(keep)

    def ratio(self, plan) -> float:
        """`cost(plan) / full`."""
        return self.cost(plan) / self.full

    def cost_of_widths(self, widths, ranks=None) -> float:
        """The cost when each named group keeps `widths[name]` channels: its first ones, or those of lowest `ranks`.

        Args:
            widths: `{group name: kept count}`; groups not named keep all their channels.
            ranks: `{group name: rank of each channel}` (0 = kept first), e.g. from a criterion's order; by default
                the channel index. With the ranks a plan keeps, the result equals `cost(plan)`.
        """
        keep = np.ones(self._size, np.float64)
        for name, width in widths.items():
            group = self.graph[name]
            rank = np.arange(group.width) if ranks is None or name not in ranks else np.asarray(ranks[name])
            keep[self._slice(name)] = rank < int(width)
        return self._evaluate(keep)

    def ratio_of_widths(self, widths, ranks=None) -> float:
        """`cost_of_widths(widths, ranks) / full`."""
        return self.cost_of_widths(widths, ranks) / self.full

    def expected_cost(self, keep_probability):
        """The cost with each layer's kept counts replaced by their expectations, as a differentiable keras tensor.

        Each side's kept count is the sum of its channels' keep probabilities, and the cost is evaluated at those
        counts, as DMCP does for MACs (exact for probabilities of 0 and 1).

        Args:
            keep_probability: `{group name: tensor of shape (width,)}`, each channel's probability of being kept,
                in the group's channel order; groups not named are kept whole.

        Returns:
            A scalar float32 tensor of the backend in use.
        """
        parts, start = [], 0
        for group in self.graph.groups:
            if group.name in keep_probability:
                if start < self._offset[group.name]:
                    parts.append(keras.ops.ones((self._offset[group.name] - start,)))
                parts.append(keras.ops.cast(keras.ops.reshape(keep_probability[group.name], (-1,)), "float32"))
                start = self._offset[group.name] + group.width
        if start < self._size:
            parts.append(keras.ops.ones((self._size - start,)))
        keep = keras.ops.concatenate(parts) if len(parts) > 1 else parts[0]
        counts = keras.ops.segment_sum(keras.ops.take(keep, self._positions), self._position_side,
                                       num_segments=self._n_sides)
        return self._expected_value(counts)

    def expected_ratio(self, keep_probability):
        """`expected_cost(keep_probability) / full`, a differentiable keras tensor."""
        return self.expected_cost(keep_probability) / float(self.full)

    def _slice(self, name):
        start = self._offset[self.graph[name].name]
        return slice(start, start + self.graph[name].width)

    def _counts(self, keep):
        return np.bincount(self._position_side, weights=keep[self._positions], minlength=self._n_sides)

    def _evaluate(self, keep):
        return self._value(self._counts(keep))


class PolynomialCost(CostModel):
    """A cost that is a constant plus a sum of terms, each a coefficient times a product of side counts (MACs and
    params: every layer's is such a sum, exactly)."""

    def __init__(self, model, graph=None):
        super().__init__(model, graph)
        self._constant = 0.0
        self._terms = []  # (coefficient, (side index, ...))

    def _freeze_terms(self):
        terms = self._terms
        self._freeze_sides()
        self._coefficient = np.array([t[0] for t in terms], np.float64)
        degree = max([len(t[1]) for t in terms], default=1)
        # factors[j, t]: the side of the j-th factor of term t; -1 (a factor of 1) where a term has fewer
        self._factors = np.array([list(t[1]) + [-1] * (degree - len(t[1])) for t in terms], np.int64).reshape(
            len(terms), degree).T

    def _value(self, counts):
        product = self._coefficient.copy()
        for factor in self._factors:
            product *= np.where(factor >= 0, counts[np.maximum(factor, 0)], 1.0)
        return self._constant + float(np.sum(product))

    def _expected_value(self, counts):
        product = keras.ops.convert_to_tensor(self._coefficient, "float32")
        for factor in self._factors:
            product = product * keras.ops.where(factor >= 0, keras.ops.take(counts, np.maximum(factor, 0)), 1.0)
        return self._constant + keras.ops.sum(product)


@dataclasses.dataclass(frozen=True)
class CostTarget:
    """A parsed target: which cost, the ratio (slim over original) and, for latency, where it is measured.

    Attributes:
        kind: "macs", "params" or "latency".
        ratio: the wanted ratio, slim over original.
        runtime: for latency, "litert" or "onnxruntime" (None otherwise).
        threads: for latency, the runtime's CPU threads (None otherwise).
    """

    kind: str
    ratio: float
    runtime: str | None = None
    threads: int | None = None

    def __str__(self):
        """The target as a user writes it, for messages: `{"latency": 0.25, "runtime": "litert", "threads": 1}`."""
        where = f', "runtime": "{self.runtime}", "threads": {self.threads}' if self.kind == "latency" else ""
        return f'{{"{self.kind}": {self.ratio:g}{where}}}'


def parse_target(target, what="target", high=1.0, closed=True) -> CostTarget:
    """Read a cost target: a number (a MACs ratio, as before) or a one-cost dict.

    Args:
        target: `0.5` (MACs), `{"macs": 0.5}`, `{"params": 0.5}` or `{"latency": 0.5}`, the latter optionally with
            `"runtime": "litert" | "onnxruntime"` (default "litert") and `"threads": n` (default 1); a `CostTarget`
            is returned as it is.
        what: the argument's name, for the error message.
        high: the largest ratio allowed; closed: whether `high` itself is allowed ((0, 1] or (0, 1)).

    Returns:
        A `CostTarget`.

    Raises:
        ValueError: for anything else, saying what is allowed.

    Example:

    >>> from tfprune.measurement.costs import parse_target
    >>> parse_target(0.5)
    CostTarget(kind='macs', ratio=0.5, runtime=None, threads=None)
    >>> parse_target({"latency": 0.25, "runtime": "onnxruntime"})
    CostTarget(kind='latency', ratio=0.25, runtime='onnxruntime', threads=1)
    """
    allowed = (f"{what} must be a MACs ratio in (0, {high:g}{']' if closed else ')'}, or a dict naming one cost: "
               '{"macs": r}, {"params": r} or {"latency": r} (with optional "runtime": "litert" | "onnxruntime" and '
               '"threads": n for latency)')
    if isinstance(target, CostTarget):
        return target
    if isinstance(target, dict):
        costs = [k for k in target if k in COSTS]
        extra = [k for k in target if k not in COSTS and k not in ("runtime", "threads")]
        if len(costs) != 1 or extra:
            raise ValueError(f"{allowed}; got {target!r}" + (f" (unknown key(s) {extra})." if extra else "."))
        kind = costs[0]
        if kind != "latency" and ("runtime" in target or "threads" in target):
            raise ValueError(f"{allowed}; 'runtime' and 'threads' go with 'latency' only; got {target!r}.")
        ratio = _ratio(target[kind], high, closed, allowed, target)
        if kind != "latency":
            return CostTarget(kind, ratio)
        runtime = target.get("runtime", "litert")
        if runtime not in RUNTIMES:
            raise ValueError(f"{what}'s runtime must be one of {RUNTIMES}; got {runtime!r}.")
        threads = target.get("threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
            raise ValueError(f"{what}'s threads must be an integer >= 1; got {threads!r}.")
        return CostTarget(kind, ratio, runtime, int(threads))
    return CostTarget("macs", _ratio(target, high, closed, allowed, target))


def _ratio(value, high, closed, allowed, target):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0
            or not (value <= high if closed else value < high)):
        raise ValueError(f"{allowed}; got {target!r}.")
    return float(value)
