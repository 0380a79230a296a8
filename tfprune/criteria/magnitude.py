"""Weight-magnitude criteria (Li et al., ICLR 2017): the norm of each channel's filters, summed over every layer of
the group that creates or carries those channels (convolutions, depthwise and separable convolutions, Dense)."""

import numpy as np


def _filter_norms(graph, group, order):
    total = np.zeros(group.width)
    for member in group.members:
        rule, layer = graph.rules.get(member.layer), graph.layers.get(member.layer)
        if rule is None:
            continue
        for side, weights in rule.filter_weights(layer):
            if side != member.side:
                continue
            flat = np.abs(weights.reshape(-1, weights.shape[-1])) ** order
            total += graph.scatter(group, graph.recorded(member.layer)[side], flat.sum(axis=0))
    return total


def l1(graph, group, model=None, data=None):
    """Sum of absolute filter weights per channel (Li et al.'s criterion)."""
    return _filter_norms(graph, group, 1)


def l2(graph, group, model=None, data=None):
    """Euclidean norm of all filter weights of each channel."""
    return np.sqrt(_filter_norms(graph, group, 2))
