"""Pruning a channel-spanning group (a transformer's hidden width through its LayerNorms): what `mask` computes and
how much the outputs move.

A norm over the channels (LayerNormalization, RMSNormalization) computes its statistics over all of them. `rebuild`
slices its weights to the kept channels, so the slim norm normalises over those alone: the standard, deployable
layer. That is the reference. The masked model must compute the same, which the original layer cannot (its
statistics would count the removed channels as zeros), so `mask` returns a model in which each such norm is a
`tfprune.layers.KeptChannelNormalization` of the same layer, whose statistics cover the kept channels only; every
other layer is the caller's own. Training that masked model and then rebuilding gives the model trained.

The kept channels' values change against the original model (not against the masked one): `rebuild` says by how
much, with an `OutputChangeWarning` that carries the measured figure.
"""

import warnings

import keras
import numpy as np

from tfprune.errors import OutputChangeWarning, PlanError
from tfprune.graph.keras_nodes import is_graph_model, model_inputs, pack_like_inputs, pack_like_outputs, run_nodes
from tfprune.layers.kept_channel_normalization import NORMALIZATIONS, KeptChannelNormalization


def spanning_layers(graph, plan):
    """`{layer path: kept channel indices of its input}` of the channel-spanning layers whose channels `plan`
    removes (the norms of a pruned hidden width). Raises `PlanError` for a spanning layer other than a
    LayerNormalization or RMSNormalization (a GroupNormalization, a softmax over channels), which no masked model
    computes as the slim one does."""
    channel_keep = graph.channel_keep(plan)
    changed = {}
    for name, kept in plan.keep.items():
        group = graph[name]
        if len(kept) == group.width:
            continue
        for path in group.spanning:
            layer = graph.layers[path]
            if type(layer) not in NORMALIZATIONS:
                raise PlanError(
                    f"Plan prunes group '{name}', which '{path}' ({type(layer).__name__}) computes over as a whole: "
                    "tfprune rebuilds it, but masks such a group exactly only through LayerNormalization and "
                    "RMSNormalization. Rebuild the model instead of masking it, or leave the group out of the plan.")
            keep = graph.layer_keep(path, channel_keep)["in"]
            if not keep.all():
                changed[path] = np.flatnonzero(keep)
    return changed


def masked_norms(graph, changed):
    """A model computing `graph.model` with each norm of `changed` ({path: kept indices}) normalising over its kept
    channels only (`KeptChannelNormalization`): every other layer is the very same object, weights shared."""
    replaced = {path: KeptChannelNormalization(graph.layers[path], kept, name=graph.layers[path].name)
                for path, kept in changed.items()}
    built = {}

    def model_with(model, prefix):
        def operation(op):
            path = prefix + op.name
            if path in replaced:
                return replaced[path]
            if is_graph_model(op) and any(p.startswith(path + "/") for p in replaced):
                if path not in built:
                    built[path] = model_with(op, path + "/")
                return built[path]
            return op

        inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, sparse=t.sparse,
                              name=t._keras_history.operation.name) for t in model_inputs(model)]

        def call(node, tensors):
            args, kwargs = node.arguments.fill_in(tensors)
            return keras.tree.flatten(operation(node.operation)(*args, **kwargs))

        outputs = run_nodes(model, inputs, call)
        return keras.Model(pack_like_inputs(model, inputs), pack_like_outputs(model, outputs), name=model.name)

    return model_with(graph.model, "")


def example_inputs(model, batch_size=2, seed=0):
    """Random inputs for a Functional or Sequential model: standard normal floats, integers 0 or 1 (valid token
    ids, segment ids and padding masks alike); unknown dimensions become 32. One array, or a list for several."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model_inputs(model):
        shape = (batch_size, *[d or 32 for d in t.shape[1:]])
        if "int" in str(t.dtype) or "bool" in str(t.dtype):
            arrays.append(rng.integers(0, 2, shape).astype(t.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(t.dtype))
    return arrays[0] if len(arrays) == 1 else arrays


def output_change(model, slim, inputs):
    """`max|model(x) - slim(x)| / max(1, max|model(x)|)` over all outputs, on `inputs`."""
    expected = [np.asarray(y) for y in keras.tree.flatten(model(inputs, training=False))]
    actual = [np.asarray(y) for y in keras.tree.flatten(slim(inputs, training=False))]
    scale = max([1.0] + [float(np.abs(e).max()) for e in expected])
    return max(float(np.abs(e - a).max()) for e, a in zip(expected, actual, strict=True)) / scale


def warn_output_change(graph, plan, slim):
    """Warn (`OutputChangeWarning`, with the measured figure) when `plan` prunes a channel-spanning group: the
    slim model's kept channels then compute other values than the original's."""
    groups = [name for name, kept in plan.keep.items() if len(kept) < graph[name].width and graph[name].spanning]
    if not groups:
        return
    layers = sorted({path for name in groups for path in graph[name].spanning})
    try:
        inputs = example_inputs(graph.model)
        inputs = pack_like_inputs(graph.model, inputs) if isinstance(inputs, list) else inputs
        change = output_change(graph.model, slim, inputs)
        measured = (f"on random inputs, the slim model's outputs differ from the original's by {change:.3g} (largest "
                    "absolute difference over the output scale, max(1, largest output))")
    except Exception as e:  # noqa: BLE001 - a model that does not run on random inputs: say so, measure elsewhere
        change = None
        measured = f"the change could not be measured on random inputs ({str(e).splitlines()[0] if str(e) else e!r})"
    shown = ", ".join(f"'{p}'" for p in layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    warnings.warn(OutputChangeWarning(
        f"The plan prunes channel-spanning groups {groups}: {shown} normalise over the kept channels only, which "
        f"changes their values; {measured}. Measure on your data with "
        "tfprune.deployment.verification.output_change(model, slim, inputs), and fine-tune.", change), stacklevel=3)
