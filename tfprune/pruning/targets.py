"""plan_for_macs(): the plan of a one-parameter family whose slim model has a given fraction of the MACs."""

import numbers

from tfprune.measurement.macs_model import MacsModel


def plan_for_macs(model, target, make_plan, graph=None, steps=16):
    """Bisect the ratio `r` of `make_plan(r)` so that the slim model keeps at most `target` of the MACs.

    Args:
        model: the model the plans are for (read only).
        target: the wanted MACs ratio, slim over original, in (0, 1].
        make_plan: `ratio -> Plan`, for ratios in [0, 1), removing more as the ratio grows, e.g.
            `lambda r: tfprune.plan(model, r, scope="global")` or a callback's `plan` method.
        graph: the model's `ChannelGraph`, if already built.
        steps: bisection steps (each one plan; the MACs come from `MacsModel`, with no rebuild).

    Returns:
        `(plan, macs_ratio)`: the plan of the smallest ratio found whose MACs ratio is at most `target`, and that
        MACs ratio. If even the largest ratio tried stays above the target, that plan is returned with its ratio
        (check it).

    Example:

    >>> import keras, tfprune
    >>> model = tfprune.models.small_vgg(widths=(16, 32), convs_per_stage=1)
    >>> plan, macs = tfprune.plan_for_macs(model, 0.5, lambda r: tfprune.plan(model, r))
    >>> 0.45 < macs <= 0.5
    True
    """
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target <= 1:
        raise ValueError(f"target must be a MACs ratio in (0, 1]; got {target!r}.")
    macs = MacsModel(model, graph=graph)

    def measure(ratio):
        plan = make_plan(ratio)
        return plan, macs.ratio(plan)

    lo, hi = 0.0, 0.999
    best = measure(hi)
    if best[1] > target:
        return best
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = measure(mid)
        if candidate[1] <= target:
            hi, best = mid, candidate
        else:
            lo = mid
    return best
