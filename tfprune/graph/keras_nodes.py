"""Read the call graph of Functional and Sequential Keras models.

This is the only module that touches Keras' private graph attributes (`_nodes_by_depth`, `_functional`).
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
