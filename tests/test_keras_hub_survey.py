"""Every KerasHub vision and text encoder among ViT, DeiT, DINOv2, SigLIP, CLIP, BERT, RoBERTa, DeBERTa-v3 and
ELECTRA, in a tiny configuration: what `count_macs` and `prune` do with it today.

`prune(model, 0.5)` always runs and gives a model that computes finite outputs of the right shapes; which groups
open is recorded per model (`OPENS`: heads, head width, MLP width), and is the table of
docs/guides/transformers.md. Where `count_macs` cannot count a model it raises `UnknownMACsError` naming the layer
and the reason (`UNCOUNTED`), never a guess."""

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tests.test_keras_hub import inputs_for as keras_hub_inputs

HUB = keras_hub.models
LENGTH = 8
IMAGE = (16, 16, 3)
TEXT = {"num_layers": 2, "num_heads": 2, "hidden_dim": 16, "intermediate_dim": 32}


def fixed_length(model, length=LENGTH):
    """`model` called on Inputs whose open sequence axes are `length` long."""
    inputs = {t.name: keras.Input(tuple(length if d is None else d for d in t.shape[1:]), dtype=t.dtype,
                                  name=t.name) for t in model.inputs}
    return keras.Model(inputs, model(inputs))


MODELS = {
    "ViTBackbone": lambda: HUB.ViTBackbone(image_shape=IMAGE, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                           mlp_dim=32),
    "DeiTBackbone": lambda: HUB.DeiTBackbone(image_shape=IMAGE, patch_size=4, **TEXT),
    "DINOV2Backbone": lambda: HUB.DINOV2Backbone(patch_size=4, image_shape=IMAGE, position_embedding_shape=IMAGE,
                                                 **TEXT),
    "SigLIPVisionEncoder": lambda: HUB.SigLIPVisionEncoder(patch_size=4, image_shape=IMAGE, **TEXT),
    "SigLIPTextEncoder": lambda: fixed_length(HUB.SigLIPTextEncoder(vocabulary_size=50, embedding_dim=16,
                                                                    max_sequence_length=LENGTH, **TEXT)),
    "CLIPVisionEncoder": lambda: HUB.CLIPVisionEncoder(patch_size=4, image_shape=IMAGE, **TEXT),
    "CLIPTextEncoder": lambda: fixed_length(HUB.CLIPTextEncoder(vocabulary_size=50, embedding_dim=16,
                                                                max_sequence_length=LENGTH, **TEXT)),
    "BertBackbone": lambda: fixed_length(HUB.BertBackbone(vocabulary_size=50, max_sequence_length=LENGTH, **TEXT)),
    "RobertaBackbone": lambda: fixed_length(HUB.RobertaBackbone(vocabulary_size=50, max_sequence_length=LENGTH,
                                                                **TEXT)),
    "DebertaV3Backbone": lambda: fixed_length(HUB.DebertaV3Backbone(vocabulary_size=50, max_sequence_length=LENGTH,
                                                                    bucket_size=4, name="deberta", **TEXT)),
    "ElectraBackbone": lambda: fixed_length(HUB.ElectraBackbone(vocab_size=50, embedding_dim=16,
                                                                max_sequence_length=LENGTH, **TEXT)),
}

# What prunes in each block: (heads, head width, MLP width). Measured by test_prune_runs_and_opens_what_it_records.
OPENS = {
    "ViTBackbone": (True, True, True),
    "DeiTBackbone": (False, False, False),
    "DINOV2Backbone": (True, True, True),
    "SigLIPVisionEncoder": (False, False, False),
    "SigLIPTextEncoder": (True, True, True),
    "CLIPVisionEncoder": (True, True, True),
    "CLIPTextEncoder": (True, True, True),
    "BertBackbone": (True, True, True),
    "RobertaBackbone": (True, True, True),
    "DebertaV3Backbone": (False, False, True),
    "ElectraBackbone": (True, True, True),
}

# Layers that stay closed in a block, with the reason ChannelGraph.closed gives. DeBERTa's blocks are opened again at
# the model's sequence length (its backbone takes any length); the reasons of what stays closed in them are kept.
CLOSED = {
    "DebertaV3Backbone": {f"deberta/disentangled_attention_encoder_layer_{i}/self_attention_layer":
                          "its call could not be traced" for i in range(2)},
}

# Models count_macs refuses, with the layer and the reason it names.
UNCOUNTED = {
    "DeiTBackbone": "'deit_encoder' .*returned a non-tensor",
    "SigLIPVisionEncoder": r"'embedding' .*shape \(1, 16, 16\) on symbolic inputs, \(None, 17, 16\) in the model",
    "DebertaV3Backbone": "'.*self_attention_layer' \\(DisentangledSelfAttention\\)",
}


def inputs_for(model, seed=1):
    """`test_keras_hub.inputs_for` with token ids below 50 and 3 padding positions."""
    return keras_hub_inputs(model, seed, vocabulary=50, padded=3)


def opens(graph):
    """(heads, head width, MLP width): whether any group of that kind is prunable."""
    names = [g.name for g in graph.prunable_groups]
    return (any(n.endswith(":heads") for n in names), any(n.endswith(":head_dim") for n in names),
            any(":" not in n for n in names))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_count_macs_counts_or_names_what_it_cannot(name):
    model = MODELS[name]()
    if name in UNCOUNTED:
        with pytest.raises(tfprune.UnknownMACsError, match=UNCOUNTED[name]):
            tfprune.count_macs(model)
        assert tfprune.count_macs(model, unknown_macs="lower_bound") > 0
    else:
        assert tfprune.count_macs(model) > 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prune_runs_and_opens_what_it_records(name):
    model = MODELS[name]()
    graph = tfprune.ChannelGraph(model)
    assert opens(graph) == OPENS[name], (sorted(g.name for g in graph.prunable_groups), graph.closed)
    for path, reason in CLOSED.get(name, {}).items():
        assert graph.closed.get(path, "").startswith(reason), graph.closed
    slim = tfprune.prune(model, 0.5)
    x = inputs_for(model)
    for before, after in zip(keras.tree.flatten(model(x)), keras.tree.flatten(slim(x)), strict=True):
        after = np.asarray(after)
        assert after.shape == tuple(before.shape) and np.isfinite(after).all()
    if any(OPENS[name]):
        assert tfprune.count_params(slim) < tfprune.count_params(model)
    else:  # nothing to prune: the copy (DeiT's encoder from its attributes, its get_config failing) is the model
        for before, after in zip(keras.tree.flatten(model(x)), keras.tree.flatten(slim(x)), strict=True):
            np.testing.assert_allclose(np.asarray(after), np.asarray(before), rtol=1e-6, atol=1e-6)
    # The closed layers (DeBERTa's attention, DeiT's encoder) are copied whole: the slim model computes what the
    # masked one does. 1e-5 of the outputs' scale: float32 sums of a few hundred terms in another order.
    masked = tfprune.mask(model, tfprune.plan(model, 0.5, graph=graph), graph=graph)  # in place: `model` is ours
    for expected, actual in zip(keras.tree.flatten(masked(x)), keras.tree.flatten(slim(x)), strict=True):
        expected = np.asarray(expected)
        np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
