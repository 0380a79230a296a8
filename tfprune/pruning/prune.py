"""prune(): plan and rebuild in one call."""

from tfprune import criteria
from tfprune.graph import ChannelGraph
from tfprune.pruning.planning import plan as make_plan
from tfprune.pruning.rebuilding import rebuild


def prune(model, ratio, criterion="l1", scope="layer", reinit="keep", initial_weights=None, seed=None,
          prune_outputs=False, **plan_options):
    """Remove `ratio` of the channels of `model` and return the slim model (the input model is not modified).

    Args:
        model: a Functional or Sequential Keras model.
        ratio, criterion, scope: as in `tfprune.plan`; further `plan` options (`min_channels`, `round_to`,
            `data`, `normalize`) may be given by keyword.
        reinit, initial_weights, seed: as in `tfprune.rebuild` (`seed` also seeds the "random" criterion).
        prune_outputs: also prune groups that reach a model output.

    A criterion object with a `reconstruct(model, slim, plan, data)` method (such as "lasso", He et al.'s channel
    pruning) then writes refitted weights into the slim model (reinit "keep" only).

    Returns:
        The slim `keras.Model`.

    Example:

    >>> import keras, tfprune
    >>> model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    >>> slim = tfprune.prune(model, 0.3)
    >>> tfprune.count_macs(slim) < tfprune.count_macs(model)
    True
    """
    score_fn = criteria.get(criterion, seed=seed)
    reconstruct = getattr(score_fn, "reconstruct", None)
    if reconstruct is not None and reinit != "keep":
        raise ValueError(f"criterion {criterion!r} refits the kept weights after rebuilding, which reinit="
                         f"{reinit!r} would discard; use reinit='keep', or tfprune.plan then tfprune.rebuild.")
    graph = ChannelGraph(model, prune_outputs=prune_outputs)
    chosen = make_plan(model, ratio, criterion=score_fn, scope=scope, seed=seed, graph=graph, **plan_options)
    slim = rebuild(model, chosen, reinit=reinit, initial_weights=initial_weights, seed=seed, graph=graph)
    if reconstruct is not None:
        reconstruct(model, slim, chosen, plan_options.get("data"))
    return slim
