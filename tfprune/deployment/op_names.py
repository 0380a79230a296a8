"""layer_of_op(): the Keras layer that a TensorFlow op name (as converters report it) belongs to."""

import re

import keras


def layer_names(model):
    """The names of all layers of `model`, nested models' layers included."""
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if isinstance(layer, keras.Model):
            names |= layer_names(layer)
    return names


def layer_of_op(model, op_name):
    """The layer whose name scope holds the TensorFlow op `op_name` (the deepest one), or None.

    Keras scopes the ops of a traced model as "model_1/layer_1/Op", adding "_<n>" to the names; both forms are tried.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="head")], name="net")
    >>> layer_of_op(model, "net_1/head_1/MatMul")
    'head'
    """
    names = layer_names(model)
    found = None
    for part in op_name.split("/")[:-1]:
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in names:
                found = candidate
                break
    return found
