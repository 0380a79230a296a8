"""plan(): scores per group → a Plan, by a ratio per layer or one global threshold."""

import math
import numbers

import numpy as np

from tfprune import criteria
from tfprune.deployment.channel_tiles import resolve_round_to
from tfprune.errors import PlanError
from tfprune.graph import ChannelGraph
from tfprune.pruning.plans import Plan

SCOPES = ("layer", "global")


def check_ratio(value, what="ratio"):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{what} must be a number in [0, 1): the fraction of channels to remove; got {value!r}.")
    return float(value)


def check_positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1; got {value!r}.")
    return int(value)


def keep_count(group, n_remove, min_channels=1, round_to=1):
    """How many channels `group` keeps when asked to lose `n_remove`, after the floor and the rounding."""
    keep = max(group.width - int(n_remove), min_channels)
    unit = math.lcm(round_to, group.n_blocks)
    keep = math.ceil(keep / unit) * unit
    return min(keep, group.width)


def select(scores, keep, blocks=None, parts=()):
    """Indices of the `keep` highest scores (ties go to the lower index); equal counts per block if given.

    Every channel subset in `parts` (see `Group.parts`) keeps at least one channel: its best channel is swapped in
    for the lowest-scored one that no other part needs (in the same block). When no such swap exists, more than
    `keep` channels are returned.
    """
    scores = np.asarray(scores, np.float64)
    blocks = np.zeros(len(scores), np.int64) if blocks is None else np.asarray(blocks)
    n_blocks = int(blocks.max()) + 1
    chosen = np.zeros(len(scores), bool)
    for b in range(n_blocks):
        members = np.flatnonzero(blocks == b)
        chosen[members[np.argsort(-scores[members], kind="stable")[: keep // n_blocks]]] = True
    parts = [np.asarray(channels) for _, channels in parts]
    for part in parts:
        if chosen[part].any():
            continue
        sole = np.zeros(len(scores), bool)  # the only kept channel of some part: not to be dropped
        for other in parts:
            if chosen[other].sum() == 1:
                sole[other[chosen[other]]] = True
        for new in part[np.argsort(-scores[part], kind="stable")]:
            droppable = np.flatnonzero(chosen & ~sole & (blocks == blocks[new]))
            if len(droppable):
                chosen[droppable[np.argmin(scores[droppable])]] = False
                chosen[new] = True
                break
        else:
            chosen[part[np.argmax(scores[part])]] = True
    counts = np.bincount(blocks[chosen], minlength=n_blocks)
    for b in np.flatnonzero(counts < counts.max()):  # a part forced one block over: the others follow
        free = np.flatnonzero((blocks == b) & ~chosen)
        chosen[free[np.argsort(-scores[free], kind="stable")[: counts.max() - counts[b]]]] = True
    return np.flatnonzero(chosen)


def plan(model, ratio, criterion="l1", scope="layer", min_channels=1, round_to=1, data=None, prune_outputs=False,
         normalize="mean", seed=None, graph=None, prune_spanning=False):
    """Choose the channels to keep in every prunable group.

    Args:
        model: a Functional or Sequential Keras model (read only).
        ratio: fraction of channels to remove, in [0, 1): one number for every prunable group (channel-spanning
            ones only with `prune_spanning`), or a dict `{group name: ratio}` for the groups named, channel-spanning
            ones included (scope "layer").
        criterion: a name — "l1", "l2", "random", "lasso", or the data-driven "mean_activation", "apoz",
            "hrank", "taylor" (these need `data`) — or a callable `(graph, group, model, data) -> scores` (higher =
            keep), such as `tfprune.criteria.HRank(steps=2)`. In scope "layer", a criterion with a method
            `scores_for_keep(graph, group, model, data, n_keep)` is told each group's kept count instead (LASSO
            selects for an exact count), and a callable whose `uses_plan_so_far` is true (e.g.
            `tfprune.criteria.FilterNorm(variant="greedy")`) is called group by group in execution order with
            `kept=`, the channels kept by the groups planned before it.
        scope: "layer" removes `ratio` of each group; "global" removes `ratio` of all prunable channels, the lowest
            scores first after each group's scores are divided by their mean (`normalize`).
        min_channels: no group keeps fewer channels than this. Every layer keeps at least one channel too: a
            group whose channels come from several layers (Concatenate branches that an Add ties to another
            tensor) keeps at least one channel of each, even if that is more than asked.
        round_to: kept counts are rounded up to a multiple of this (e.g. 8 for SIMD-friendly widths), or "auto":
            LiteRT's channel tile on this CPU (`tfprune.deployment.channel_tiles`).
        data: passed to data-driven criteria: anything `model.predict` accepts, or `(x, y)` for "taylor".
        prune_outputs: also prune groups that reach a model output.
        normalize: "mean" or None: how scores are made comparable across groups in global scope.
        seed: seed of the "random" criterion.
        graph: a `ChannelGraph` of `model` already built, to save the analysis.
        prune_spanning: also prune the channel-spanning groups (`ChannelGraph.spanning_groups`): a transformer's
            hidden width, which LayerNorms normalise over as a whole, so that the kept channels' values change too
            (`rebuild` measures by how much and warns). Left out by default.

    Returns:
        A `Plan`.

    Example:

    >>> import keras, tfprune
    >>> inputs = keras.Input((16, 16, 3))
    >>> x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> p = tfprune.plan(model, 0.5)
    >>> len(p.keep["conv"])
    4
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}.")
    if normalize not in ("mean", None):
        raise ValueError(f"normalize must be 'mean' or None; got {normalize!r}.")
    min_channels = check_positive_int(min_channels, "min_channels")
    round_to = resolve_round_to(round_to)
    graph = graph or ChannelGraph(model, prune_outputs=prune_outputs)
    if isinstance(ratio, dict):
        if scope != "layer":
            raise ValueError("A dict of ratios gives each group its own ratio: use scope='layer'.")
        ratios = {name: check_ratio(r, f"ratio of group '{name}'") for name, r in ratio.items()}
        for name in ratios:
            if not graph[name].prunable:
                raise PlanError(f"Group '{name}' cannot be pruned: {'; '.join(graph[name].reasons)}.")
        groups = [graph[name] for name in ratios]
    else:
        ratios = None
        ratio = check_ratio(ratio)
        groups = graph.prunable_groups
        if prune_spanning:
            groups = sorted(groups + graph.spanning_groups, key=lambda g: g.index)
    score_fn = criteria.get(criterion, seed=seed)
    sequential = getattr(score_fn, "uses_plan_so_far", False)
    if sequential and scope != "layer":
        raise ValueError(f"Criterion {score_fn!r} scores each group after the earlier groups are planned; "
                         "use scope='layer'.")

    def removal(g):
        return math.floor((ratios[g.name] if ratios else ratio) * g.width)

    def score(g):
        if scope == "layer" and hasattr(score_fn, "scores_for_keep"):  # a criterion that selects a given count
            return score_fn.scores_for_keep(graph, g, model, data, keep_count(g, removal(g), min_channels, round_to))
        if sequential:
            return score_fn(graph, g, model, data, kept=dict(keep))
        return score_fn(graph, g, model, data)

    keep, scores = {}, {}
    for g in sorted(groups, key=lambda g: g.index) if sequential else groups:
        scores[g.name] = np.asarray(score(g), np.float64)
        if scores[g.name].shape != (g.width,):
            raise ValueError(f"Criterion returned shape {scores[g.name].shape} for group '{g.name}' "
                             f"of width {g.width}.")
        if sequential:
            keep[g.name] = _choose(g, scores[g.name], removal(g), min_channels, round_to)

    if not sequential:
        if scope == "layer":
            removals = {g.name: removal(g) for g in groups}
        else:
            removals = global_removals(groups, scores, ratio, min_channels, normalize)
        for g in groups:
            keep[g.name] = _choose(g, scores[g.name], removals[g.name], min_channels, round_to)
    widths = {g.name: g.width for g in groups}
    return Plan(keep=keep, widths=widths, prune_outputs=graph.prune_outputs)


def _choose(g, scores, n_remove, min_channels, round_to):
    """The kept channels of group `g` when asked to remove `n_remove`, after the floor, rounding and parts."""
    n_keep = keep_count(g, n_remove, min_channels, round_to)
    kept = select(scores, n_keep, g.blocks, g.parts)
    while len(kept) > n_keep:  # a layer fed by few of the group's channels forced more: the next valid count
        n_keep = keep_count(g, g.width - len(kept), min_channels, round_to)
        kept = select(scores, n_keep, g.blocks, g.parts)
    return kept


def plan_removals(graph, scores, removals, min_channels=1, round_to=1):
    """A `Plan` that removes `removals[name]` channels of each named group, the lowest `scores[name]` first, with
    the counts adjusted as in `plan` (the `min_channels` floor, rounding to `round_to` and equal blocks, and at
    least one channel for every layer fed by part of a group)."""
    round_to = resolve_round_to(round_to)
    keep = {name: _choose(graph[name], scores[name], n, min_channels, round_to) for name, n in removals.items()}
    return Plan(keep=keep, widths={name: graph[name].width for name in keep}, prune_outputs=graph.prune_outputs)


def global_removals(groups, scores, ratio, min_channels=1, normalize="mean"):
    """Per-group removal counts for one threshold over all channels' (normalised) scores: `ratio` of all the
    channels of `groups`, the lowest first, none below `min_channels` in a group."""
    if not groups:
        return {}
    names, values = [], []
    for g in groups:
        s = scores[g.name]
        if normalize == "mean" and s.mean() > 0:
            s = s / s.mean()
        names.append(np.full(g.width, g.index))
        values.append(s)
    owner, values = np.concatenate(names), np.concatenate(values)
    budget = math.floor(ratio * len(values))
    room = {g.index: max(g.width - min_channels, 0) for g in groups}
    removed = dict.fromkeys(room, 0)
    for i in np.argsort(values, kind="stable"):
        if budget == 0:
            break
        if removed[owner[i]] < room[owner[i]]:
            removed[owner[i]] += 1
            budget -= 1
    return {g.name: removed[g.index] for g in groups}
