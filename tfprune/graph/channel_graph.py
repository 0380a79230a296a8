"""ChannelGraph: which channel dimensions of a Keras model must be pruned together.

Every channel position of every tensor is an *element*. A layer that creates channels (a convolution, a Dense)
opens a *space* of new elements; a layer that passes channels through hands its input's elements on; a merge
(Add, Multiply, ...) or a shared layer ties the elements at equal positions together. Tied elements form one
*channel*; spaces tied by any channel form one *group*: pruning channel k of a group removes every position in
every tensor whose element belongs to it, and the weights indexed by those positions.
"""

import dataclasses
import inspect

import keras
import numpy as np
from keras import tree
from scipy import sparse
from scipy.sparse import csgraph

from tfprune.errors import PlanError
from tfprune.graph.keras_nodes import is_graph_model, model_inputs, model_outputs, run_nodes
from tfprune.graph.rules import Boundary, NotUnderstood, rule_for
from tfprune.graph.rules.passthrough import CheckedChannelwise
from tfprune.graph.tracing import open_model


@dataclasses.dataclass(frozen=True)
class Member:
    """A layer whose weights or config follow a group's channels: `side` is "in", "out" or ("input", i)."""

    layer: str
    kind: str
    side: object


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """Channels that are pruned together.

    Attributes:
        name: the path of the layer that first creates these channels (stable across copies of a model).
        index: position in `ChannelGraph.groups`.
        width: the number of channels.
        members: the layers whose weights or config follow these channels.
        reasons: why the group may not be pruned (empty when it is prunable).
        spanning: layers that compute over all channels of the group (LayerNormalization, RMSNormalization,
            GroupNormalization, softmax over channels): pruning is allowed but changes the kept channels' values,
            so plans prune such a group only on request (see `ChannelGraph.spanning_groups`).
        blocks: for grouped layers, a block label per channel; every block must keep the same number.
        parts: `((layer path, channel indices), ...)` for layers that see only some of the group's channels (a
            branch of a Concatenate that an Add ties to other channels): each must keep at least one channel, since
            a layer cannot have zero filters.
    """

    name: str
    index: int
    width: int
    members: tuple
    reasons: tuple
    spanning: tuple
    blocks: np.ndarray | None
    parts: tuple = ()

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def n_blocks(self) -> int:
        return 1 if self.blocks is None else int(self.blocks.max()) + 1

    def __repr__(self):
        state = "prunable" if self.prunable else "fixed"
        return f"Group({self.name!r}, width={self.width}, {state}, members={len(self.members)})"


class _CallContext:
    """What a rule sees of one call of a layer, and the only way it changes the graph."""

    def __init__(self, builder, path, node, inputs):
        self._builder = builder
        self._node, self._inputs = node, inputs
        self.path = path
        self.input_shapes = [tuple(t.shape) for t in node.arguments.keras_tensors]
        self.output_shapes = [tuple(t.shape) for t in node.outputs]
        leaves = tree.flatten((node.arguments.args, node.arguments.kwargs))
        self.constant_arguments = [x for x in leaves if not isinstance(x, keras.KerasTensor)]

    def arguments(self, layer):
        """The call's arguments by the names of `layer.call`'s parameters (those given, not the defaults): a
        tensor argument is `(element ids or None, shape)`, any other its value. The shapes of the tensor arguments
        are kept in `ChannelGraph.argument_shapes`."""
        parameters = inspect.signature(layer.call).parameters
        kwargs = self._node.arguments.kwargs
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in parameters}
        try:
            bound = inspect.signature(layer.call).bind_partial(*self._node.arguments.args, **kwargs).arguments
        except TypeError as e:
            raise NotUnderstood(f"its call's arguments do not match its signature ({e})") from None
        elements = {id(t): elems for t, elems in zip(self._node.arguments.keras_tensors, self._inputs, strict=True)}
        named, shapes = {}, {}
        for name, value in bound.items():
            if isinstance(value, keras.KerasTensor):
                named[name] = (elements[id(value)], tuple(value.shape))
                shapes[name] = tuple(value.shape)
            else:
                named[name] = value
        self._builder.argument_shapes.setdefault(self.path, []).append(shapes)
        return named

    def new_space(self, width, name=None, fixed_reason=None):
        return self._builder.new_space(name or self.path, width, fixed_reason)

    def record(self, side, elems):
        self._builder.record(self.path, side, elems)

    def union(self, a, b):
        self._builder.union(a, b)

    def fix(self, elems, reason):
        self._builder.fixed.append((elems, reason))

    def mark_spanning(self, elems):
        self._builder.spanning.append((elems, self.path))

    def require_equal_blocks(self, elems, n_blocks):
        if n_blocks > 1:
            self._builder.blocks.append((elems, n_blocks, self.path))


class _Builder:
    def __init__(self, closed=None, channelwise=()):
        self.closed, self.channelwise = closed or {}, channelwise
        self.space_names, self.space_widths, self.space_start = [], [], {}
        self.size = 0
        self.edges = []
        self.fixed, self.spanning, self.blocks = [], [], []
        self.records = {}
        self.argument_shapes = {}
        self.layers, self.rules, self.submodels = {}, {}, {}
        self.first_path = {}  # {path: the path under which the same layer object was called first}
        self._first_of = {}  # {id(layer or sub-model): its first path}
        self._object_of = {}  # {path: id(layer or sub-model)}
        self._object_records = {}  # {(id(layer or sub-model), side): the elements it recorded first}

    def new_space(self, name, width, fixed_reason=None):
        if name in self.space_start:  # a shared layer called again: same channels
            start = self.space_start[name]
        else:
            start = self.space_start[name] = self.size
            self.space_names.append(name)
            self.space_widths.append(int(width))
            self.size += int(width)
        elems = np.arange(start, start + int(width))
        if fixed_reason:
            self.fixed.append((elems, fixed_reason))
        return elems

    def union(self, a, b):
        if len(a) != len(b):
            raise NotUnderstood(f"ties {len(a)} channels to {len(b)}")
        self.edges.append((a, b))

    def enter(self, op, path):
        """Note that `op` is called under `path`; returns the path it was first called under. A layer object
        called under several paths (shared between a nested sub-model and the model around it) is one set of
        weights: every path's records are tied to the first path's."""
        self._object_of[path] = id(op)
        first = self.first_path[path] = self._first_of.setdefault(id(op), path)
        return first

    def record(self, path, side, elems):
        self.records.setdefault((path, side), elems)
        # A shared layer (called again, here or under another path): its weights see the channels of every call.
        first = self._object_records.setdefault((self._object_of[path], side), elems)
        if first is not elems:
            self.union(first, elems)

    def walk(self, model, inputs, prefix):
        def call(node, elems):
            op, ins = node.operation, [elems[id(t)] for t in node.arguments.keras_tensors]
            if is_graph_model(op):
                return self.call_model(op, prefix + op.name, ins)
            return self.call_layer(op, prefix + op.name, node, ins)

        return run_nodes(model, inputs, call)

    def call_model(self, model, path, ins):
        self.enter(model, path)
        self.submodels[path] = model
        inner = []
        for i, (t, elems) in enumerate(zip(model_inputs(model), ins, strict=True)):
            if elems is None and not _has_channels(t):  # token ids of an open length: no channels to follow
                inner.append(None)
                continue
            if elems is None:
                elems = self.new_space(f"{path}:input{i}", t.shape[-1], f"enters '{path}' untraced")
            self.record(path, ("input", i), elems)
            inner.append(elems)
        return self.walk(model, inner, prefix=path + "/")

    def rule_for(self, op, path):
        rule = rule_for(op)
        if path in self.channelwise:
            return CheckedChannelwise()
        if path in self.closed and isinstance(rule, Boundary):
            return type(rule)(self.closed[path])
        return rule

    def call_layer(self, op, path, node, ins):
        first = self.enter(op, path)
        ctx = _CallContext(self, path, node, ins)
        rule = self.rules.get(path) or self.rules.get(first) or self.rule_for(op, path)
        try:
            outs = rule.propagate(ctx, op, ins)
        except NotUnderstood as why:
            if path in self.rules or first in self.rules:  # understood at an earlier call: keep all its channels
                for (p, _), elems in self.records.items():
                    if self.first_path.get(p) == first:
                        self.fixed.append((elems, f"'{path}' is shared and one of its calls is not understood"))
            rule = rule.closed(str(why))
            outs = rule.propagate(ctx, op, ins)
        self.layers[path], self.rules[path] = op, rule
        return outs


def _has_channels(tensor):
    """Whether a model input has a channel axis of known width (a last axis after the batch axis)."""
    return len(tensor.shape) >= 2 and tensor.shape[-1] is not None


def _source_name(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history else tensor.name


def _relabel_by_first(n_nodes, a, b):
    """Connected components of an undirected graph, numbered in order of their smallest node."""
    adjacency = sparse.coo_matrix((np.ones(len(a), bool), (a, b)), shape=(n_nodes, n_nodes))
    count, labels = csgraph.connected_components(adjacency, directed=False)
    first = np.full(count, n_nodes)
    np.minimum.at(first, labels, np.arange(n_nodes))
    order = np.argsort(first)
    rank = np.empty(count, np.int64)
    rank[order] = np.arange(count)
    return rank[labels], first[order]


class ChannelGraph:
    """The coupled channel groups of a Keras 3 model.

    Custom layers (and a subclassed model's `call`) are opened into graph nodes first, as `tfprune.trace` does;
    a custom layer that cannot be opened faithfully is a boundary whose reason says why.

    Args:
        model: a built `keras.Model`: Functional or Sequential (nested sub-models and shared layers are followed),
            or subclassed (traced from its `call`), or a model returned by `tfprune.trace`. The model is only read.
        prune_outputs: allow pruning groups that reach a model output (by default they are fixed, since the
            caller's outputs would change shape).

    Attributes:
        source: the model given.
        model: the graph model read: `source` itself, or its trace when custom layers were opened (a Functional
            model of the same layer objects; walk this one to follow the paths in `layers`).
        closed: `{layer path: reason}` for the custom layers that could not be opened.
        layers, rules: `{path: layer}` and `{path: rule}` of every call node read (a layer object called under
            several paths is under each of them; see `first_path`).
        argument_shapes: `{path: [{parameter name: shape}, one per call]}` of the tensor arguments of the layers
            whose rule reads its call's arguments by name (attention: "query", "value", "key"), for cost models.

    Example:

    >>> import keras, tfprune
    >>> inputs = keras.Input((16, 16, 3))
    >>> x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    >>> outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    >>> graph = tfprune.ChannelGraph(keras.Model(inputs, outputs))
    >>> [(g.name, g.width) for g in graph.prunable_groups]
    [('conv', 8)]
    """

    def __init__(self, model, prune_outputs=False):
        opened = open_model(model)  # refuses models without a graph it cannot trace, with the reason
        self.source = model  # the model given
        self.model = model = opened.model  # the graph model read: `source` itself, or its trace
        self.closed = opened.closed
        self.prune_outputs = bool(prune_outputs)
        b = _Builder(self.closed, opened.channelwise)
        inputs = []
        for t in model_inputs(model):
            known = _has_channels(t)
            inputs.append(b.new_space(f"input:{_source_name(t)}", t.shape[-1], "model input") if known else None)
        outputs = b.walk(model, inputs, prefix="")
        if not prune_outputs:
            for t, elems in zip(model_outputs(model), outputs, strict=True):
                if elems is not None:
                    b.fixed.append((elems, f"reaches model output '{_source_name(t)}'"))
        self.layers, self.rules, self.submodels = b.layers, b.rules, b.submodels
        self._first_path = b.first_path
        self.argument_shapes = b.argument_shapes
        self._records = {}  # {path: {side: element ids}}
        for (path, side), elems in b.records.items():
            self._records.setdefault(path, {})[side] = elems
        self._build_groups(b)

    # ---- construction -------------------------------------------------------------------------------------

    def _build_groups(self, b):
        a = np.concatenate([e[0] for e in b.edges]) if b.edges else np.zeros(0, np.int64)
        c = np.concatenate([e[1] for e in b.edges]) if b.edges else np.zeros(0, np.int64)
        self._labels, comp_first = _relabel_by_first(b.size, a, c)
        space_of = np.repeat(np.arange(len(b.space_widths)), b.space_widths)
        space_group, group_first_space = _relabel_by_first(len(b.space_widths), space_of[a], space_of[c])
        comp_group = space_group[space_of[comp_first]]
        sorter = np.argsort(comp_group, kind="stable")
        comp_channel = np.empty(len(comp_group), np.int64)
        comp_channel[sorter] = np.arange(len(comp_group)) - np.searchsorted(comp_group[sorter], comp_group[sorter])
        self._comp_group, self._comp_channel = comp_group, comp_channel
        widths = np.bincount(comp_group, minlength=len(group_first_space))

        reasons = [dict() for _ in widths]  # ordered sets
        spanning = [dict() for _ in widths]
        members = [dict() for _ in widths]
        blocks = [None] * len(widths)
        for elems, why in b.fixed:
            for g in self._groups_of(elems):
                reasons[g][why] = None
        for elems, path in b.spanning:
            for g in self._groups_of(elems):
                spanning[g][path] = None
        parts = [dict() for _ in widths]  # {channel subset: first layer path}
        for (path, side), elems in b.records.items():
            kind = type(b.layers.get(path) or b.submodels.get(path)).__name__
            groups, channels = self.channels(elems)
            for g in np.unique(groups):
                members[g][Member(path, kind, side)] = None
                subset = tuple(np.unique(channels[groups == g]).tolist())
                if len(subset) < widths[g]:
                    parts[g].setdefault(subset, path)
        for elems, n_blocks, path in b.blocks:
            comps = self._labels[elems]
            groups = self._groups_of(elems)
            whole = (len(groups) == 1 and len(np.unique(comps)) == len(comps) == widths[groups[0]]
                     and len(comps) % n_blocks == 0)
            if not whole:
                why = f"'{path}' needs {n_blocks} equal blocks of channels that are not one whole group"
                for g in groups:
                    reasons[g][why] = None
                continue
            g = groups[0]
            label = np.empty(widths[g], np.int64)
            label[comp_channel[comps]] = np.arange(len(comps)) // (len(comps) // n_blocks)
            if blocks[g] is not None:
                label = np.unique(blocks[g] * n_blocks + label, return_inverse=True)[1]
            blocks[g] = label
        for g, label in enumerate(blocks):
            if label is not None and len(set(np.bincount(label))) > 1:
                reasons[g]["grouped layers split its channels into blocks of unequal size"] = None

        self.groups = [
            Group(name=b.space_names[first], index=g, width=int(widths[g]), members=tuple(members[g]),
                  reasons=tuple(reasons[g]), spanning=tuple(spanning[g]), blocks=blocks[g],
                  parts=tuple((path, np.array(subset)) for subset, path in parts[g].items()))
            for g, first in enumerate(group_first_space)
        ]
        self._by_name = {group.name: group for group in self.groups}

    def _groups_of(self, elems):
        return np.unique(self._comp_group[self._labels[elems]])

    # ---- queries ------------------------------------------------------------------------------------------

    @property
    def prunable_groups(self):
        """The groups that plans prune unless told otherwise: every prunable group but the channel-spanning ones."""
        return [g for g in self.groups if g.prunable and not g.spanning]

    @property
    def spanning_groups(self):
        """The prunable groups that a layer computes over as a whole (`Group.spanning`: a transformer's hidden width
        through its LayerNorms, channels under a GroupNormalization or a softmax over channels). Pruning them
        changes the kept channels' values, so plans leave them out unless asked: `tfprune.plan(...,
        prune_spanning=True)`, or by naming them (a dict of ratios, a search's or `sensitivity`'s `groups`)."""
        return [g for g in self.groups if g.prunable and g.spanning]

    def __getitem__(self, name) -> Group:
        try:
            return self._by_name[name]
        except KeyError:
            close = [g.name for g in self.groups if name in g.name][:5]
            hint = f" Similar names: {close}." if close else ""
            raise PlanError(f"Model '{self.model.name}' has no channel group named '{name}'.{hint}") from None

    def __contains__(self, name):
        return name in self._by_name

    def __iter__(self):
        return iter(self.groups)

    def __len__(self):
        return len(self.groups)

    def first_path(self, path):
        """The path under which the layer or sub-model at `path` was first called: `path` itself, unless the same
        object is also called under another path (a layer shared between a nested sub-model and the model around
        it, such as a tied embedding's reverse call). Its paths' channels are tied, and `rebuild` copies the object
        once, at its first path."""
        return self._first_path.get(path, path)

    def recorded(self, path):
        """`{side: element ids}` of the channel positions a layer's weights or config follow."""
        return dict(self._records.get(path, {}))

    def channels(self, elems):
        """(group index, channel index) of each position given by element ids."""
        comps = self._labels[elems]
        return self._comp_group[comps], self._comp_channel[comps]

    def channel_keep(self, plan) -> np.ndarray:
        """A keep flag per channel of the whole model (indexed like the internal channel ids) for a plan."""
        keep = np.ones(len(self._comp_group), bool)
        for name, kept in plan.keep.items():
            group = self[name]
            in_group = np.flatnonzero(self._comp_group == group.index)
            drop = np.ones(group.width, bool)
            drop[list(kept)] = False
            keep[in_group[drop[self._comp_channel[in_group]]]] = False
        return keep

    def layer_keep(self, path, channel_keep) -> dict:
        """`{side: keep flag per position}` for the channel positions a layer's weights or config follow."""
        return {side: channel_keep[self._labels[elems]] for side, elems in self.recorded(path).items()}

    def scatter(self, group, elems, values, reduce=np.add):
        """Accumulate per-position `values` into one value per channel of `group` (positions elsewhere ignored)."""
        groups, channels = self.channels(elems)
        mine = groups == group.index
        out = np.zeros(group.width, np.float64)
        reduce.at(out, channels[mine], np.asarray(values, np.float64)[mine])
        return out

    def __str__(self):
        prunable, spanning = self.prunable_groups, self.spanning_groups
        lines = [f"ChannelGraph of '{self.model.name}': {len(self.groups)} groups, {len(prunable)} prunable, "
                 f"{sum(g.width for g in prunable)} prunable channels"
                 + (f", {len(spanning)} more prunable on request (*)" if spanning else "")]
        name_width = max([len(g.name) for g in self.groups] + [5])
        lines.append(f"  {'group':<{name_width}}  {'width':>6}  {'status':<9} members")
        for g in self.groups:
            status = "prunable" if g.prunable else "fixed"
            if g.prunable and g.spanning:
                status = "prunable*"
            shown = ", ".join(f"{m.layer}" for m in g.members[:4]) + (" ..." if len(g.members) > 4 else "")
            line = f"  {g.name:<{name_width}}  {g.width:>6}  {status:<9} {len(g.members)}: {shown}"
            if g.reasons:
                line += f"  [{g.reasons[0]}]"
            lines.append(line)
        if any(g.prunable and g.spanning for g in self.groups):
            lines.append("  * channel-spanning (normalised as a whole): left out of plans unless asked for "
                         "(prune_spanning=True); pruning changes the kept channels' values")
        return "\n".join(lines)
