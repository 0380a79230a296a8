"""check_equivalence(): does the rebuilt model compute what the masked model computes?"""

import warnings

import keras
import numpy as np

from tfprune.errors import OutputChangeWarning
from tfprune.graph.keras_nodes import is_graph_model
from tfprune.graph.tracing import open_model
from tfprune.pruning import spanning
from tfprune.pruning.masking import mask
from tfprune.pruning.plans import Plan
from tfprune.pruning.rebuilding import rebuild


def random_inputs(model, batch_size=2, seed=0):
    """Random inputs matching a model's input shapes (unknown dimensions become 32): standard normal floats, and
    integers 0 or 1 for integer inputs (valid token ids, segment ids and padding masks)."""
    graph_model = model if is_graph_model(model) else open_model(model).model  # a subclassed model: its trace
    return spanning.example_inputs(graph_model, batch_size, seed)


def output_change(model, slim, inputs=None):
    """How much pruning moved the outputs: `max|model(x) - slim(x)| / max(1, max|model(x)|)` over all outputs.

    Removing channels changes a model's outputs by what those channels contributed; pruning a channel-spanning
    group (the hidden width of a transformer, `tfprune.plan(..., prune_spanning=True)`) also changes the kept
    channels, since the slim LayerNorms normalise over them alone. This is the figure `rebuild` gives in its
    `OutputChangeWarning`, on your inputs.

    Args:
        model: the original model.
        slim: the pruned model (`tfprune.rebuild(model, plan)`).
        inputs: an array (or the list or dict of arrays) both are called on; random ones when None.

    Example:

    >>> import keras, warnings, tfprune
    >>> from tfprune.deployment.verification import output_change
    >>> inputs = keras.Input((8, 16))
    >>> x = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(16, name="embed")(inputs))
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> plan = tfprune.plan(model, 0.5, prune_spanning=True)  # the hidden width "embed", through "ln"
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     slim = tfprune.rebuild(model, plan)
    >>> caught[0].message.change == output_change(model, slim, tfprune.deployment.verification.random_inputs(model))
    True
    """
    return spanning.output_change(model, slim, random_inputs(model) if inputs is None else inputs)


def outputs(model, inputs):
    """A model's outputs on `inputs` as a flat list of numpy arrays (one eager inference call, no tracing)."""
    return [np.asarray(y) for y in keras.tree.flatten(model(inputs, training=False))]


def check_equivalence(model, plan, inputs=None, slim=None):
    """The largest difference between the masked and the rebuilt model, relative to the output scale.

    A copy of `model` is masked with `plan` (the model itself is left alone) and rebuilt; both run on
    `inputs` (random ones by default). The result is at the level of float rounding, channel-spanning groups
    included (see `tfprune.mask`).

    Args:
        model: a Functional or Sequential model.
        plan: a `Plan` for it.
        inputs: an array (or the list or dict of arrays) the model is called on; random ones when None.
        slim: the model rebuilt from the masked copy, if already made (then `model` must be that masked copy).

    Returns:
        `max|masked - rebuilt| / max(1, max|masked|)` over all outputs.
    """
    inputs = random_inputs(model) if inputs is None else inputs
    if slim is None:
        copy = rebuild(model, Plan(keep={}, widths={}))  # an exact copy, masked in place
        masked = mask(copy, plan)  # the copy, or a model of its layers with norms over the kept channels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutputChangeWarning)  # the change against the original: not asked here
            slim = rebuild(copy, plan)
    else:
        masked = model
    expected, actual = outputs(masked, inputs), outputs(slim, inputs)
    scale = max([1.0] + [float(np.abs(e).max()) for e in expected])
    return max(float(np.abs(e - a).max()) for e, a in zip(expected, actual, strict=True)) / scale
