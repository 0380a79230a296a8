"""Insert DMCP's Markov channel gates into a model: one gate per searched channel group, applied wherever the
group's channels are produced.

The gated model is a new Functional graph that calls the very layers of the model it is built from (weights
shared), with a `MarkovChannelGate` after every layer that creates the group's channels — moved past the
BatchNormalization and per-channel activations that follow it, since a BatchNormalization after the gate would
normalise the gate's scaling away. Groups tied by residual `Add`s have one gate for all their producers, so every
tensor carrying the group's channels sees the same width. Graph and rebuild code are only read.
"""

import keras
import numpy as np
from keras import tree

from tfprune.graph.keras_nodes import (
    call_nodes,
    is_graph_model,
    model_inputs,
    model_outputs,
    pack_like_inputs,
    pack_like_outputs,
    run_nodes,
)
from tfprune.graph.rules import normalization, passthrough, producers

_PRODUCERS = (producers.Dense, producers.DepthwiseConv)  # Conv, ConvTranspose and SeparableConv derive from Dense
_PER_CHANNEL = (normalization.BatchNormalization, passthrough.PassThrough)


class _Node:
    def __init__(self, path, node, model):
        self.path, self.node, self.model = path, node, model


def _collect(model, prefix, nodes, consumers, outputs):
    """Every call node of `model` and its nested graph models, with paths as `ChannelGraph` names them."""
    outputs.update(id(t) for t in model_outputs(model))
    for node in call_nodes(model):
        op = node.operation
        path = prefix + op.name
        if is_graph_model(op):
            _collect(op, path + "/", nodes, consumers, outputs)
            continue
        entry = _Node(path, node, model)
        nodes.setdefault(path, []).append(entry)
        for t in node.arguments.keras_tensors:
            consumers.setdefault(id(t), []).append(entry)


def gate_sites(graph, groups):
    """Where each group's gate goes.

    Args:
        graph: the `ChannelGraph` of the model to gate.
        groups: the groups to gate.

    Returns:
        `(sites, skipped)`: `sites` maps `id(node)` of the call after which a gate goes to the group name;
        `skipped` maps the name of a group that cannot be gated to the reason.
    """
    nodes, consumers, outputs = {}, {}, set()
    _collect(graph.model, "", nodes, consumers, outputs)
    sites, skipped = {}, {}
    for group in groups:
        found, why = [], None
        for member in group.members:
            rule = graph.rules.get(member.layer)
            if member.side != "out" or not isinstance(rule, _PRODUCERS):
                continue
            owner, channels = graph.channels(graph.recorded(member.layer)["out"])
            if np.any(owner != group.index) or not np.array_equal(channels, np.arange(group.width)):
                why = (f"'{member.layer}' produces only some of its channels (through a Concatenate), which a "
                       "per-group gate cannot follow")
                break
            for entry in nodes.get(member.layer, []):
                found.append(_follow(entry, graph, consumers, outputs))
        if why is None and not found:
            why = "no layer in the model produces its channels (they come from an input or a boundary)"
        if why:
            skipped[group.name] = why
            continue
        for entry in found:
            sites[id(entry.node)] = group.name
    return sites, skipped


def _follow(entry, graph, consumers, outputs):
    """The last call of the chain of per-channel layers (BatchNormalization, activations, dropout, pooling) that
    starts after `entry` and that only it feeds."""
    while True:
        out = entry.node.outputs
        if len(out) != 1 or id(out[0]) in outputs:
            return entry
        readers = consumers.get(id(out[0]), [])
        if len(readers) != 1:
            return entry
        nxt = readers[0]
        rule = graph.rules.get(nxt.path)
        layer = graph.layers.get(nxt.path)
        if (not isinstance(rule, _PER_CHANNEL) or len(nxt.node.arguments.keras_tensors) != 1
                or len(nxt.node.outputs) != 1 or _spans(rule, layer, nxt)):
            return entry
        entry = nxt


def _spans(rule, layer, entry):
    if isinstance(rule, passthrough.PassThrough):
        return rule.spans_channels(layer, len(entry.node.outputs[0].shape))
    return False


def gated_model(model, gates, sites):
    """A Functional model that calls `model`'s own layers with `gates[group](...)` after each site.

    Args:
        model: a Functional or Sequential model (its layers are reused, not copied).
        gates: `{group name: MarkovChannelGate}`.
        sites: from `gate_sites`.
    """
    inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=t._keras_history.operation.name)
              for t in model_inputs(model)]

    def walker(prefix):
        def call(node, values):
            op = node.operation
            if is_graph_model(op):
                return run_nodes(op, [values[id(t)] for t in node.arguments.keras_tensors], walker(prefix + op.name
                                                                                                   + "/"))
            args, kwargs = node.arguments.fill_in(values)
            out = tree.flatten(op(*args, **kwargs))
            if id(node) in sites:
                out = [gates[sites[id(node)]](out[0])]
            return out
        return call

    outputs = run_nodes(model, inputs, walker(""))
    return keras.Model(pack_like_inputs(model, inputs), pack_like_outputs(model, outputs), name=f"{model.name}_gated")
