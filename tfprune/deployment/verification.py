"""check_equivalence(): does the rebuilt model compute what the masked model computes?"""

import keras
import numpy as np

from tfprune.graph.keras_nodes import is_graph_model, model_inputs
from tfprune.graph.tracing import open_model
from tfprune.pruning.masking import mask
from tfprune.pruning.plans import Plan
from tfprune.pruning.rebuilding import rebuild


def random_inputs(model, batch_size=2, seed=0):
    """Random inputs matching a model's input shapes (unknown dimensions become 32), in its input structure."""
    rng = np.random.default_rng(seed)
    graph_model = model if is_graph_model(model) else open_model(model).model  # a subclassed model: its trace
    arrays = [rng.standard_normal((batch_size, *[d or 32 for d in t.shape[1:]])).astype(t.dtype)
              for t in model_inputs(graph_model)]
    return arrays[0] if len(arrays) == 1 else arrays


def outputs(model, inputs):
    """A model's outputs on `inputs` as a flat list of numpy arrays (one eager inference call, no tracing)."""
    return [np.asarray(y) for y in keras.tree.flatten(model(inputs, training=False))]


def check_equivalence(model, plan, inputs=None, slim=None):
    """The largest difference between the masked and the rebuilt model, relative to the output scale.

    A copy of `model` is masked with `plan` (the model itself is left alone) and rebuilt; both run on
    `inputs` (random ones by default). For plans that avoid channel-spanning normalisation the result is at the
    level of float rounding.

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
        masked = mask(rebuild(model, Plan(keep={}, widths={})), plan)  # an exact copy, then masked
        slim = rebuild(masked, plan)
    else:
        masked = model
    expected, actual = outputs(masked, inputs), outputs(slim, inputs)
    scale = max([1.0] + [float(np.abs(e).max()) for e in expected])
    return max(float(np.abs(e - a).max()) for e, a in zip(expected, actual, strict=True)) / scale
