"""Weight-magnitude criteria (Li et al., ICLR 2017): the norm of each channel's filters, summed over every layer of
the group that creates or carries those channels (convolutions, depthwise and separable convolutions, Dense).

A group's score is reduced over all its members: for a residual stage whose channels are created by several
convolutions tied by `Add`s, channel k's score is the sum over those convolutions of |filter k| (its L1 norm), or
the square root of the summed squares (L2). Only the filters that *produce* the channels count, not the weights that
read them in the next layers.

**Independent and greedy** (Li et al., Sec. 3.2). "Independent" ranks each layer's filters with all their weights.
"Greedy" ignores, in a filter's norm, the kernels that read channels already removed from earlier layers. With
`FilterNorm(variant="greedy")`, `tfprune.plan` scores the groups in execution order and hands the criterion the
channels kept so far (`kept`); the criterion then leaves out of each producing layer's kernel the input rows whose
channels the plan has removed (for grouped convolutions, the rows of each filter's own input group; for separable
convolutions, the depthwise outputs of removed channels; depthwise convolutions read no other channel). Greedy needs
`scope="layer"`: a global threshold decides all groups at once, so there are no earlier removals to respect.
"""

import numpy as np

from tfprune.graph.rules import producers
from tfprune.pruning.plans import Plan

VARIANTS = ("independent", "greedy")


def _input_mask(rule, layer, in_keep, shape):
    """1/0 per (input row, filter) of a producing layer's filter array: 0 where the input channel is removed."""
    if in_keep is None or isinstance(rule, producers.DepthwiseConv):
        return None
    if isinstance(rule, producers.SeparableConv):
        mask = np.repeat(in_keep, layer.depth_multiplier)[:, None]
    elif isinstance(rule, producers.Conv) and getattr(layer, "groups", 1) > 1:
        groups, filters = layer.groups, shape[-1]
        per_group = in_keep.reshape(groups, len(in_keep) // groups)
        mask = per_group[np.arange(filters) // (filters // groups)].T
    else:
        mask = in_keep[:, None]
    if mask.shape[0] != shape[-2]:
        raise ValueError(f"Cannot match the input channels of '{layer.name}' ({len(in_keep)}) to its kernel rows "
                         f"({shape[-2]}) for the greedy variant.")
    return mask


def _filter_norms(graph, group, order, channel_keep=None):
    total = np.zeros(group.width)
    for member in group.members:
        rule, layer = graph.rules.get(member.layer), graph.layers.get(member.layer)
        if rule is None or member.side not in rule.filter_sides:  # e.g. a layer that only reads the channels
            continue
        for side, weights in rule.filter_weights(layer):
            if side != member.side:
                continue
            magnitude = np.abs(weights) if order == 1 else np.abs(weights) ** order  # x ** 1 == x: one pass less
            if channel_keep is not None:
                mask = _input_mask(rule, layer, graph.layer_keep(member.layer, channel_keep).get("in"),
                                   weights.shape)
                magnitude = magnitude if mask is None else magnitude * mask
            flat = magnitude.reshape(-1, weights.shape[-1])
            total += graph.scatter(group, graph.recorded(member.layer)[side], flat.sum(axis=0))
    return total


def l1(graph, group, model=None, data=None):
    """Sum of absolute filter weights per channel (Li et al.'s criterion), summed over the group's producers."""
    return _filter_norms(graph, group, 1)


def l2(graph, group, model=None, data=None):
    """Euclidean norm of all filter weights of each channel (over every producer of the group)."""
    return np.sqrt(_filter_norms(graph, group, 2))


class FilterNorm:
    """Li et al.'s filter norm with a choice of norm and of the independent or greedy variant.

    Args:
        p: 1 (sum of |w|, the paper's choice) or 2 (Euclidean norm).
        variant: "independent" (every filter with all its weights) or "greedy" (without the kernels that read
            channels the plan has already removed from earlier groups; `tfprune.plan` passes them as `kept`).

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((8, 8, 2))
    >>> x = keras.layers.Conv2D(2, 1, use_bias=False, name="a")(inputs)
    >>> x = keras.layers.Conv2D(2, 1, use_bias=False, name="b")(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    >>> model.get_layer("a").set_weights([np.array([[[[1.0, 9.0], [1.0, 9.0]]]])])   # 'a' keeps channel 1
    >>> model.get_layer("b").set_weights([np.array([[[[5.0, 1.0], [0.0, 2.0]]]])])   # rows: inputs 0 and 1
    >>> tfprune.plan(model, 0.5, criterion=FilterNorm(variant="independent")).keep["b"]
    (0,)
    >>> tfprune.plan(model, 0.5, criterion=FilterNorm(variant="greedy")).keep["b"]   # input 0 is gone: 0 vs 2
    (1,)
    """

    def __init__(self, p=1, variant="independent"):
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2; got {p!r}.")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}.")
        self.p, self.variant = p, variant

    @property
    def uses_plan_so_far(self):
        """True for the greedy variant: `plan` then passes `kept`, the channels kept by the groups planned so far."""
        return self.variant == "greedy"

    def __call__(self, graph, group, model=None, data=None, kept=None):
        channel_keep = None
        if self.variant == "greedy" and kept:
            channel_keep = graph.channel_keep(Plan(keep=kept, widths={name: graph[name].width for name in kept}))
        total = _filter_norms(graph, group, self.p, channel_keep)
        return total if self.p == 1 else np.sqrt(total)

    def __repr__(self):
        return f"FilterNorm(p={self.p}, variant={self.variant!r})"
