"""The config a layer is copied from, also for a layer whose automatic config Keras refused for a dtype policy.

A Keras layer without a `get_config` of its own gets an automatic one: `Layer.__new__` records the constructor's
arguments, but only when every value is a plain str, int, float, bool or None. A layer made with
`dtype=self.dtype_policy` (a `DTypePolicy` object, as KerasHub's Gemma blocks make their `RMSNormalization`
sub-layers) has its arguments dropped, and its `get_config()` raises `NotImplementedError`: Keras cannot copy it,
and neither could `rebuild` nor `trace` (which would then leave the whole block closed).

`layer_config` gives such a layer the config Keras would have recorded with the policy serialised
(`keras.dtype_policies.serialize`, as `Layer.get_config` does for every other layer): its constructor's named
arguments read back from the attributes of the same names, plus `name`, `trainable` and `dtype`. The config is used
only if a layer made from it is the same layer: each of those attributes, and the dtype policy, equal the
original's (a constructor that stores an argument under another name, or changes it, is caught and refused with
Keras's own error). The copy, made with a serialised policy, has an automatic config of its own and saves to
`.keras` like any other layer.
"""

import inspect

import keras
from keras import tree
from keras.src.utils import python_utils

_PLAIN = (str, int, float, bool, type(None))
_BASE_ARGUMENTS = ("name", "trainable", "dtype")  # what `Layer.get_config` records for every layer


def layer_config(layer):
    """`layer.get_config()`, or the config its automatic config would be with its dtype policy serialised.

    Args:
        layer: a Keras layer.

    Returns:
        A config `type(layer).from_config` accepts.

    Raises:
        NotImplementedError: Keras's own error, when the layer's config fails and cannot be recovered as above.

    Example:

    >>> import keras
    >>> class Scale(keras.layers.Layer):  # no get_config of its own: Keras records its arguments
    ...     def __init__(self, factor=2.0, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.factor = factor
    >>> layer = Scale(3.0, dtype=keras.DTypePolicy("float32"), name="scale")
    >>> try:
    ...     layer.get_config()
    ... except NotImplementedError:
    ...     print("Keras has no config for it")
    Keras has no config for it
    >>> config = layer_config(layer)
    >>> config["factor"], config["dtype"]["config"]["name"]
    (3.0, 'float32')
    >>> Scale.from_config(config).get_config() == config  # the copy has a config of its own
    True
    """
    try:
        return layer.get_config()
    except NotImplementedError as error:
        config = _recorded_config(layer)
        if config is None:
            raise error from None
        return config


def _recorded_config(layer):
    """The automatic config of a layer whose arguments Keras dropped, or None when it cannot be recovered."""
    if not isinstance(layer, keras.layers.Layer) or not python_utils.is_default(layer.get_config):
        return None  # a get_config of the layer's own class failed: not a dropped automatic config
    if getattr(layer, "_auto_config_error_args", False) or layer.activity_regularizer is not None:
        return None
    parameters = inspect.signature(type(layer).__init__).parameters.values()
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]  # not self
    arguments = {}
    for name in names:
        if name in _BASE_ARGUMENTS:
            continue
        if not hasattr(layer, name) or not _is_plain(getattr(layer, name)):
            return None
        arguments[name] = getattr(layer, name)
    config = {"name": layer.name, "trainable": layer.trainable,
              "dtype": keras.dtype_policies.serialize(layer.dtype_policy), **arguments}
    try:
        copy = type(layer).from_config(config)
    except Exception:  # noqa: BLE001 - a constructor that refuses the recovered arguments: not recovered
        return None
    same = all(_equal(getattr(copy, name, None), value) for name, value in arguments.items())
    return config if same and copy.dtype_policy.name == layer.dtype_policy.name else None


def _is_plain(value):
    try:
        return all(isinstance(v, _PLAIN) for v in tree.flatten(value))
    except TypeError:
        return False


def _equal(a, b):
    return type(a) is type(b) and a == b
