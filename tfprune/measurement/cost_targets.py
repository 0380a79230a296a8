"""cost_model(): the cost model a target asks for — MACs, params or latency (see `tfprune.measurement.costs`)."""

from tfprune.measurement.costs import parse_target
from tfprune.measurement.macs_model import MacsModel
from tfprune.measurement.params_model import ParamsModel


def cost_model(model, target, graph=None, latency_options=None):
    """The cost model of `model` for a target (a number or a dict, see `parse_target`, or a parsed `CostTarget`).

    Args:
        model: the model the plans are for (read only).
        target: `0.5`, `{"macs": 0.5}`, `{"params": 0.5}`, `{"latency": 0.5, "runtime": ..., "threads": ...}` or a
            `CostTarget`.
        graph: the model's `ChannelGraph`, if already built.
        latency_options: more arguments of `LatencyModel` (e.g. `cache_dir`, `grid`) for a latency target.

    Returns:
        A `MacsModel`, `ParamsModel` or `LatencyModel` (all `tfprune.measurement.costs.CostModel`).

    Example:

    >>> import tfprune
    >>> from tfprune.measurement.cost_targets import cost_model
    >>> model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    >>> type(cost_model(model, {"params": 0.5})).__name__, type(cost_model(model, 0.5)).__name__
    ('ParamsModel', 'MacsModel')
    """
    parsed = target if hasattr(target, "kind") else parse_target(target)
    if parsed.kind == "macs":
        return MacsModel(model, graph=graph)
    if parsed.kind == "params":
        return ParamsModel(model, graph=graph)
    from tfprune.measurement.latency_tables import LatencyModel  # imported here: it is the heavier module

    return LatencyModel(model, runtime=parsed.runtime, threads=parsed.threads, graph=graph,
                        **(latency_options or {}))
