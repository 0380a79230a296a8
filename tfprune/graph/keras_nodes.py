"""Read the call graph of Functional and Sequential Keras models.

This is the only module that touches Keras' private graph attributes (`_nodes_by_depth`, `_functional`,
`_flatten_layers`).
"""

import keras
from keras import tree
from keras.src.models.functional import Functional

from tfprune.errors import UnsupportedModelError


def is_graph_model(layer) -> bool:
    """True for models whose call graph tfprune can read: Functional (and its subclasses) and Sequential."""
    return isinstance(layer, Functional | keras.Sequential)


def functional_of(model) -> Functional:
    """The Functional graph behind `model`, or an `UnsupportedModelError` saying why there is none."""
    if isinstance(model, keras.Sequential):
        if model._functional is None:
            raise UnsupportedModelError(
                f"Sequential model '{model.name}' has no input shape yet, so its graph is unknown. "
                "Start it with keras.Input(shape=...) or call model.build(input_shape) first."
            )
        return model._functional
    if isinstance(model, Functional):
        return model
    if isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"'{model.name}' is a subclassed keras.Model ({type(model).__name__}) without a functional graph; "
            "tfprune reads Functional and Sequential models. Build it with keras.Input and layer calls "
            "(the functional API), or wrap its layers in keras.Sequential."
        )
    raise UnsupportedModelError(
        f"Expected a keras.Model (Functional or Sequential), got {type(model).__name__}."
    )


def call_nodes(model):
    """The call nodes of `model` in execution order (inputs first), without the input placeholders."""
    graph = functional_of(model)
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def run_nodes(model, inputs, call):
    """Carry one value per tensor through `model`'s graph: the tensor values, shapes or channel ids of a walk.

    Starts from one value per model input; for every call node reached from them, in execution order,
    `call(node, values)` returns the values of the node's outputs, where `values` maps `id(tensor)` to the values
    known so far (`node.arguments.fill_in(values)` gives the call's arguments). Nodes not reached from the inputs
    (a shared layer's calls in another model) are skipped, as Keras does.

    Returns:
        The values of the model's outputs, in the flat order of `model.outputs` (None for any not reached).
    """
    values = {id(t): v for t, v in zip(model_inputs(model), inputs, strict=True)}
    for node in call_nodes(model):
        if any(id(t) not in values for t in node.arguments.keras_tensors):
            continue
        for t, value in zip(node.outputs, call(node, values), strict=True):
            values[id(t)] = value
    return [values.get(id(t)) for t in model_outputs(model)]


def model_inputs(model) -> list:
    """The flat list of symbolic input tensors of a graph model."""
    return list(functional_of(model).inputs)


def model_outputs(model) -> list:
    """The flat list of symbolic output tensors of a graph model."""
    return list(functional_of(model).outputs)


def pack_like_inputs(model, flat):
    """`flat` tensors arranged in the structure (list, dict, ...) of `model`'s inputs."""
    return tree.pack_sequence_as(functional_of(model)._inputs_struct, flat)


def pack_like_outputs(model, flat):
    """`flat` tensors arranged in the structure of `model`'s outputs."""
    return tree.pack_sequence_as(functional_of(model)._outputs_struct, flat)


def own_variables(layer) -> list:
    """The variables `layer` holds itself, not through one of its sub-layers (random seed states included)."""
    inner = {id(v) for sub in layer._flatten_layers(include_self=False) for v in sub.variables}
    return [v for v in layer.variables if id(v) not in inner]


def weight_keys(layer) -> dict:
    """`{id(weight): its name relative to layer}`: "kernel" for a weight the layer holds itself, "query/kernel" for
    one of a sub-layer (a `MultiHeadAttention`'s projections), so that a layer's weights have distinct keys even
    where several of them share a name. Rules' `weight_index` is keyed by these."""
    keys = {}

    def visit(current, prefix):
        for v in own_variables(current):
            keys.setdefault(id(v), prefix + v.name)
        for sub in current._flatten_layers(include_self=False, recursive=False):
            visit(sub, prefix + sub.name + "/")

    visit(layer, "")
    return {id(v): keys.get(id(v), v.name) for v in layer.weights}
