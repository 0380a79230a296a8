"""trace(): open custom layers and subclassed models into ordinary Functional graphs of the same layer objects.

Keras 3 layers and `keras.ops` accept symbolic `KerasTensor`s, so the `call` of a custom layer (or of a subclassed
`keras.Model`) can be run on `keras.Input`s: its inner layers and ops then record ordinary graph nodes. A custom
layer opened this way becomes a nested Functional sub-model named like the layer, whose nodes are the layer's own
sub-layers (the same objects: weights are shared, nothing is copied), so its inner layers get paths such as
`block1/conv`. Opening is recursive: custom layers inside an opened layer are opened in turn.

A trace is used only if it computes what the original computes: every opened layer (and a traced subclassed model
as a whole) is run next to its trace on random inputs, in inference and in training mode (random seeds and
statistics such as BatchNorm's moving means are restored after each run, so the caller's model is left as it was),
and the two must agree. A layer that cannot be opened stays a closed node — a boundary for the channel graph — and
`OpenedModel.closed` says why, naming the layer and the first line of what failed. Layers that own weights of their
own (used directly in `call`, not through sub-layers) are never opened: a slim copy could not slice them.
"""

import dataclasses
import inspect
import re

import keras
import numpy as np
from keras import tree

from tfprune.errors import UnsupportedModelError
from tfprune.graph import keras_nodes
from tfprune.graph.keras_nodes import is_graph_model, model_inputs, run_nodes
from tfprune.graph.layer_configs import layer_config
from tfprune.graph.rules import Boundary, rule_for

# Outputs of an opened layer and of its trace may differ by float rounding only: |a - b| <= TOLERANCE * max(1, |a|).
TOLERANCE = 1e-4
_BATCH = 2
_UNKNOWN_SIZE = 32
_OPEN_SIZES = (32, 64, 128, 224)  # tried in turn for the sizes a model leaves open, when checking its trace
UNTRACED = "its call could not be traced"
UNSEEDED = ("its call draws random numbers without a seed (a keras.random op with seed=None), which no trace can "
            "reproduce. Draw them with a Keras layer held by the layer and called with training=training "
            "(keras.layers.Dropout, GaussianNoise, GaussianDropout): its seed generator is a variable tfprune can "
            "restore")


@dataclasses.dataclass
class OpenedModel:
    """The graph model tfprune reads for a model, and the layers it could not open.

    Attributes:
        model: a Functional (or Sequential) model of the caller's own layer objects; the caller's model itself
            when there was nothing to open.
        closed: `{layer path: reason}` for every custom layer left closed (a boundary), reasons naming the layer.
        channelwise: the paths of closed layers shown to pass channels through unchanged (see
            `_Opener.is_channelwise`): the channel graph treats them as pass-through layers.
        traced: whether anything was opened (`model` is then a new Functional model).
    """

    model: keras.Model
    closed: dict
    channelwise: set
    traced: bool


def trace(model, input_shape=None, seed=0):
    """A Functional model that computes what `model` computes, with its custom layers opened into graph nodes.

    Custom layers that no tfprune rule understands are opened recursively into nested Functional sub-models named
    like the layer (inner paths such as `block1/conv`); a subclassed `keras.Model` is traced from its `call` into a
    Functional model of the same name. The trace reuses the caller's layer objects: weights are shared, nothing is
    copied, and the model is not modified (tracing only records new call nodes on its layers, as any functional use
    of a layer does). Every opened layer is checked against its trace on random inputs in inference and training
    mode; a layer whose trace fails or disagrees stays closed (see `ChannelGraph` for its reason).

    `tfprune.ChannelGraph`, `plan`, `mask`, `rebuild`, `prune`, `count_macs` and `summary` trace a model themselves
    when they need to; tracing once and passing the result saves that work on models with many custom layers.

    Args:
        model: a built `keras.Model` of any kind (Functional, Sequential or subclassed), or a subclassed model that
            was never built together with `input_shape`.
        input_shape: the shape of one input example without the batch axis, e.g. `(32, 32, 3)` (a list or dict of
            shapes for several inputs). Required for a subclassed model that was never built; for other models it
            only sets the size of the random inputs used for checking, where the model leaves sizes open.
        seed: seed of the random inputs used for checking.

    Returns:
        A Functional `keras.Model` (the model itself when it is Functional with nothing to open, and a Sequential
        model's own graph for a Sequential model with nothing to open).

    Raises:
        UnsupportedModelError: for a subclassed model that was never built and got no `input_shape`, whose `call`
            needs arguments tfprune cannot invent, or whose trace fails or disagrees with it.

    Example:

    >>> import keras, tfprune
    >>> class Block(keras.layers.Layer):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.conv = keras.layers.Conv2D(8, 3, padding="same", name="conv")
    ...     def call(self, x):
    ...         return keras.ops.relu(self.conv(x)) + x
    >>> inputs = keras.Input((8, 8, 8))
    >>> model = keras.Model(inputs, Block(name="block1")(inputs))
    >>> traced = tfprune.trace(model)
    >>> [(layer.name, type(layer).__name__) for layer in traced.layers[1:]]  # the custom layer, opened
    [('block1', 'Functional')]
    >>> "block1/conv" in tfprune.ChannelGraph(traced).layers
    True
    """
    opened = open_model(model, input_shape=input_shape, seed=seed)
    result = opened.model
    if isinstance(result, keras.Sequential):
        return keras_nodes.functional_of(result)
    return result


def open_model(model, input_shape=None, seed=0) -> OpenedModel:
    """The graph model to read for `model` (see `trace`) and the reasons of the layers left closed."""
    return _Opener(seed).open(model, input_shape)


class _Opener:
    """Opens a model in two passes: symbolically first, then, only if the whole trace disagrees with the model,
    layer by layer on real values, to find and close the layers whose traces disagree."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.closed = {}
        self.channelwise = set()
        self.checking = False  # the second pass: every opened layer is checked against its trace
        self.traces = {}  # id(layer) -> (its opened trace, the shapes and constants of the call it was made for)
        self.never_open = {}  # id(layer) -> reason, for layers called in ways that one trace cannot cover
        self.shapes = {}  # id(layer) -> input shapes to trace it with, for layers called on several sizes

    def open_all(self, model, inputs):
        """`open_graph` from the top; again, without them, when layers turn out to be called in different ways."""
        while True:
            self.closed, self.channelwise, self.traces = {}, set(), {}
            try:
                return self.open_graph(model, inputs, prefix="")
            except _CalledDifferently:
                continue

    # ---- the model --------------------------------------------------------------------------------------------

    def open(self, model, input_shape):
        if not isinstance(model, keras.Model):
            raise UnsupportedModelError(f"Expected a keras.Model (Functional, Sequential or subclassed), got "
                                        f"{type(model).__name__}.")
        if not is_graph_model(model):
            return self.open_subclassed(model, input_shape)
        keras_nodes.functional_of(model)  # raises for a Sequential model without an input shape, with the reason
        opened = self.open_all(model, model_inputs(model))
        if opened is None:
            return OpenedModel(model, self.closed, self.channelwise, False)
        values = self.example_inputs(model, input_shape)
        packed = keras_nodes.pack_like_inputs(model, values)
        if self.disagreement(model, (packed,), {}, opened, packed):
            opened = self.open_checked(model, values)
        return OpenedModel(opened or model, self.closed, self.channelwise, opened is not None)

    def open_checked(self, model, values):
        """The second pass: open again, checking every opened layer on the values it sees in the model."""
        self.checking = True
        return self.open_all(model, values)

    def open_subclassed(self, model, input_shape):
        name = f"'{model.name}' ({type(model).__name__})"
        structure = _input_structure(model, input_shape)
        if structure is None:
            raise UnsupportedModelError(
                f"Subclassed model {name} was never built, so the shapes of its inputs are unknown. Build it "
                "first (call it on a batch of data, or model.build(input_shape)), or give the shape of one input "
                "example: tfprune.trace(model, input_shape=(224, 224, 3)).")
        _check_call_arguments(model, name)
        inputs = []
        for i, (key, (shape, dtype)) in enumerate(structure):
            input_name = key if isinstance(key, str) else (model.name + "_input" + (f"_{i}" if i else ""))
            inputs.append(keras.Input(batch_shape=(None, *shape), dtype=dtype, name=input_name))
        packed = _pack_inputs(structure, inputs)
        try:
            raw = keras.Model(packed, model.call(packed), name=model.name)
        except Exception as e:  # noqa: BLE001 - any failure of the user's call is reported with its first line
            if _draws_unseeded(e):
                raise UnsupportedModelError(f"Cannot trace subclassed model {name}: {_unseeded_reason(e)}.") from e
            raise UnsupportedModelError(f"Cannot trace subclassed model {name}: its call does not run on symbolic "
                                        f"inputs ({first_line(e)}). Write it with Keras layers and keras.ops, or "
                                        "as a Functional model.") from e
        values = [self.random(tuple(t.shape), t.dtype) for t in model_inputs(raw)]
        packed_values = _pack_inputs(structure, values)
        traced = self.open_all(raw, model_inputs(raw)) or raw
        problem = self.disagreement(model, (packed_values,), {}, traced, packed_values)
        if problem:
            traced = self.open_checked(raw, values) or raw
            problem = self.disagreement(model, (packed_values,), {}, traced, packed_values)
        if problem:
            random = [f"'{path}': {why}" for path, why in self.closed.items() if UNSEEDED in why]
            if UNSEEDED in problem and not random:
                raise UnsupportedModelError(f"Cannot trace subclassed model {name}: {problem}.")
            if random:
                raise UnsupportedModelError(f"Cannot trace subclassed model {name}: layer {'; layer '.join(random)}.")
            raise UnsupportedModelError(f"The trace of subclassed model {name} does not compute what the model "
                                        f"computes: {problem}. tfprune cannot read this model.")
        return OpenedModel(traced, self.closed, self.channelwise, True)

    def example_inputs(self, model, input_shape):
        """Random inputs the graph model runs on: sizes it leaves open are `input_shape`'s, or the first of 32, 64,
        128, 224 it accepts."""
        tensors = model_inputs(model)
        shapes = [tuple(t.shape[1:]) for t in tensors]
        if input_shape is not None:
            given = _flat_shapes(input_shape)
            if len(given) != len(shapes) or any(len(g) != len(s) or any(a is not None and a != b for a, b in
                                                                           zip(s, g, strict=True))
                                                for g, s in zip(given, shapes, strict=True)):
                raise ValueError(f"input_shape {input_shape} does not fit the model's inputs {shapes}.")
            return [self.random((None, *s), t.dtype) for s, t in zip(given, tensors, strict=True)]
        if not any(None in s for s in shapes):
            return [self.random((None, *s), t.dtype) for s, t in zip(shapes, tensors, strict=True)]
        error = None
        for size in _OPEN_SIZES:
            values = [self.random((None, *s), t.dtype, size) for s, t in zip(shapes, tensors, strict=True)]
            try:
                model(keras_nodes.pack_like_inputs(model, values), training=False)
                return values
            except Exception as e:  # noqa: BLE001 - try a larger size
                error = e
        raise UnsupportedModelError(
            f"Cannot check the trace of '{model.name}': the model does not run on random inputs of shape "
            f"{[tuple(v.shape) for v in values]} ({first_line(error)}). Give the input size: "
            "tfprune.trace(model, input_shape=(224, 224, 3)), and use the trace.")

    def random(self, shape, dtype, unknown_size=None):
        shape = (_BATCH, *[(unknown_size or _UNKNOWN_SIZE) if d is None else d for d in shape[1:]])
        if "int" in str(dtype) or "bool" in str(dtype):
            return keras.ops.convert_to_tensor(np.zeros(shape), dtype=dtype)
        return keras.ops.convert_to_tensor(self.rng.standard_normal(shape).astype("float32"), dtype=dtype)

    # ---- the graph --------------------------------------------------------------------------------------------

    def open_graph(self, model, inputs, prefix):
        """Open the custom layers of a graph model; a new Functional model, or None if none was opened.

        `inputs` are the model's own Inputs (symbolic pass) or real values (checking pass, where every opened
        layer is compared with its trace on the values it sees)."""
        replacements = {}

        def call(node, values):
            op = node.operation
            path = prefix + op.name
            tensors = [values[id(t)] for t in node.arguments.keras_tensors]
            if is_graph_model(op):
                inner = self.open_graph(op, tensors, path + "/")
                specific = self.specialised(model, node, path)
                if specific is not None:  # opened again at the sizes it is called with
                    inner = self.open_graph(specific, tensors if self.checking else model_inputs(specific),
                                            path + "/") or specific
                if inner is not None:
                    replacements[id(node)] = inner
            elif self.openable(op, path):
                opened = self.open_layer(op, node, path, tensors)
                if opened is not None:
                    replacements[id(node)] = opened
                elif self.is_channelwise(op, node, tensors):
                    self.channelwise.add(path)
            elif path in self.closed and self.is_channelwise(op, node, tensors):
                self.channelwise.add(path)
            if not self.checking:
                return list(node.outputs)
            args, kwargs = node.arguments.fill_in(values)
            if isinstance(op, keras.layers.Layer):
                kwargs = {**kwargs, "training": False}
            return tree.flatten(op(*args, **kwargs))

        run_nodes(model, inputs, call)
        if not replacements:
            return None
        return _replay(model, replacements)

    def specialised(self, model, node, path):
        """The sub-model of `node` replayed on Inputs of the sizes `model` calls it with, when some of its layers
        could not be traced for sizes it leaves open (KerasHub's backbones take any sequence length; a decoder
        block's causal mask needs it); None otherwise. Its closed layers and the traces of its layers are then
        forgotten, to be opened anew at those sizes (a trace kept from the first opening would leave its Inputs
        open, and the reasons of the layers closed inside it would be lost)."""
        sub, prefix = node.operation, path + "/"
        untraced = [p for p, why in self.closed.items() if p.startswith(prefix) and why.startswith(UNTRACED)]
        if not untraced or sum(n.operation is sub for n in keras_nodes.call_nodes(model)) != 1:
            return None
        own = [tuple(t.shape) for t in model_inputs(sub)]
        given = [tuple(t.shape) for t in node.arguments.keras_tensors]
        if len(own) != len(given) or all(
                len(a) != len(b) or all(x is not None or y is None for x, y in zip(a[1:], b[1:], strict=True))
                for a, b in zip(own, given, strict=True)):
            return None
        shapes = [(a[0], *(y if x is None else x for x, y in zip(a[1:], b[1:], strict=True)))
                  if len(a) == len(b) else a for a, b in zip(own, given, strict=True)]
        for p in [p for p in self.closed if p.startswith(prefix)]:
            del self.closed[p]
        self.channelwise = {p for p in self.channelwise if not p.startswith(prefix)}
        for layer in sub._flatten_layers(include_self=False):
            self.traces.pop(id(layer), None)
            self.shapes.pop(id(layer), None)
        return _replay(sub, {}, shapes)

    def openable(self, op, path):
        """A layer no rule understands (a custom layer, a Lambda) and that holds no weights of its own, or an
        `Activation` of a function a `.keras` file cannot name (see `unsaveable_activation`)."""
        if not isinstance(op, keras.layers.Layer):
            return False
        if unsaveable_activation(op):
            return True
        if not isinstance(rule_for(op), Boundary):
            return False
        if id(op) in self.never_open:
            self.closed[path] = self.never_open[id(op)]
            return False
        own = keras_nodes.own_variables(op)
        if own:
            names = ", ".join(sorted({v.name for v in own})[:3])
            self.closed[path] = f"holds weights of its own ({names}) that its call uses directly, so it is not opened"
            return False
        unconfigured = _without_config(op)
        if unconfigured:
            self.closed[path] = (f"its sub-layer '{unconfigured[0].name}' ({type(unconfigured[0]).__name__}) has no "
                                 f"config to copy it from ({first_line(unconfigured[1])}), so it is not opened")
            return False
        return True

    def open_layer(self, op, node, path, tensors):
        """The trace of one call of a custom layer (checked in the checking pass), or None with the reason in
        `closed`."""
        shapes = self.shapes.get(id(op)) or [tuple(t.shape) for t in node.arguments.keras_tensors]
        constants = repr([x for x in tree.flatten((node.arguments.args, node.arguments.kwargs))
                          if not isinstance(x, keras.KerasTensor)])
        if id(op) in self.traces:  # a layer called again: the same trace (one sub-model, one name) if it fits
            inner, (first_shapes, first_constants) = self.traces[id(op)]
            here = [tuple(t.shape) for t in node.arguments.keras_tensors]
            if first_constants != constants or len(here) != len(first_shapes) or any(
                    len(a) != len(b) for a, b in zip(here, first_shapes, strict=True)):
                self.never_open[id(op)] = ("is called more than once with different arguments, which one trace "
                                           "cannot cover")
                raise _CalledDifferently
            merged = [tuple(None if x != y else x for x, y in zip(a, b, strict=True))
                      for a, b in zip(here, first_shapes, strict=True)]
            if merged != first_shapes:  # e.g. a head called on every level of a feature pyramid
                self.shapes[id(op)] = merged
                raise _CalledDifferently  # trace it again, for inputs of any size along the differing axes
        else:
            try:
                raw = _trace_dense_if_need_be(op, node, shapes)
            except Exception as e:  # noqa: BLE001 - any failure of the layer's call closes it, with its reason
                self.closed[path] = (_unseeded_reason(e) if _draws_unseeded(e) else
                                     f"{UNTRACED} ({first_line(e)})")
                return None
            inner_inputs = tensors if self.checking else model_inputs(raw)
            try:
                inner = self.open_graph(raw, inner_inputs, path + "/") or raw
            except _CalledDifferently:
                raise
            except Exception as e:  # noqa: BLE001 - the trace cannot run on the values the layer itself runs on
                self.never_open[id(op)] = f"its trace fails on real inputs ({first_line(e)})"
                raise _CalledDifferently from e
            self.traces[id(op)] = (inner, (shapes, constants))
        if not self.checking:
            return inner
        args, kwargs = node.arguments.fill_in(dict(zip((id(t) for t in node.arguments.keras_tensors), tensors,
                                                       strict=True)))
        problem = self.disagreement(op, args, kwargs, inner, tensors if len(tensors) > 1 else tensors[0])
        if problem:
            why = problem if UNSEEDED in problem else f"its trace does not compute what the layer computes: {problem}"
            # Other calls of the layer may already use the trace: open again with the layer closed everywhere.
            self.never_open[id(op)] = why
            raise _CalledDifferently
        return inner

    def is_channelwise(self, op, node, tensors):
        """Whether a closed layer provably leaves channels where they are: one input and one output of the same
        shape, no weight with an axis as long as the channels, output channel c depending on input channel c
        alone, the same function for every channel (outputs permute with the inputs' channels), in inference and
        training mode. Such a layer (a learnable scalar affine, a custom activation) passes channels through."""
        if len(node.arguments.keras_tensors) != 1 or len(node.outputs) != 1:
            return False
        shape = tuple(node.outputs[0].shape)
        if shape != tuple(node.arguments.keras_tensors[0].shape) or len(shape) < 2 or shape[-1] in (None, 1):
            return False
        width = shape[-1]
        if any(width in tuple(v.shape) for v in op.weights):
            return False
        x = keras.ops.convert_to_numpy(self.random(shape, "float32"))
        permutation = self.rng.permutation(width)
        changed = x.copy()
        changed[..., 0] = self.rng.standard_normal(changed.shape[:-1])
        args, kwargs = node.arguments.fill_in({id(node.arguments.keras_tensors[0]): None})
        position = next(i for i, a in enumerate(args) if a is None) if None in args else None
        if position is None:
            return False
        variables = list(op.variables)
        saved = [keras.ops.convert_to_numpy(v) for v in variables]

        def run(value, training):
            try:
                arguments = [*args[:position], keras.ops.convert_to_tensor(value), *args[position + 1:]]
                return keras.ops.convert_to_numpy(op(*arguments, **{**kwargs, "training": training}))
            finally:
                for v, old in zip(variables, saved, strict=True):
                    v.assign(old)

        try:
            for training in (False, True):
                y = run(x, training)
                if _compare([y[..., permutation]], [run(x[..., permutation], training)]):
                    return False
                if _compare([y[..., 1:]], [run(changed, training)[..., 1:]]):
                    return False
        except Exception:  # noqa: BLE001 - a layer that cannot be run on its own is not shown to be channelwise
            return False
        return True

    def disagreement(self, original, args, kwargs, traced, traced_inputs):
        """Why `traced(traced_inputs)` differs from `original(*args, **kwargs)` in inference or training mode, or
        None if they agree. Variables (random seed states, moving statistics) are restored after every run."""
        variables = list(original.variables)
        saved = [keras.ops.convert_to_numpy(v) for v in variables]

        def restore():
            for v, value in zip(variables, saved, strict=True):
                v.assign(value)

        for training in (False, True):
            try:
                try:
                    expected = tree.flatten(original(*args, **{**kwargs, "training": training}))
                finally:
                    restore()
                try:
                    actual = tree.flatten(traced(traced_inputs, training=training))
                finally:
                    restore()
            except Exception as e:  # noqa: BLE001 - the trace cannot run where the original can
                return f"in {'training' if training else 'inference'} mode it fails ({first_line(e)})"
            problem = _compare(expected, actual)
            if problem:
                mode = "training" if training else "inference"
                try:
                    again = tree.flatten(original(*args, **{**kwargs, "training": training}))
                finally:
                    restore()
                if _compare(expected, again):  # not even the layer itself repeats its result
                    return (f"in {mode} mode it gives different outputs on two calls with the same inputs and "
                            f"weights: {UNSEEDED}")
                return f"in {mode} mode {problem}"
        return None


def _without_config(layer):
    """`(sub-layer, error)` for the first sub-layer holding weights of its own that has no config, or None.

    Opening a layer makes its sub-layers nodes of the graph; those with weights of their own are never opened in
    turn, so `rebuild` copies them from their configs (`layer_config`: KerasHub's Gemma blocks make their
    `RMSNormalization` with a dtype policy object, for which Keras records no config, and `layer_config` recovers
    it). A layer holding one whose config cannot be had stays closed, and is copied whole."""
    for sub in layer._flatten_layers(include_self=False):
        if keras_nodes.own_variables(sub) and not is_graph_model(sub):
            try:
                layer_config(sub)
            except Exception as e:  # noqa: BLE001 - any failure: the sub-layer cannot be copied
                return sub, e
    return None


def unsaveable_activation(layer):
    """Whether `layer` is a `keras.layers.Activation` of a function that a `.keras` file cannot name: neither a
    Keras activation nor registered with `keras.saving.register_keras_serializable`.

    A custom layer may make one from a plain function of its module and save the function's name in its own config
    (KerasHub's CLIP blocks: `Activation(quick_gelu)`, saved as "quick_gelu"); once the layer is opened, the
    `Activation` is a node of the trace, and a slim model holding it would save but not load. Opened in turn, the
    function becomes the `keras.ops` it calls, which save like any op."""
    if type(layer) is not keras.layers.Activation:
        return False
    function = layer.activation
    try:
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(function))
    except Exception:  # noqa: BLE001 - whatever the reason, a file could not name it
        return True
    return restored is not function


class _CalledDifferently(Exception):
    """A layer opened at one call turned out to be called differently elsewhere: open the model again without it."""


# ---- helpers ---------------------------------------------------------------------------------------------------


class ConstantOutputError(ValueError):
    """A layer's call returned no symbolic tensor: its outputs depend on its weights and its inputs' shapes alone."""


def trace_call(op, node, shapes=None, dense=False):
    """Run `op.call` on fresh Inputs shaped like one of its calls (or like `shapes`, one per input tensor): a
    Functional model named like the layer, whose nodes are the layer's own sub-layers and ops. With `dense`, the
    Inputs are dense even where Keras marks a tensor sparse (it marks a tensor times a constant sparse).

    A call that fails on Inputs of unknown batch size is traced again on a batch of one and replayed for any batch
    size (see `_with_batch_of_any_size`); if that fails too, the first failure is raised."""
    shapes = [tuple(t.shape) for t in node.arguments.keras_tensors] if shapes is None else \
        [tuple(s) for s in shapes]
    try:
        return _with_batch_reshapes(_trace_call(op, node, shapes, dense))
    except ConstantOutputError:
        raise
    except Exception as e:
        if not any(s and s[0] is None for s in shapes):
            raise
        try:
            raw = _trace_call(op, node, [(1, *s[1:]) if s and s[0] is None else s for s in shapes], dense)
        except Exception:  # noqa: BLE001 - the first failure says more
            raise e from None
        return _with_batch_of_any_size(raw, shapes)


def _trace_dense_if_need_be(op, node, shapes):
    """`trace_call` on Inputs as sparse as the call's tensors, or, if that fails where some are sparse, on dense
    ones. Keras marks a tensor times a constant sparse (KerasHub's Gemma scales its embeddings by sqrt(hidden_dim)
    before the first decoder block), and a layer whose call reduces it (an `RMSNormalization`'s `ops.mean`) cannot
    be traced on a sparse Input; the dense trace is then checked against the layer like any other."""
    try:
        return trace_call(op, node, shapes=shapes)
    except ConstantOutputError:
        raise
    except Exception:
        if not any(t.sparse for t in node.arguments.keras_tensors):
            raise
        return trace_call(op, node, shapes=shapes, dense=True)


def _trace_call(op, node, shapes, dense):
    # One Input per tensor argument, even when a call passes the same tensor twice (`attention(x, x)`): the trace
    # then takes as many tensors as the layer's call does, and the graph gives both the same channels.
    inputs = [keras.Input(batch_shape=shapes[i], dtype=t.dtype, sparse=t.sparse and not dense,
                          name=f"{op.name}_input" + (f"_{i}" if i else ""))
              for i, t in enumerate(node.arguments.keras_tensors)]
    positions = iter(inputs)
    args, kwargs = node.arguments.convert(lambda x: next(positions) if isinstance(x, keras.KerasTensor) else x)
    if next(positions, None) is not None:
        raise ValueError("its call arguments could not be matched to its input tensors")
    parameters = inspect.signature(op.call).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        # `training` (and `mask`) reach Layer.__call__ as call-context arguments even when `call` does not take them.
        kwargs = {k: v for k, v in kwargs.items() if k in parameters or k not in ("training", "mask")}
    outputs = tree.flatten(op.call(*args, **kwargs))
    if not any(isinstance(out, keras.KerasTensor) for out in outputs):
        raise ConstantOutputError("its call returned no symbolic tensor")
    if len(outputs) != len(node.outputs):
        raise ValueError(f"its call returned {len(outputs)} tensors on symbolic inputs, {len(node.outputs)} in the "
                         "model")
    for out, expected in zip(outputs, node.outputs, strict=True):
        if not isinstance(out, keras.KerasTensor):
            raise ValueError(f"its call returned a {type(out).__name__}, not a symbolic tensor")
        if len(out.shape) != len(expected.shape) or any(a is not None and b is not None and a != b for a, b in
                                                        zip(out.shape, expected.shape, strict=True)):
            raise ValueError(f"its call returned shape {tuple(out.shape)} on symbolic inputs, "
                             f"{tuple(expected.shape)} in the model")
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                       name=op.name)


def _with_batch_of_any_size(model, shapes):
    """A model traced on a batch of one, replayed on Inputs of `shapes` again (batch size None).

    Some calls need the batch size as a number: KerasHub's decoders broadcast a causal mask, built from
    `keras.ops.arange`, to `(ops.shape(x)[0], T, T)`, which fails when the batch size is None. On a batch of one
    the mask is a constant of batch 1, which broadcasts against any batch; a reshape to `(1, ...)` of a tensor of
    batch 1 is the layer's reshape to `(batch, ...)`, and becomes a `keras.layers.Reshape` of the other axes. What
    such a trace gets wrong for larger batches (a constant of batch 1 concatenated to the batch) the check of every
    trace against its layer on batches of two finds, and the layer then stays closed."""
    from keras.src.ops import numpy as numpy_ops

    replacements = {}
    for node in keras_nodes.call_nodes(model):
        op = node.operation
        source = node.arguments.keras_tensors[0].shape if node.arguments.keras_tensors else ()
        if isinstance(op, numpy_ops.Reshape) and tuple(op.newshape)[:1] == (1,) and tuple(source)[:1] == (1,):
            replacements[id(node)] = _rest_reshape(op, tuple(op.newshape))
    return _replay(model, replacements, shapes)


def _rest_reshape(op, newshape):
    """A `keras.layers.Reshape` of every axis but the batch axis, for `keras.ops.reshape(x, newshape)`."""
    if sum(d is None or d == -1 for d in newshape[1:]) > 1:
        raise ValueError(f"it reshapes to {newshape}, more than one size known only at run time on an axis "
                         "other than the batch axis; give them from the layer's configuration instead")
    return keras.layers.Reshape(tuple(-1 if d is None else d for d in newshape[1:]), name=op.name)


def _with_batch_reshapes(model):
    """`model` with every `keras.ops.reshape` to `(batch, ...)` made a `keras.layers.Reshape` of the other axes.

    `ops.shape(x)[0]` is None on symbolic inputs, so a layer that reshapes to `(ops.shape(x)[0], -1, d)` (the
    idiom of Keras's ViT example) records a reshape to `(None, -1, d)`, which no real tensor can take. Keeping the
    batch axis and reshaping the rest is what the layer's call does on real inputs (the checking pass compares them).
    One size left unknown on another axis (`ops.reshape(y, ops.shape(x))` after an `EinsumDense`, whose declared
    output leaves its sequence axis open) is the one the element count gives: -1. Two cannot be recovered: the layer
    is then not traced, with that reason."""
    from keras.src.ops import numpy as numpy_ops

    replacements = {}
    for node in keras_nodes.call_nodes(model):
        op = node.operation
        if isinstance(op, numpy_ops.Reshape) and None in tuple(op.newshape):
            replacements[id(node)] = _rest_reshape(op, tuple(op.newshape))
    return _replay(model, replacements) if replacements else model


def _replay(model, replacements, shapes=None):
    """`model`'s graph called anew on fresh Inputs, with some call nodes replaced by opened sub-models (or
    layers); `shapes`, one per input, gives the Inputs other shapes than the model's."""
    tensors = model_inputs(model)
    shapes = shapes or [tuple(t.shape) for t in tensors]
    inputs = [keras.Input(batch_shape=tuple(shape), dtype=t.dtype, sparse=t.sparse,
                          name=t._keras_history.operation.name) for t, shape in zip(tensors, shapes, strict=True)]

    def call(node, tensors):
        sub = replacements.get(id(node))
        if sub is not None:
            ins = [tensors[id(t)] for t in node.arguments.keras_tensors]
            if is_graph_model(node.operation):  # an opened sub-model takes its inputs as the original did (a dict)
                return tree.flatten(sub(keras_nodes.pack_like_inputs(sub, ins)))
            return tree.flatten(sub(ins if len(ins) > 1 else ins[0]))
        args, kwargs = node.arguments.fill_in(tensors)
        return tree.flatten(node.operation(*args, **kwargs))

    outputs = run_nodes(model, inputs, call)
    return keras.Model(keras_nodes.pack_like_inputs(model, inputs), keras_nodes.pack_like_outputs(model, outputs),
                       name=model.name)


def _compare(expected, actual):
    if len(expected) != len(actual):
        return f"gives {len(actual)} outputs instead of {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        e, a = keras.ops.convert_to_numpy(e), keras.ops.convert_to_numpy(a)
        if e.shape != a.shape:
            return f"output {i} has shape {a.shape} instead of {e.shape}"
        if not np.issubdtype(e.dtype, np.number):
            if not np.array_equal(e, a):
                return f"output {i} differs"
            continue
        e, a = e.astype(np.float64), a.astype(np.float64)
        if not (np.isfinite(e) == np.isfinite(a)).all():
            return f"output {i} differs in where it is finite"
        finite = np.isfinite(e)
        if finite.any():
            scale = max(1.0, float(np.abs(e[finite]).max()))
            worst = float(np.abs(e[finite] - a[finite]).max()) / scale
            if worst > TOLERANCE:
                return f"output {i} differs by {worst:.2g} (relative to its scale)"
    return None


def first_line(error):
    """`Type: first line of the message`, past the line Keras puts before a layer's own error."""
    text = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines() if line.strip()]
    if len(text) > 1 and text[0].startswith("Exception encountered when calling"):
        text = text[1:]
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _draws_unseeded(error):
    """Whether a symbolic call failed because it draws random numbers without a seed (JAX refuses it when tracing;
    TensorFlow lets it run and the trace then disagrees, see `UNSEEDED`)."""
    return "[JAX RNG]" in str(error)


def _unseeded_reason(error):
    layer = re.search(r"of '([^']+)' \(of type (\w+)\)", str(error))
    where = f" (in layer '{layer.group(1)}' ({layer.group(2)}))" if layer else ""
    return f"it gives different outputs on every call{where}: {UNSEEDED}"


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(d is None or isinstance(d, int) for d in value)


def _flat_shapes(input_shape):
    if _is_shape(input_shape):
        return [tuple(input_shape)]
    if isinstance(input_shape, dict):
        return [tuple(s) for s in input_shape.values()]
    return [tuple(s) for s in input_shape]


def _input_structure(model, input_shape):
    """`[(key, (shape without batch, dtype)), ...]` for a subclassed model's inputs, or None when unknown.

    The key is the input's dict key (for dict inputs), else its position."""
    if input_shape is None:
        shapes = getattr(model, "_build_shapes_dict", None)
        if not model.built or not shapes:
            return None
        if len(shapes) != 1:
            raise UnsupportedModelError(
                f"Subclassed model '{model.name}' was built with several call arguments "
                f"({', '.join(k.removesuffix('_shape') for k in shapes)}); tfprune traces models whose call takes "
                "one input structure (a tensor, a list or a dict of tensors).")
        built = next(iter(shapes.values()))
        if _is_shape(built):
            return [(0, (tuple(built[1:]), "float32"))]
        if isinstance(built, dict):
            return [(k, (tuple(s[1:]), "float32")) for k, s in built.items()]
        return [(i, (tuple(s[1:]), "float32")) for i, s in enumerate(built)]
    if _is_shape(input_shape):
        return [(0, (tuple(input_shape), "float32"))]
    if isinstance(input_shape, dict):
        return [(k, (tuple(s), "float32")) for k, s in input_shape.items()]
    if isinstance(input_shape, (list, tuple)) and all(_is_shape(s) for s in input_shape):
        return [(i, (tuple(s), "float32")) for i, s in enumerate(input_shape)]
    raise ValueError(f"input_shape must be a shape without the batch axis, such as (224, 224, 3), or a list or "
                     f"dict of such shapes; got {input_shape!r}.")


def _pack_inputs(structure, flat):
    if len(structure) == 1 and structure[0][0] == 0:
        return flat[0]
    if isinstance(structure[0][0], str):
        return {key: value for (key, _), value in zip(structure, flat, strict=True)}
    return list(flat)


def _check_call_arguments(model, name):
    """Refuse a `call` that needs arguments besides its one input structure, `training` and `mask`."""
    parameters = list(inspect.signature(model.call).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    needed = [p.name for p in parameters[1:] if p.default is p.empty and p.name not in ("training", "mask")
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        raise UnsupportedModelError(f"The call of subclassed model {name} takes no input argument.")
    if needed:
        raise UnsupportedModelError(
            f"The call of subclassed model {name} needs argument(s) {', '.join(repr(n) for n in needed)} besides "
            "its inputs; tfprune cannot invent them. Give them defaults, or trace a model whose call takes only "
            "its inputs (a Functional model can take them as further Inputs).")
