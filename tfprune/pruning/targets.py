"""plan_for_macs() and plan_for_latency(): the plan of a one-parameter family whose slim model has a given fraction
of the MACs (or of the params, or of the latency: any cost of `tfprune.measurement.costs`), and one whose measured
latency on a runtime is a given fraction of the original's."""

import dataclasses
import numbers
import warnings

from tfprune.measurement.cost_targets import cost_model
from tfprune.measurement.costs import parse_target


def plan_for_macs(model, target, make_plan, graph=None, steps=16, cost=None):
    """Bisect the ratio `r` of `make_plan(r)` so that the slim model keeps at most `target` of the MACs (or of
    another cost).

    Args:
        model: the model the plans are for (read only).
        target: the wanted ratio, slim over original, in (0, 1]: a number (MACs) or a dict naming the cost,
            `{"macs": 0.5}`, `{"params": 0.5}` or `{"latency": 0.5, "runtime": "litert", "threads": 1}` (latency
            as predicted by `LatencyModel`; `tfprune.plan_for_latency` also measures it).
        make_plan: `ratio -> Plan`, for ratios in [0, 1), removing more as the ratio grows, e.g.
            `lambda r: tfprune.plan(model, r, scope="global")` or a callback's `plan` method.
        graph: the model's `ChannelGraph`, if already built.
        steps: bisection steps (each one plan; the cost comes from the cost model, with no rebuild).
        cost: the cost model to use, if already built (it must price the target's cost).

    Returns:
        `(plan, ratio)`: the plan of the smallest ratio found whose cost ratio is at most `target`, and that
        cost ratio. If even the largest ratio tried stays above the target, that plan is returned with its ratio
        (check it).

    Example:

    >>> import keras, tfprune
    >>> model = tfprune.models.small_vgg(widths=(16, 32), convs_per_stage=1)
    >>> plan, macs = tfprune.plan_for_macs(model, 0.5, lambda r: tfprune.plan(model, r))
    >>> 0.45 < macs <= 0.5
    True
    >>> plan, params = tfprune.plan_for_macs(model, {"params": 0.5}, lambda r: tfprune.plan(model, r))
    >>> 0.45 < params <= 0.5
    True
    """
    parsed = parse_target(target)
    if cost is None:
        cost = cost_model(model, parsed, graph=graph)
    elif cost.kind != parsed.kind:
        raise ValueError(f"cost prices {cost.kind} but the target is a {parsed.kind} ratio; pass a matching cost "
                         "model or none.")

    def measure(ratio):
        plan = make_plan(ratio)
        return plan, cost.ratio(plan)

    lo, hi = 0.0, 0.999
    best = measure(hi)
    if best[1] > parsed.ratio:
        return best
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = measure(mid)
        if candidate[1] <= parsed.ratio:
            hi, best = mid, candidate
        else:
            lo = mid
    return best


@dataclasses.dataclass(frozen=True)
class LatencyFit:
    """How `plan_for_latency`'s plan was checked on the runtime.

    Attributes:
        target: the latency ratio asked for.
        predicted_ratio: the latency model's ratio for the plan returned.
        measured_ratio: the measured ratio (None when not measured, `verify=False`).
        original_ms, slim_ms: the measured medians (ms), or None.
        corrections: how many more plans were measured after the first, because a measurement missed the target.
        model: the `LatencyModel` (its tables, `build_seconds`, `cache_path`).
        tolerance: the relative error of the measured ratio that was accepted.
        tried: `(predicted, measured)` ratios of every plan measured, in order.
    """

    target: float
    predicted_ratio: float
    measured_ratio: float | None
    original_ms: float | None
    slim_ms: float | None
    corrections: int
    model: object = dataclasses.field(repr=False)
    tolerance: float = 0.05
    tried: tuple = ()

    @property
    def within(self) -> bool | None:
        """Whether the measured ratio is within `tolerance` of the target (None when not measured)."""
        return None if self.measured_ratio is None else abs(self.measured_ratio / self.target - 1) <= self.tolerance


def plan_for_latency(model, target, runtime="litert", threads=1, make_plan=None, round_to="auto", graph=None,
                     verify=True, tolerance=0.05, corrections=3, runs=50, cache_dir=None, grid=None,
                     latency_model=None, progress=None):
    """A plan whose slim model runs in `target` × the original's latency on this CPU, on a runtime.

    Bisects the ratio of `make_plan(r)` on the latency predicted by `LatencyModel` (per-layer tables measured on the
    runtime and cached, `tfprune.measurement.latency_tables`), like `plan_for_macs` on MACs; with the default
    family, whole tiles are then given back group by group while the prediction stays on target (`fill_tiles`).
    Then, with `verify`, measures it: the original and the slim model written for the runtime and called in turn in
    one subprocess bound to `threads` CPUs, batch 1, medians of `runs` calls. If the measured ratio misses the
    target by more than `tolerance` (relative), the bisection is aimed again (`next_aim`: the model's error undone,
    or interpolated between plans measured on either side of the target), up to `corrections` times (stopping when
    an aim gives a plan already measured), and the closest plan not above `target × (1 + tolerance)` is returned.

    Args:
        model: a Functional or Sequential model with a fixed input size (read only; TensorFlow backend to build
            tables or measure).
        target: the latency ratio, slim over original, in (0, 1].
        runtime: "litert" (LiteRT, XNNPACK) or "onnxruntime" (ONNX Runtime, CPU).
        threads: the runtime's CPU threads.
        make_plan: `ratio -> Plan`, removing more as the ratio grows; default `tfprune.plan(model, r,
            round_to=round_to)` (L1, the same ratio in every group).
        round_to: for the default `make_plan`: kept counts rounded up to a multiple of this, or "auto" (the
            default) for the runtime's channel tile on this CPU (`tfprune.deployment.channel_tiles`): widths the
            runtime computes without a partly used tile, which also fall where the tables were measured.
        graph: the model's `ChannelGraph`, if already built.
        verify: measure the plan's latency (and correct, see above).
        tolerance: the relative error of the measured ratio accepted without a correction.
        corrections: the most re-aimed bisections.
        runs: timed calls per model in a measurement (at least 50).
        cache_dir: where the latency tables are cached (see `LatencyModel`).
        grid: the tables' grid (default `LatencyModel`'s).
        latency_model: a `LatencyModel` already built for this model and runtime (then `cache_dir`, `grid` unused).
        progress: optionally called with a one-line description of each step.

    Returns:
        `(plan, fit)`: the `Plan` and a `LatencyFit` with the predicted and measured ratios.

    Example:

    >>> import tfprune
    >>> from tfprune.measurement.latency_tables import LatencyModel, synthetic_tables
    >>> model = tfprune.models.small_vgg(widths=(16, 32), convs_per_stage=1)
    >>> latency = LatencyModel(model, tables=synthetic_tables(model, 1e-6), cache_dir=False)
    >>> plan, fit = tfprune.plan_for_latency(model, 0.5, latency_model=latency, verify=False)
    >>> 0.45 < fit.predicted_ratio <= 0.5, fit.measured_ratio
    (True, None)
    """
    from tfprune.deployment.channel_tiles import channel_tile, resolve_round_to
    from tfprune.measurement.latency_tables import DEFAULT_GRID, LatencyModel
    from tfprune.measurement.runtime_latency import check_runtime, measure_ratio
    from tfprune.pruning.planning import plan as default_plan
    from tfprune.pruning.rebuilding import rebuild

    parsed = parse_target(target)
    if isinstance(target, dict) and parsed.kind != "latency":
        raise ValueError(f"plan_for_latency's target is a latency ratio in (0, 1] (or {{'latency': r}}); got "
                         f"{target!r}. Use plan_for_macs for a {parsed.kind} target.")
    check_runtime(runtime)
    if not isinstance(tolerance, numbers.Real) or not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be a fraction in (0, 1); got {tolerance!r}.")
    if isinstance(runs, bool) or not isinstance(runs, numbers.Integral) or runs < 50:
        raise ValueError(f"runs must be an integer >= 50 (the median of fewer batch-1 calls is too noisy to check "
                         f"a ±5% target); got {runs!r}.")
    notify = progress or (lambda message: None)
    latency = latency_model
    if latency is None:
        notify(f"latency tables for {runtime}, {threads} thread(s)")
        latency = LatencyModel(model, runtime=runtime, threads=threads, graph=graph, grid=grid or DEFAULT_GRID,
                               cache_dir=cache_dir, progress=progress)
    graph = latency.graph
    fill = make_plan is None
    if fill:
        step = resolve_round_to(round_to, runtime)
        if runtime == "onnxruntime" and step % channel_tile(runtime):
            warnings.warn(f"round_to={round_to!r} leaves widths that are not multiples of ONNX Runtime's channel "
                          f"block on this CPU ({channel_tile(runtime)}): its convolutions then leave the blocked "
                          "layout for a slower path that the latency tables do not see (uniform MobileNetV2 widths "
                          "at half the MACs ran slower than the original). Use round_to='auto'.", stacklevel=2)

        def make_plan(r):
            return default_plan(model, r, round_to=step, graph=graph)

    aim, tried = parsed.ratio, []
    while True:
        plan, predicted = plan_for_macs(model, {"latency": aim}, make_plan, graph=graph, cost=latency)
        if fill:
            plan, predicted = fill_tiles(model, plan, aim, latency, step, graph)
        if any(plan.keep == t[0].keep for t in tried):
            break  # aimed again at a plan already measured: no other plan of the family lies nearer
        if not verify:
            return plan, LatencyFit(parsed.ratio, predicted, None, None, None, 0, latency, tolerance)
        notify(f"measuring the plan (predicted ratio {predicted:.3f}) against the original, {runs} runs each")
        measured = measure_ratio(model, rebuild(model, plan, graph=graph), runtime, latency.threads, runs=runs)
        tried.append((plan, predicted, measured))
        if abs(measured.ratio / parsed.ratio - 1) <= tolerance or len(tried) > corrections:
            break
        aim = min(1.0, max(1e-3, next_aim([(p, m.ratio) for _, p, m in tried], parsed.ratio)))
    fitting = [t for t in tried if t[2].ratio <= parsed.ratio * (1 + tolerance)] or tried
    plan, predicted, measured = min(fitting, key=lambda t: abs(t[2].ratio - parsed.ratio))
    return plan, LatencyFit(parsed.ratio, predicted, measured.ratio, measured.original_ms, measured.slim_ms,
                            len(tried) - 1, latency, tolerance, tuple((p, m.ratio) for _, p, m in tried))


def fill_tiles(model, plan, aim, cost, step, graph):
    """`(plan, ratio)`: `plan` with whole tiles of `step` channels given back, group by group (the widest first),
    while the predicted cost ratio stays at most `aim`.

    A uniform ratio with widths rounded up to a tile moves every group by a tile at once at some ratios (a quarter
    off 64, 128 and 256 channels leaves multiples of 16 in all three), so the one-ratio family can step over the
    target; this fills the gap with the same L1 choice of channels, group by group."""
    from tfprune.pruning.planning import plan as default_plan

    groups = sorted(graph.prunable_groups, key=lambda g: -g.width)
    kept = {g.name: len(plan.keep.get(g.name, range(g.width))) for g in groups}
    best, ratio = plan, cost.ratio(plan)
    for g in groups:
        if kept[g.name] >= g.width:
            continue
        trial = {**kept, g.name: min(g.width, kept[g.name] + step)}
        # removals of floor(ratio × width) = width − kept exactly
        candidate = default_plan(model, {n: (graph[n].width - k + 0.5) / graph[n].width for n, k in trial.items()},
                                 round_to=step, graph=graph)
        candidate_ratio = cost.ratio(candidate)
        if candidate_ratio <= aim:
            kept, best, ratio = trial, candidate, candidate_ratio
    return best, ratio


def next_aim(tried, target):
    """The predicted ratio to aim at next, from the `(predicted, measured)` ratios of the plans tried so far: where
    the measured ratio crosses `target`, interpolated linearly between the closest plans measured on either side of
    it; while all are on one side, the closest one's predicted ratio scaled by `target / measured` (the model's
    error there, undone).

    Example:

    >>> from tfprune.pruning.targets import next_aim
    >>> round(next_aim([(0.25, 0.16)], 0.25), 4)       # measured too fast: aim higher
    0.3906
    >>> round(next_aim([(0.25, 0.16), (0.39, 0.30)], 0.25), 4)   # bracketed: interpolate
    0.34
    """
    below = [t for t in tried if t[1] <= target]
    above = [t for t in tried if t[1] > target]
    if below and above:
        (p0, m0), (p1, m1) = max(below, key=lambda t: t[1]), min(above, key=lambda t: t[1])
        return p0 + (p1 - p0) * (target - m0) / (m1 - m0)
    predicted, measured = min(tried, key=lambda t: abs(t[1] - target))
    return predicted * target / measured
