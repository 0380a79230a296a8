"""mask(): zero, in place, exactly the weights that rebuild() would drop."""

import keras
import numpy as np

from tfprune.graph import ChannelGraph
from tfprune.graph.keras_nodes import weight_keys
from tfprune.pruning.spanning import masked_norms, spanning_layers


def mask(model, plan, graph=None):
    """Zero the weights of every channel the plan removes, in place, keeping all shapes.

    Each removed channel's filters, biases and normalisation parameters become zero, and so do the weights that
    read it in the next layers, so that the removed channels output zero and contribute nothing. The zeroed
    entries are exactly those `rebuild` drops: `rebuild(m, plan)` computes what `mask(m, plan)` computes.

    A plan that prunes a channel-spanning group (a transformer's hidden width, opted in with `prune_spanning`)
    removes channels that a LayerNormalization or RMSNormalization normalises over. The rebuilt norm normalises
    over the kept channels only, which the original layer cannot do in place (it would count the removed channels
    as zeros). For such a plan `mask` zeroes the weights in place as always and returns a new model that computes
    what the rebuilt one does: the same layers (weights shared, so training it trains `model`), except that each
    of those norms is a `tfprune.layers.KeptChannelNormalization` of it. Other channel-spanning layers (a
    GroupNormalization, a softmax over channels) are rebuilt but not masked: a `PlanError` says so.

    Args:
        model: the Functional or Sequential model to modify in place.
        plan: a `Plan` for this model.
        graph: its `ChannelGraph`, if already built.

    Returns:
        `model` itself; for a plan that prunes a channel-spanning group, the masked model described above.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3)(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> _ = tfprune.mask(model, tfprune.plan(model, 0.5))
    >>> int((np.abs(model.layers[1].kernel.numpy()).sum(axis=(0, 1, 2)) == 0).sum())
    2
    """
    graph = graph or ChannelGraph(model, prune_outputs=plan.prune_outputs)
    plan.validate(graph)
    changed = spanning_layers(graph, plan)  # refuses, before any change, what cannot be masked exactly
    for variable, keep in variable_masks(model, plan, graph):
        variable.assign(np.where(keep, variable.numpy(), 0))
    return masked_norms(graph, changed) if changed else model


def weight_masks(model, plan, graph=None):
    """`{variable.path: boolean array}` for every weight that loses entries under `plan`: True where `rebuild`
    keeps the entry. Weights that keep everything are left out. This is the index `mask` zeroes by and the
    training-time callbacks hold fixed during `fit`.

    Args:
        model: the Functional or Sequential model (read only).
        plan: a `Plan` for this model.
        graph: its `ChannelGraph`, if already built.
    """
    return {variable.path: kept for variable, kept in variable_masks(model, plan, graph)}


def variable_masks(model, plan, graph):
    """`(variable, keep flags)` pairs for the weights that lose entries under `plan`, as in `weight_masks`, but
    keyed by the variable itself (variables of different sub-models of a traced model may share a path)."""
    graph = graph or ChannelGraph(model, prune_outputs=plan.prune_outputs)
    plan.validate(graph)
    channel_keep = graph.channel_keep(plan)
    masks = []
    for path, layer in graph.layers.items():
        keep = graph.layer_keep(path, channel_keep)
        if all(k.all() for k in keep.values()) or not isinstance(layer, keras.layers.Layer):
            continue  # nothing removed, or a keras.ops operation (a reshape, a concatenation): no weights
        index = graph.rules[path].weight_index(layer, keep)
        keys = weight_keys(layer)
        for variable in layer.weights:
            if keys[id(variable)] in index:
                kept = np.zeros(variable.shape, bool)
                kept[index[keys[id(variable)]]] = True
                masks.append((variable, kept))
    return masks
