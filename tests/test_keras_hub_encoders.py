"""KerasHub's vision and contrastive encoders prune: DINOv2 (with its layer scale) and CLIP (vision and text towers
together) by heads, head width and MLP width; the rebuilt model computes what the masked one does, saves and loads
with its head counts, and costs what MacsModel says.

Tiny configurations, built offline from constructor arguments. The text tower takes any sequence length, so the
models are called on fixed-length Inputs (counting needs fixed sizes)."""

import os

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tests.test_keras_hub import attention_layers as head_counts
from tfprune.deployment.verification import check_equivalence
from tfprune.measurement.macs_model import MacsModel

# Rebuilt and masked models differ by float32 rounding only (relative to the outputs' scale).
TOLERANCE = 1e-5
LENGTH = 8
IMAGE = (16, 16, 3)
HUB = keras_hub.models


def fixed_length(model, length=LENGTH):
    """`model` called on Inputs whose open sequence axes are `length` long."""
    inputs = {t.name: keras.Input(tuple(length if d is None else d for d in t.shape[1:]), dtype=t.dtype,
                                  name=t.name) for t in model.inputs}
    return keras.Model(inputs, model(inputs))


def dinov2():
    """Layer scale on both branches of every block (closed layers on the hidden width, between the heads' output
    projection and the residual add: heads and MLP neurons prune through them)."""
    return HUB.DINOV2Backbone(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                              layer_scale_init_value=0.5, image_shape=IMAGE, position_embedding_shape=IMAGE,
                              name="dinov2")


def clip():
    vision = HUB.CLIPVisionEncoder(patch_size=4, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
                                   image_shape=IMAGE, name="vision")
    text = HUB.CLIPTextEncoder(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=2, num_heads=2,
                               intermediate_dim=32, max_sequence_length=LENGTH, name="text")
    return fixed_length(HUB.CLIPBackbone(vision, text, projection_dim=8, name="clip"))


MODELS = {"dinov2": (dinov2, 2), "clip": (clip, 4)}  # builder, transformer blocks


def random_weights(model, seed=0):
    """Every float weight random (biases, LayerNorm's and the layer scales too), so that no slice is trivially
    zero."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) if "float" in str(w.dtype) else w
                       for w in model.get_weights()])
    return model


def inputs_for(model, seed=1):
    """Random images, token ids below the vocabulary size."""
    rng = np.random.default_rng(seed)
    values = {t.name: rng.normal(size=(2, *t.shape[1:])).astype("float32") if "float" in str(t.dtype)
              else rng.integers(0, 50, (2, *t.shape[1:])).astype("int32") for t in model.inputs}
    return values


@pytest.fixture(scope="module", params=sorted(MODELS))
def pruned(request):
    """(name, model, graph, plan, slim) for one family, every group pruned by half."""
    build, _ = MODELS[request.param]
    model = random_weights(build())
    graph = tfprune.ChannelGraph(model)
    plan = tfprune.plan(model, 0.5, graph=graph)
    return request.param, model, graph, plan, tfprune.rebuild(model, plan, graph=graph)


def test_every_block_prunes_heads_head_width_and_mlp_width(pruned):
    name, model, graph, plan, slim = pruned
    blocks = MODELS[name][1]
    heads = sorted(g for g in plan.keep if g.endswith(":heads"))
    assert len(heads) == blocks and all(len(plan.keep[g]) == 1 for g in heads), sorted(plan.keep)  # 2 -> 1
    assert all(len(plan.keep[g.replace(":heads", ":head_dim")]) == 4 for g in heads)  # head width 8 -> 4
    mlp = [g for g in plan.keep if ":" not in g]
    assert len(mlp) == blocks and all(graph[g].width == 32 and len(plan.keep[g]) == 16 for g in mlp)
    assert set(head_counts(slim).values()) == {(1, 4)}
    assert tfprune.count_params(slim) < tfprune.count_params(model)


def test_rebuild_equals_mask(pruned):
    _, model, _, plan, _ = pruned
    assert check_equivalence(model, plan, inputs=inputs_for(model)) < TOLERANCE


def test_slim_model_saves_and_loads_with_its_head_counts(pruned, tmp_path):
    """CLIP's blocks make their MLP activation from a plain function (`quick_gelu`) that a `.keras` file cannot
    name; opened, it is the `keras.ops` it calls, so the slim model loads without custom objects."""
    name, _, _, _, slim = pruned
    path = os.path.join(tmp_path, f"{name}.keras")
    slim.save(path)
    loaded = keras.saving.load_model(path)
    assert head_counts(loaded) == head_counts(slim)
    x = inputs_for(slim)
    for a, b in zip(keras.tree.flatten(loaded(x)), keras.tree.flatten(slim(x)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_macs_model_prices_the_slim_model(pruned):
    _, model, graph, plan, slim = pruned
    macs = MacsModel(model, graph=graph)
    assert macs.full == tfprune.count_macs(model)
    assert macs.macs(plan) == tfprune.count_macs(slim) < macs.full


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_global_l1_plan_ranks_heads_and_neurons_across_blocks(family):
    model = random_weights(MODELS[family][0](), seed=3)
    graph = tfprune.ChannelGraph(model)
    plan = tfprune.plan(model, 0.4, criterion="l1", scope="global", graph=graph)
    kept = {g: len(plan.keep[g]) for g in plan.keep}
    assert len({n for g, n in kept.items() if ":" not in g}) > 1, kept  # one threshold: blocks keep unequal widths
    assert sum(kept.values()) < sum(graph[g].width for g in kept)
    assert check_equivalence(model, plan, inputs=inputs_for(model)) < TOLERANCE
    slim = tfprune.rebuild(model, plan, graph=graph)
    assert MacsModel(model, graph=graph).macs(plan) == tfprune.count_macs(slim)
