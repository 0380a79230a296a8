"""The config a layer is copied from, also for a layer whose `get_config` fails: read back from its attributes.

`rebuild` copies every layer from its config, and `trace` opens only layers whose sub-layers can be copied. Some
layers have no working config. Both cases below recover one the same way: the constructor's named arguments read
back from the layer's attributes of the same names (where Keras layers keep them), plus `name`, `trainable` and
`dtype` (the dtype policy serialised, as `Layer.get_config` records it for every layer).

- **A dropped automatic config.** A Keras layer without a `get_config` of its own gets an automatic one:
  `Layer.__new__` records the constructor's arguments, but only when every value is a plain str, int, float, bool
  or None. A layer made with `dtype=self.dtype_policy` (a `DTypePolicy` object, as KerasHub's Gemma blocks make
  their `RMSNormalization` sub-layers) has its arguments dropped, and its `get_config()` raises
  `NotImplementedError`. The recovered config is the one Keras would have recorded, and it is used only if a layer
  made from it is the same layer: each argument, and the dtype policy, equal the original's (a constructor that
  stores an argument under another name, or changes it, is caught and refused with Keras's own error). The copy
  has an automatic config of its own and saves to `.keras` like any other layer.
- **A closed layer whose own `get_config` fails** (`closed=True`): a layer copied whole, which the plan leaves
  alone (KerasHub's `DeiTEncoder` saves a `key_dim` it never sets, and raises `AttributeError`). Its arguments may
  be any values (layers, initialisers), kept as they are; those without an attribute keep their defaults, and one
  without either makes Keras's own error stand. Nothing can check such a config (there is no config to compare
  with): the copy gets the very same weights, so the slim model computes what the original does wherever the
  constructor kept its arguments, and `rebuild` equals `mask` as for any layer. Its own `get_config` still fails:
  the slim model runs, but saves to `.keras` no more than the original does.
"""

import inspect

import keras
from keras import tree
from keras.src.utils import python_utils

_PLAIN = (str, int, float, bool, type(None))
_BASE_ARGUMENTS = ("name", "trainable", "dtype")  # what `Layer.get_config` records for every layer


def layer_config(layer, closed=False):
    """`layer.get_config()`, or where it fails, the config read back from the layer's attributes (see above).

    Args:
        layer: a Keras layer.
        closed: whether the copy is of a closed layer that the plan leaves alone, whose weights carry over whole:
            then a layer whose own `get_config` fails is also copied from its attributes, unchecked.

    Returns:
        A config `type(layer).from_config` accepts.

    Raises:
        NotImplementedError, AttributeError: the layer's own error, when its config fails and cannot be recovered.

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
    >>> class Broken(keras.layers.Layer):  # a get_config of its own that fails
    ...     def __init__(self, units, initializer="zeros", **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.units, self.initializer = units, keras.initializers.get(initializer)
    ...     def get_config(self):
    ...         return {**super().get_config(), "units": self.units, "width": self.width}
    >>> broken = Broken(4, name="broken")
    >>> try:
    ...     layer_config(broken)
    ... except AttributeError:
    ...     print("no config, unless copied whole")
    no config, unless copied whole
    >>> config = layer_config(broken, closed=True)
    >>> config["units"], config["initializer"] is broken.initializer
    (4, True)
    """
    try:
        return layer.get_config()
    except (NotImplementedError, AttributeError) as error:
        if not isinstance(layer, keras.layers.Layer):
            raise
        config = _recorded_config(layer) if isinstance(error, NotImplementedError) else None
        if config is None and closed:
            config = _attribute_config(layer)
        if config is None:
            raise error from None
        return config


def _recorded_config(layer):
    """The automatic config of a layer whose arguments Keras dropped, checked, or None when it cannot be recovered."""
    if not python_utils.is_default(layer.get_config):
        return None  # a get_config of the layer's own class failed: not a dropped automatic config
    if getattr(layer, "_auto_config_error_args", False) or layer.activity_regularizer is not None:
        return None
    arguments, missing = constructor_arguments(layer)
    if missing or not all(_is_plain(value) for value in arguments.values()):
        return None
    config = {**base_config(layer), **arguments}
    try:
        copy = type(layer).from_config(config)
    except Exception:  # noqa: BLE001 - a constructor that refuses the recovered arguments: not recovered
        return None
    same = all(_equal(getattr(copy, name, None), value) for name, value in arguments.items())
    return config if same and copy.dtype_policy.name == layer.dtype_policy.name else None


def _attribute_config(layer):
    """The config of a closed layer whose own `get_config` fails, unchecked, or None when an argument without a
    default has no attribute to read it from."""
    arguments, missing = constructor_arguments(layer)
    if any(p.default is p.empty for p in missing):
        return None
    return {**base_config(layer), **arguments}


def base_config(layer):
    """What `Layer.get_config` records for every layer: `name`, `trainable` and `dtype` (the dtype policy
    serialised).

    Args:
        layer: a Keras layer.

    Example:

    >>> import keras
    >>> config = base_config(keras.layers.Dense(2, name="dense", dtype="float32"))
    >>> config["name"], config["trainable"], config["dtype"]["config"]["name"]
    ('dense', True, 'float32')
    """
    return {"name": layer.name, "trainable": layer.trainable,
            "dtype": keras.dtype_policies.serialize(layer.dtype_policy)}


def constructor_arguments(layer, attributes=None):
    """The layer's constructor arguments read back from its attributes: `({argument: value}, [missing])`.

    The arguments are the constructor's named parameters but those of `_BASE_ARGUMENTS` (`base_config` has them);
    each is read from the attribute of the same name, where Keras layers keep them.

    Args:
        layer: a Keras layer.
        attributes: `{argument: attribute}` for arguments a layer keeps under another name.

    Returns:
        The values found, and the `inspect.Parameter`s of the arguments with no attribute to read, in the
        constructor's order.

    Example:

    >>> import keras
    >>> class Scale(keras.layers.Layer):
    ...     def __init__(self, factor, offset=0.0, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self._factor = factor
    >>> arguments, missing = constructor_arguments(Scale(3.0), attributes={"factor": "_factor"})
    >>> arguments, [p.name for p in missing]
    ({'factor': 3.0}, ['offset'])
    """
    attributes = attributes or {}
    parameters = list(inspect.signature(type(layer).__init__).parameters.values())[1:]
    found, missing = {}, []
    for p in parameters:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name in _BASE_ARGUMENTS:
            continue
        attribute = attributes.get(p.name, p.name)
        if hasattr(layer, attribute):
            found[p.name] = getattr(layer, attribute)
        else:
            missing.append(p)
    return found, missing


def _is_plain(value):
    try:
        return all(isinstance(v, _PLAIN) for v in tree.flatten(value))
    except TypeError:
        return False


def _equal(a, b):
    return type(a) is type(b) and a == b
