"""Per-channel statistics of the feature maps a model's layers read, measured in one batched inference pass.

**Which tensors.** A group's *post-activation feature maps* are the tensors that the layers consuming the group
read: the inputs of every convolution (plain, grouped, transposed, depthwise, separable) and `Dense` layer whose
input channels belong to the group. For conv→BN→ReLU→conv that is the ReLU output; for conv→BN→ReLU→pool→conv the
pooled map; for a residual stage (channels tied by `Add`s) every tensor the stage's convolutions read — the block
outputs after their ReLU, each counted once however many layers read it. A `Flatten` or `Reshape` right before the
consumer is looked through: the tensor before it is measured, so that a Flatten→Dense group still has its H×W maps.
Positions are mapped to channels with the graph's element→channel map (`ChannelGraph.channels`), so a tensor of a
`Concatenate` feeds each of its groups and a depthwise multiplier's copies feed their channel. An MLP's hidden
neurons are the input of its down projection, like any `Dense` layer's.

**Attention heads.** A `MultiHeadAttention` or `GroupedQueryAttention` reads its query, key and value like a
`Dense` layer reads its input, and its heads and head widths are measured inside the layer, on the tensors its
rule names (`inner_taps`, see `tfprune.graph.rules.attention`), tapped while the layer runs its own `call`
(`tfprune.criteria.layer_insides`): the input of the output projection, (batch, positions, heads, head width) —
each head's attention output, whose slice is zero exactly when the head is removed — gives the heads (and, under
grouped-query attention, the key/value heads: the slices of their query heads) and the value slots of the head
width; the query projection's output gives the key slots (zeroing slot j of every head's query removes that slot's
share of every attention score). A head's "map" is its (positions × head width) output; a head-width slot's is
(positions × heads). Where the key and value widths are one group (`head_dim`), both tensors are measured and
their values pooled, as for a group read by several layers. Channels that no such layer reads (groups reaching
the model output only) are not measured.

**One pass.** The model's graph is walked once (`keras_nodes.run_nodes`, nested sub-models and shared layers
included) inside one compiled function (`tfprune.backends.compile_function`: a `tf.function` on TensorFlow, a
`jax.jit` on JAX): each batch is one call returning small per-channel sums; Python only adds them up. Layers
run in inference mode (`training=False`). `ActivationTaps` keeps the traced functions, so measuring the same model
again (e.g. after masking more channels in place) costs one pass and no retracing (on JAX: one trace per batch
shape).

**Multi-process runs** (`keras.distribution` on JAX): every process measures all of `data` on its own copy of the
weights, not a shard of it, so give every process the same measuring data; the statistics are compared across
processes and a `ValueError` says so if they differ.

**Statistics** (per channel, over every value or map of every measured tensor of the channel):

* `"mean_abs"`: mean |a| over all values (DropNet's and "mean activation"'s metric).
* `"zero_fraction"`: fraction of values exactly 0 (APoZ of Hu et al., 2016; meaningful after ReLU-like activations).
* `"rank"`: mean matrix rank of each example's map (HRank, Lin et al., 2020). 2-D maps are H×W matrices; other maps
  are viewed as matrices with the last spatial axis as columns and all earlier ones stacked as rows, so a Conv1D
  map is 1×L and a `Dense` input 1×1: their rank is 1 if the map is non-zero and 0 otherwise.
* `"taylor"`: mean over examples of |mean over the map's positions of a · ∂L/∂a| (Molchanov et al., 2017), with L the
  per-example loss (the batch's losses are summed, so each example's gradient is its own). Needs labels in the data
  and a loss: `loss=` (a name, a `keras.losses.Loss`, or a callable `(y_true, y_pred)`), else the compiled loss.

**Repeated measurement** (a training-time callback such as DropNet): build the taps once, e.g. in
`on_train_begin`, and call them at every pruning cycle — no retracing, the model is never modified::

    taps = tfprune.criteria.ActivationTaps(model)               # or ActivationTaps(model, graph)
    stats = taps.channel_statistics(data, ("mean_abs",), batch_size=128, verbose=0)
    stats[group.name]["mean_abs"]                                # np.ndarray of shape (group.width,)
"""

import itertools

import keras
import numpy as np
from keras import ops
from keras.src.trainers import data_adapters

from tfprune import backends
from tfprune.criteria import layer_insides
from tfprune.graph import ChannelGraph
from tfprune.graph.keras_nodes import functional_of, is_graph_model, model_inputs, run_nodes
from tfprune.graph.rules import producers, reshaping

STATISTICS = ("mean_abs", "zero_fraction", "rank", "taylor")
_CONSUMER_RULES = (producers.Dense, producers.DepthwiseConv)  # Dense, Conv, ConvTranspose, SeparableConv, Depthwise


class ActivationTaps:
    """Measures per-channel statistics of the feature maps each channel group's consumers read.

    Build it once per model and call `channel_statistics` as often as needed: the graph walk is traced once per
    set of statistics, and each batch is a single graph call. The model is only read (weights changed in place
    between calls, e.g. by `tfprune.mask`, are seen by the next call).

    Args:
        model: a Functional or Sequential Keras model.
        graph: its `ChannelGraph`, if already built (the groups measured are this graph's).

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> taps = ActivationTaps(model)
    >>> stats = taps.channel_statistics(np.ones((5, 8, 8, 3), "float32"), ("mean_abs",))
    >>> stats["conv"]["mean_abs"].shape
    (4,)
    """

    def __init__(self, model, graph=None):
        self.graph = graph or ChannelGraph(model)
        if model is not self.graph.source and model is not self.graph.model:
            raise ValueError("graph was built for another model; pass the ChannelGraph of this model.")
        self.source = model
        self.model = self.graph.model  # the model itself, or its trace (custom layers opened)
        self._functions = {}  # (statistics, loss) -> (compiled function, taps filled at trace time)
        self.traces = 0  # how many times a walk was traced (tests and curious users)

    # ---- the walk --------------------------------------------------------------------------------------------

    def _read(self, node, path):
        """`[(tensor, elems)]`: the inputs of a layer call that its weights read, with their channel elements (a
        convolution's or Dense layer's input; an attention layer's query, key and value)."""
        rule, recorded = self.graph.rules.get(path), self.graph.recorded(path)
        if isinstance(rule, _CONSUMER_RULES) and "in" in recorded:
            return [(node.arguments.keras_tensors[0], recorded["in"])]
        read_inputs = getattr(rule, "read_inputs", None)
        if read_inputs is None:
            return []
        inputs = read_inputs(node.operation, node.arguments.args, node.arguments.kwargs)
        return [(tensor, recorded[side]) for side, tensor in inputs.items() if side in recorded]

    def _looked_through(self, node_input, values, prefix, elems):
        """The tensor before a Flatten/Reshape that feeds a consumer, with its channel elements, if there is one."""
        history = getattr(node_input, "_keras_history", None)
        if history is None:
            return None
        op = history.operation
        path = prefix + op.name
        if not isinstance(self.graph.rules.get(path), reshaping.Reshape):
            return None
        source = op._inbound_nodes[history.node_index].arguments.keras_tensors[0]
        width = source.shape[-1]
        if len(source.shape) < 3 or width is None or id(source) not in values or len(elems) % width:
            return None
        before = elems[:width]
        if not np.array_equal(np.tile(before, len(elems) // width), elems):
            return None
        return values[id(source)], before

    def _walk(self, model, inputs, prefix, taps, hook, count):
        """Run `model` on tensors, appending `(value, elems, view)` for every tensor a consumer reads (once each)
        and every tensor inside a layer that its rule names (`inner_taps`: an attention layer's heads; `view`
        puts the channels of `elems` last, None when they are).

        Every tensor a layer makes goes through `hook(key, value)` (see `backends.gradients_at`); `count` is a
        one-element list numbering the layer calls of the whole walk, nested models included, for the keys.
        """

        def call(node, values):
            op, path = node.operation, prefix + node.operation.name
            if is_graph_model(op):
                return self._walk(op, [values[id(t)] for t in node.arguments.keras_tensors], path + "/", taps, hook,
                                  count)
            for source, elems in self._read(node, path):
                tapped = self._looked_through(source, values, prefix, elems) or (values[id(source)], elems)
                if all(tapped[0] is not value for value, _, _ in taps):
                    taps.append((*tapped, None))
            args, kwargs = node.arguments.fill_in(values)
            if "training" in getattr(op, "_call_context_args", ()):
                kwargs["training"] = False
            count[0] += 1
            inner = getattr(self.graph.rules.get(path), "inner_taps", None)
            with layer_insides.tapping(inner(op) if inner else (), self.graph.recorded(path), hook, str(count[0]),
                                       taps):
                outputs = op(*args, **kwargs)
            return [hook(f"{count[0]}:{i}", value) for i, value in enumerate(keras.tree.flatten(outputs))]

        return run_nodes(model, inputs, call)

    def _function(self, statistics, loss):
        key = (statistics, loss)
        if key in self._functions:
            return self._functions[key]
        taps_info, views = [], []
        needs_gradient = "taylor" in statistics
        loss_fn = _per_example_loss(loss, self.model) if needs_gradient else None

        def measure(x, y):
            inputs = [ops.cast(v, t.dtype) for v, t in zip(keras.tree.flatten(x), model_inputs(self.model),
                                                           strict=True)]

            def forward(hook):
                taps = []
                walk_inputs = [hook(f"input:{i}", v) for i, v in enumerate(inputs)]
                outputs = self._walk(self.model, walk_inputs, "", taps, hook, [0])
                taps_info[:] = [elems for _, elems, _ in taps]
                views[:] = [view or (lambda t: t) for _, _, view in taps]
                return (loss_fn(y, outputs) if needs_gradient else None), [value for value, _, _ in taps]

            if needs_gradient:
                values, grads = backends.gradients_at(forward)
            else:
                values = forward(lambda key, value: value)[1]
                grads = [None] * len(values)
            self.traces += 1
            return [_tap_sums(view(value), None if grad is None else view(grad), statistics)
                    for value, grad, view in zip(values, grads, views, strict=True)]

        self._functions[key] = (backends.compile_function(measure, lambda: self.model.variables), taps_info)
        return self._functions[key]

    # ---- public ----------------------------------------------------------------------------------------------

    def channel_statistics(self, data, statistics=("mean_abs",), batch_size=32, steps=None, verbose=0, loss=None):
        """Per-group, per-channel statistics of the post-activation feature maps over `data`.

        Args:
            data: anything `model.predict` accepts (arrays, a `tf.data.Dataset`, a `keras.utils.PyDataset`, ...),
                or a tuple `(x, y)` / `(x, y, sample_weight)` of those as in `fit`'s `validation_data` (so give
                the inputs of a model with several inputs as a list or dict). Batches of the form `(x, y)` are
                unpacked as `predict` does. "taylor" needs the labels `y`; sample weights are ignored.
            statistics: names from "mean_abs", "zero_fraction", "rank", "taylor" (see the module docstring).
            batch_size: batch size for array data (datasets keep their own batches).
            steps: stop after this many batches (None: all of `data`).
            verbose: 1 shows a progress bar, 0 is silent.
            loss: for "taylor": a loss name, `keras.losses.Loss` or callable `(y_true, y_pred)`; default: the
                model's compiled loss.

        Returns:
            `{group name: {statistic: np.ndarray of shape (group width,)}}` for every group whose channels are all
            read by some convolution, Dense or attention layer (heads and head widths included).
        """
        statistics = _check_statistics(statistics)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be None or an integer >= 1; got {steps!r}.")
        if data is None:
            raise ValueError("channel_statistics needs data: the inputs (and, for 'taylor', labels) to measure on.")
        # Every process of a multi-process keras.distribution run measures all of `data` on its own copy of the
        # weights (no sharding), so that all take the same decisions; `same_on_all_processes` checks it.
        with backends.local_computation():
            sums, taps_info = self._measure(data, statistics, loss, batch_size, steps, verbose)
        stats = self._per_group(sums, taps_info, statistics)
        backends.same_on_all_processes(stats, "The activation statistics measured on each process's data")
        return stats

    def _measure(self, data, statistics, loss, batch_size, steps, verbose):
        function, taps_info = self._function(statistics, loss)
        data_x, data_y, data_weights = (*data, None)[:3] if _is_xy_tuple(data) else (data, None, None)
        adapter = data_adapters.get_data_adapter(x=data_x, y=data_y, sample_weight=data_weights,
                                                 batch_size=batch_size, steps_per_epoch=steps, shuffle=False)
        target = steps if steps is not None else adapter.num_batches
        progress = keras.utils.Progbar(target, verbose=verbose, unit_name="batch") if verbose else None
        sums = None
        for step, batch in enumerate(itertools.islice(adapter.get_numpy_iterator(), steps)):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
            if "taylor" in statistics and y is None:
                raise ValueError("The 'taylor' statistic needs labels: give data as (x, y) arrays or a dataset "
                                 "of (x, y) batches.")
            result = [{k: backends.host_array(v).astype(np.float64) for k, v in tap.items()} for tap in function(x, y)]
            sums = result if sums is None else [{k: s[k] + r[k] for k in s} for s, r in zip(sums, result,
                                                                                              strict=True)]
            if progress:
                progress.update(step + 1)
        if sums is None:
            raise ValueError("data gave no batch to measure on.")
        return sums, list(taps_info)

    def _per_group(self, sums, taps_info, statistics):
        graph = self.graph
        totals = {}  # group index -> {name: array}
        for tap, elems in zip(sums, taps_info, strict=True):
            groups, channels = graph.channels(elems)
            for g in np.unique(groups):
                mine = groups == g
                acc = totals.setdefault(int(g), {k: np.zeros(graph.groups[g].width) for k in tap})
                for k, values in tap.items():
                    values = values if values.ndim else np.full(len(elems), values)
                    np.add.at(acc[k], channels[mine], values[mine])
        out = {}
        for g, acc in totals.items():
            if (acc["values"] == 0).any():
                continue  # some channels of the group are read by no consumer
            out[graph.groups[g].name] = {
                name: acc[name] / acc["maps" if name in ("rank", "taylor") else "values"] for name in statistics}
        return out


def _is_xy_tuple(data):
    """A tuple `(x, y)` or `(x, y, sample_weight)`, as in `validation_data` (not a dataset or a single array)."""
    return isinstance(data, tuple) and len(data) in (2, 3)


def _tap_sums(value, grad, statistics):
    """Per-position sums of one tapped tensor for one batch, and how many values and maps each position has."""
    x = ops.cast(value, "float32")
    shape = ops.shape(x)
    axes = tuple(range(len(x.shape) - 1))
    per_map = ops.reshape(x, (shape[0], -1, shape[-1]))  # (batch, positions, channels)
    maps = ops.cast(shape[0], "float32")
    sums = {"maps": maps, "values": ops.cast(ops.shape(per_map)[1], "float32") * maps}
    if "mean_abs" in statistics:
        sums["mean_abs"] = ops.sum(ops.abs(x), axis=axes)
    if "zero_fraction" in statistics:
        sums["zero_fraction"] = ops.sum(ops.cast(ops.equal(x, 0.0), "float32"), axis=axes)
    if "rank" in statistics:
        sums["rank"] = ops.sum(_map_ranks(x), axis=0)
    if "taylor" in statistics:
        product = per_map * ops.reshape(ops.cast(grad, "float32"), ops.shape(per_map))
        sums["taylor"] = ops.sum(ops.abs(ops.mean(product, axis=1)), axis=0)
    return sums


def _map_ranks(x):
    """Matrix rank of every (example, channel) map of `x` (batch, *spatial, channels), as float32 (batch, channels).

    A singular value counts when it exceeds max(rows, cols) · ε(float32) · σ_max, the tolerance of
    `tf.linalg.matrix_rank` and `torch.linalg.matrix_rank` for float32 maps. Where float64 is available (TensorFlow;
    JAX with `jax_enable_x64`) the singular values are taken as the square roots of the eigenvalues of the float64
    Gram matrix of the smaller side: the same ranks as an SVD, about three times faster on CPU, and float64
    resolves σ² far below that tolerance. Without float64 (JAX by default) they come from a float32 SVD, as in
    `matrix_rank` itself.
    """
    spatial = x.shape[1:-1]
    shape = ops.shape(x)
    cols = spatial[-1] if len(spatial) else 1
    rows = int(np.prod(spatial[:-1])) if all(d is not None for d in spatial[:-1]) else None
    maps = ops.transpose(ops.reshape(x, (shape[0], -1, cols if cols is not None else shape[-2], shape[-1])),
                         (0, 3, 1, 2))  # (batch, channels, rows, cols)
    size = ops.cast(ops.maximum(ops.shape(maps)[-1], ops.shape(maps)[-2]), "float32")
    if backends.float64_available():
        maps = ops.cast(maps, "float64")
        by_columns = rows is not None and cols is not None and cols < rows
        gram = ops.matmul(ops.swapaxes(maps, -1, -2), maps) if by_columns else ops.matmul(
            maps, ops.swapaxes(maps, -1, -2))
        squares = ops.eigh(gram)[0]  # ascending
        tolerance = squares[..., -1:] * ops.square(ops.cast(size, "float64") * np.finfo(np.float32).eps)
        return ops.sum(ops.cast(squares > tolerance, "float32"), axis=-1)
    singular = ops.svd(maps, full_matrices=False, compute_uv=False)  # descending
    tolerance = singular[..., :1] * size * np.finfo(np.float32).eps
    return ops.sum(ops.cast(singular > tolerance, "float32"), axis=-1)


def _check_statistics(statistics):
    if isinstance(statistics, str):
        statistics = (statistics,)
    statistics = tuple(statistics)
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        raise ValueError(f"Unknown statistics {unknown}; choose one or more of {STATISTICS}.")
    return tuple(sorted(set(statistics), key=STATISTICS.index))


def _per_example_loss(loss, model):
    """`f(y, outputs) -> scalar`: the sum over the batch of the per-example loss."""
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError("The 'taylor' statistic needs a loss: compile the model with one, or give it as "
                             "criterion=tfprune.criteria.Taylor(loss=...) to tfprune.plan (loss=... to "
                             "channel_statistics): a name such as 'sparse_categorical_crossentropy', a "
                             "keras.losses.Loss, or a callable (y_true, y_pred).")
    if isinstance(loss, dict | list | tuple):
        raise ValueError("The 'taylor' statistic takes one loss; for a model with several outputs pass "
                         "loss=callable(y_true, y_pred) that combines them.")
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        fn = loss.call  # unreduced: one value per example
    elif callable(loss):
        fn = loss
    else:
        raise ValueError(f"loss must be a name, a keras.losses.Loss or a callable; got {loss!r}.")
    n_outputs = len(functional_of(model).outputs)

    def total(y, outputs):
        predictions = outputs[0] if n_outputs == 1 else keras.tree.pack_sequence_as(
            functional_of(model)._outputs_struct, outputs)
        values = ops.cast(fn(y, predictions), "float32")
        if len(values.shape) == 0:  # an already averaged loss: back to a sum over the batch
            return values * ops.cast(ops.shape(keras.tree.flatten(predictions)[0])[0], "float32")
        return ops.sum(values)

    return total


def channel_statistics(model, data, statistics=("mean_abs",), graph=None, batch_size=32, steps=None, verbose=0,
                       loss=None):
    """Per-group, per-channel statistics of the post-activation feature maps of `model` over `data`.

    A one-off convenience: it builds an `ActivationTaps` (and traces the graph walk) on every call. To measure
    the same model repeatedly, build `ActivationTaps(model, graph)` once and call its `channel_statistics`.
    `model` may also be an `ActivationTaps`, which is then reused.

    Args:
        model: a Functional or Sequential Keras model (read only), or an `ActivationTaps`.
        data, statistics, batch_size, steps, verbose, loss: as in `ActivationTaps.channel_statistics`.
        graph: the model's `ChannelGraph`, if already built.

    Returns:
        `{group name: {statistic: np.ndarray of shape (group width,)}}`.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((6, 6, 1))
    >>> x = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    >>> model.get_layer("conv").set_weights([np.array([[[[1.0, -1.0]]]])])
    >>> stats = channel_statistics(model, np.ones((4, 6, 6, 1), "float32"), ("mean_abs", "zero_fraction"))
    >>> stats["conv"]["mean_abs"].tolist(), stats["conv"]["zero_fraction"].tolist()
    ([1.0, 0.0], [0.0, 1.0])
    """
    taps = model if isinstance(model, ActivationTaps) else ActivationTaps(model, graph)
    return taps.channel_statistics(data, statistics, batch_size=batch_size, steps=steps, verbose=verbose, loss=loss)


__all__ = ["STATISTICS", "ActivationTaps", "channel_statistics"]
