"""plan_for_macs(): the plan of a one-parameter family whose slim model has a given fraction of the MACs (or of
the params, or of the latency: any cost of `tfprune.measurement.costs`)."""

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
