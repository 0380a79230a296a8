"""rebuild(): a new, physically smaller Keras model from a model and a plan."""

import copy
import inspect

import keras
import numpy as np
from keras.src.saving.serialization_lib import SafeModeScope

from tfprune.backends import variable_view
from tfprune.errors import UnsupportedModelError
from tfprune.graph import ChannelGraph, keras_nodes
from tfprune.graph.keras_nodes import is_graph_model, model_inputs, pack_like_inputs, pack_like_outputs, run_nodes
from tfprune.graph.rules import Boundary
from tfprune.pruning.spanning import warn_output_change

REINIT = ("keep", "lottery", "scratch")


def rebuild(model, plan, reinit="keep", initial_weights=None, seed=None, graph=None):
    """A new model of the same kind with the plan's channels physically removed.

    Layers keep their names and configs except for their channel counts; weights are sliced consistently
    (kernels, biases, depthwise and pointwise kernels, normalisation parameters and statistics, embedding tables,
    the Dense rows behind a Flatten, the offsets of a Concatenate). The input model is not modified. The new model
    is not compiled: compile it for fine-tuning as you see fit.

    A plan that prunes a channel-spanning group (a transformer's hidden width, see `tfprune.plan`'s
    `prune_spanning`) changes the values of the kept channels too: the slim LayerNorms normalise over the kept
    channels only. `rebuild` then measures the change on random inputs and says it in a
    `tfprune.OutputChangeWarning` (whose `change` holds the figure).

    Args:
        model: a Functional, Sequential or subclassed Keras model (custom layers and subclassed models are traced
            first, see `tfprune.trace`).
        plan: a `Plan` for this model (from `tfprune.plan`, a callback, or `Plan.load`).
        reinit: "keep" slices the model's current weights (fine-tuning); "lottery" slices `initial_weights`
            instead (rewinding to θ0 or θk, as in the lottery ticket hypothesis); "scratch" leaves every layer
            with trainable weights to its own initialisers (training the slim architecture from scratch).
            Layers with only non-trainable state, such as an adapted `Normalization`, always keep it.
        initial_weights: with "lottery", the snapshot: a list like `model.get_weights()` or a dict
            `{variable.path: array}` (see `tfprune.callbacks.WeightSnapshot`).
        seed: with "scratch", makes the fresh initialisation reproducible.
        graph: the model's `ChannelGraph`, if already built.

    Returns:
        The slim `keras.Model`: Sequential for a Sequential model, otherwise a plain Functional model (a subclass
        of Functional, such as a keras-hub backbone, comes back as `keras.Model` with the same graph and names; a
        subclassed model comes back as the Functional model of its trace, each opened custom layer as a nested
        Functional sub-model of the same name).

    Example:

    >>> import keras, tfprune
    >>> inputs = keras.Input((16, 16, 3))
    >>> x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> slim = tfprune.rebuild(model, tfprune.plan(model, 0.5))
    >>> slim.get_layer("conv").filters
    4
    """
    if reinit not in REINIT:
        raise ValueError(f"reinit must be one of {REINIT}; got {reinit!r}.")
    if (initial_weights is None) == (reinit == "lottery"):
        raise ValueError("initial_weights is required with reinit='lottery' and only allowed with it.")
    graph = graph or ChannelGraph(model, prune_outputs=plan.prune_outputs)
    plan.validate(graph)
    source = _weight_source(model, initial_weights)
    builder = _Rebuilder(graph, graph.channel_keep(plan), reinit, seed, source)
    try:
        slim = builder.rebuild_model(graph.model, "")  # the model itself, or its trace
    finally:
        builder.remove_presets()
    builder.copy_weights(source)
    if reinit == "keep":
        warn_output_change(graph, plan, slim)
    return slim


def _weight_source(model, initial_weights):
    """`{id(variable): array}` to slice from: the model's weights or a snapshot of them."""
    variables = model.weights
    if initial_weights is None:
        return {id(v): variable_view(v) for v in variables}  # read-only: sliced or copied, never written
    if isinstance(initial_weights, dict):
        missing = [v.path for v in variables if v.path not in initial_weights]
        if missing:
            raise ValueError(f"initial_weights has no entry for {len(missing)} of the model's variables, "
                             f"e.g. {missing[:3]}; it must map every variable.path to an array.")
        values = [initial_weights[v.path] for v in variables]
    else:
        values = list(initial_weights)
        if len(values) != len(variables):
            raise ValueError(f"initial_weights has {len(values)} arrays but the model has {len(variables)} "
                             "weights; pass a snapshot of this model's get_weights().")
    for v, value in zip(variables, values, strict=True):
        if tuple(np.shape(value)) != tuple(v.shape):
            raise ValueError(f"initial_weights entry for '{v.path}' has shape {tuple(np.shape(value))}, "
                             f"the model's weight has {tuple(v.shape)}: the snapshot is of another model.")
    return {id(v): np.asarray(value) for v, value in zip(variables, values, strict=True)}


def _sliced(source, index):
    """`source[index]` (all of it if `index` is None) in an array of its own: the source may be a view of a weight
    of the caller's model, which the slim model must never share."""
    value = source if index is None else source[index]
    return np.array(value) if np.may_share_memory(value, source) else value


def _seeded(config, seed):
    """A copy of a layer config whose seedable initialisers all use `seed`."""
    config = copy.deepcopy(config)
    for key, value in config.items():
        if key.endswith("_initializer") and isinstance(value, dict) and "seed" in value.get("config", {}):
            value["config"]["seed"] = seed
    return config


class _Rebuilder:
    def __init__(self, graph, channel_keep, reinit, seed, source):
        self.graph, self.channel_keep = graph, channel_keep
        self.reinit, self.seed = reinit, seed
        self.source = source
        self.created = {}  # first path -> new layer, operation or sub-model (shared layers stay shared)
        self.preset = set()  # id() of the new variables created with their final (sliced) values
        self.patched = []  # new layers whose add_weight is temporarily replaced

    def slim_values(self, path, old, source):
        """`{weight key: array}` of the slim copy of an old layer: its weights (from `source`) sliced by the rule's
        `weight_index` and passed through its `slim_weights`."""
        keep = self.keep(path)
        keys = keras_nodes.weight_keys(old)
        if not keep:
            return {keys[id(v)]: _sliced(source[id(v)], None) for v in old.weights}
        rule = self.graph.rules[path]
        index = rule.weight_index(old, keep)
        values = {keys[id(v)]: _sliced(source[id(v)], index.get(keys[id(v)])) for v in old.weights}
        return rule.slim_weights(old, keep, values)

    def sliced_values(self, path, old):
        """`{weight name: slim array}` of an old layer's own weights, or None when its weights do not carry over."""
        if not old.weights or (self.reinit == "scratch" and old.trainable_weights):
            return None
        names = [v.name for v in old.weights]
        if len(set(names)) != len(names):
            return None
        return self.slim_values(path, old, self.source)  # every key is a name: the weights are the layer's own

    def preset_weights(self, new, values):
        """Let `new` create its weights with their final values instead of running initialisers that `copy_weights`
        would overwrite (the slowest part of a rebuild). Weights it names or shapes differently are left alone."""

        def add_weight(*args, **kwargs):
            value = values.get(kwargs.get("name"))
            shape = kwargs.get("shape")
            if value is not None and not args and shape is not None and tuple(shape) == value.shape:
                kwargs["initializer"] = lambda shape, dtype=None: value.astype(dtype or value.dtype, copy=False)
                variable = keras.layers.Layer.add_weight(new, **kwargs)
                self.preset.add(id(variable))
                return variable
            return keras.layers.Layer.add_weight(new, *args, **kwargs)

        object.__setattr__(new, "add_weight", add_weight)
        self.patched.append(new)

    def remove_presets(self):
        for new in self.patched:
            object.__delattr__(new, "add_weight")
        self.patched = []

    def keep(self, path):
        return self.graph.layer_keep(path, self.channel_keep)

    def rebuild_model(self, model, path):
        keep = self.keep(path)
        inputs = []
        for i, t in enumerate(model_inputs(model)):
            shape = list(t.shape)
            if ("input", i) in keep and shape[-1] is not None:  # an open axis (a sequence length) stays open
                shape[-1] = int(keep[("input", i)].sum())
            inputs.append(keras.Input(batch_shape=tuple(shape), dtype=t.dtype, sparse=t.sparse,
                                      name=t._keras_history.operation.name))
        prefix = path + "/" if path else ""
        if isinstance(model, keras.Sequential):
            layers = [self.operation(layer, prefix + layer.name) for layer in model.layers]
            return keras.Sequential([inputs[0], *layers], name=model.name)
        def call(node, tensors):
            args, kwargs = node.arguments.fill_in(tensors)
            return keras.tree.flatten(self.operation(node.operation, prefix + node.operation.name)(*args, **kwargs))

        outputs = run_nodes(model, inputs, call)
        return keras.Model(pack_like_inputs(model, inputs), pack_like_outputs(model, outputs), name=model.name)

    def operation(self, op, path):
        path = self.graph.first_path(path)  # a layer called under several paths is copied once, and shared
        if path not in self.created:
            self.created[path] = self.rebuild_model(op, path) if is_graph_model(op) else self.copy_layer(op, path)
        return self.created[path]

    def copy_layer(self, op, path):
        keep = self.keep(path)
        is_layer = isinstance(op, keras.layers.Layer)
        if not is_layer and not keep:
            return op  # a stateless keras.ops operation whose arguments do not change
        try:
            rule = self.graph.rules[path]
            config = rule.updated_config(op, rule.config(op), keep)
            if self.reinit == "scratch" and self.seed is not None:
                config = _seeded(config, self.seed + len(self.created))
            # The config comes from a live layer of this process, not from a file: Lambda functions may be copied.
            with SafeModeScope(False):
                try:
                    new = rule.new_layer(op, config)
                except (TypeError, ValueError) as e:
                    if callable(getattr(op, "activation", None)) and "activation" in config:
                        # An activation its config cannot recreate (a custom layer or a Python lambda given as
                        # `activation=`): the slim layer calls the very same object.
                        new = rule.new_layer(op, {**config, "activation": op.activation})
                    else:
                        new = _without_derived_keys(rule, op, config, e)
            values = self.sliced_values(path, op) if isinstance(new, keras.layers.Layer) and not new.built else None
            if values:
                self.preset_weights(new, values)
            return new
        except (NotImplementedError, TypeError, ValueError, AttributeError) as e:
            if not op.weights and isinstance(self.graph.rules[path], Boundary):
                # A layer without weights that the plan leaves alone: the slim model calls the very same object,
                # which computes the same there. (Its config still cannot recreate it, so the slim model cannot be
                # loaded from a .keras file.)
                return op
            raise UnsupportedModelError(
                f"Cannot copy layer '{path}' ({type(op).__name__}): recreating it from get_config() failed "
                f"({e}). Give the layer a get_config() that from_config() accepts."
            ) from e

    def copy_weights(self, source):
        for path, old in self.graph.layers.items():
            if self.graph.first_path(path) != path:
                continue  # the same layer as at its first path
            new = self.created.get(path)
            if new is None or new is old or not isinstance(old, keras.layers.Layer) or not old.weights:
                continue
            if self.reinit == "scratch" and old.trainable_weights:
                continue
            if len(new.weights) != len(old.weights):
                raise UnsupportedModelError(f"Layer '{path}' rebuilt with {len(new.weights)} weights instead of "
                                            f"{len(old.weights)}; it cannot be copied from its config.")
            if all(id(v) in self.preset for v in new.weights):  # created with these very values
                continue
            values, keys = self.slim_values(path, old, source), keras_nodes.weight_keys(old)
            for old_var, new_var in zip(old.weights, new.weights, strict=True):
                if id(new_var) in self.preset:
                    continue
                value = values[keys[id(old_var)]]
                if tuple(value.shape) != tuple(new_var.shape):
                    raise UnsupportedModelError(
                        f"Weight '{old_var.path}' sliced to {tuple(value.shape)} but the slim layer expects "
                        f"{tuple(new_var.shape)}: layer '{path}' changes channels in a way tfprune misread.")
                new_var.assign(value)


class _ConfigWithout:
    """A layer's `get_config` without some keys: what the slim copy of a layer whose own config repeats values its
    constructor derives (and refuses) saves, so that its `.keras` file loads."""

    def __init__(self, layer, keys):
        self.layer, self.keys = layer, tuple(keys)

    def __call__(self):
        return {k: v for k, v in type(self.layer).get_config(self.layer).items() if k not in self.keys}


def _constructor_arguments(cls):
    """The names every `__init__` along `cls`'s MRO takes, and those `keras.layers.Layer` takes through `**kwargs`."""
    names = {"input_dim", "input_shape"}
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names


def _without_derived_keys(rule, op, config, error):
    """The layer from `config` without the keys its constructor does not take, for a layer whose `get_config`
    repeats values its constructor computes (KerasHub's `ViTPatchingAndEmbedding` saves `num_patches`, which it
    derives from the image and patch sizes and refuses). Used only when the layer made without them gives back
    the very config it was asked for (so the dropped values were derived ones); it then saves the config without
    them. Otherwise `error`, the constructor's refusal, is raised."""
    refused = [k for k in config if k not in _constructor_arguments(type(op))]
    if not refused:
        raise error
    try:
        new = rule.new_layer(op, {k: v for k, v in config.items() if k not in refused})
    except (TypeError, ValueError):
        raise error from None
    if new.get_config() != config:
        raise error
    object.__setattr__(new, "get_config", _ConfigWithout(new, refused))
    return new
