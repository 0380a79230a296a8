"""The hidden (residual) width of a transformer, through LayerNorms and embeddings: left out of plans unless asked for;
pruned on request, with mask and rebuild agreeing (the masked norms cover the kept channels only) and the change
against the original model measured and reported.

Tiny models: a Functional ViT of Keras layers (as benchmarks/transformers.py builds it), KerasHub's ViT and BERT
classifiers (from tests/test_keras_hub.py), token models with tied embeddings and RMS norms."""

import os
import warnings

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tests.test_keras_hub import TASKS, inputs_for, random_weights
from tfprune.deployment.verification import check_equivalence, output_change, random_inputs
from tfprune.errors import OutputChangeWarning
from tfprune.measurement.macs_model import MacsModel

L = keras.layers
# mask and rebuild compute the same sums in float32, in other orders: relative differences of a few ulps
TOLERANCE = 1e-5


def functional_vit(norm=L.LayerNormalization):
    """Patch Conv2D, KerasHub's PositionEmbedding, two pre-norm blocks (MultiHeadAttention, MLP), a final norm,
    pooling and a Dense head: the hidden width is the group "patches"."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(16, 4, strides=4, name="patches")(inputs)
    x = L.Reshape((4, 16), name="tokens")(x)
    x = L.Add(name="position")([x, keras_hub.layers.PositionEmbedding(4, name="positions")(x)])
    for i in range(2):
        y = norm(epsilon=1e-6, name=f"block{i}_ln1")(x)
        y = L.MultiHeadAttention(2, 8, name=f"block{i}_mha")(y, y)
        x = L.Add(name=f"block{i}_add1")([x, y])
        y = norm(epsilon=1e-6, name=f"block{i}_ln2")(x)
        y = L.Dense(32, activation="gelu", name=f"block{i}_mlp1")(y)
        x = L.Add(name=f"block{i}_add2")([x, L.Dense(16, name=f"block{i}_mlp2")(y)])
    x = L.GlobalAveragePooling1D(name="pool")(norm(epsilon=1e-6, name="ln")(x))
    return random_weights(keras.Model(inputs, L.Dense(3, name="head")(x), name="functional_vit"))


def tied_language_model(norm):
    """Token embedding (KerasHub's ReversibleEmbedding), a norm, an MLP, and the tied output projection."""
    inputs = keras.Input((6,), dtype="int32", name="tokens")
    embedding = keras_hub.layers.ReversibleEmbedding(20, 12, name="embed")
    x = norm(name="norm")(embedding(inputs))
    x = L.Add(name="add")([x, L.Dense(12, name="down")(L.Dense(24, activation="relu", name="up")(x))])
    return random_weights(keras.Model(inputs, embedding(norm(name="final_norm")(x), reverse=True), name="tied_lm"))


def rebuilt(model, plan):
    """`rebuild(model, plan)` and the figure of its OutputChangeWarning (None if it gave none)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slim = tfprune.rebuild(model, plan)
    changes = [w.message.change for w in caught if issubclass(w.category, OutputChangeWarning)]
    assert len(changes) <= 1
    return slim, changes[0] if changes else None


def test_the_hidden_width_is_left_out_unless_asked_for():
    model = functional_vit()
    graph = tfprune.ChannelGraph(model)
    assert [g.name for g in graph.spanning_groups] == ["patches"]
    assert graph["patches"].spanning == ("block0_ln1", "block0_ln2", "block1_ln1", "block1_ln2", "ln")
    assert "patches" not in [g.name for g in graph.prunable_groups]
    assert "patches" not in tfprune.plan(model, 0.5, graph=graph).keep
    assert "patches" not in tfprune.plan(model, 0.5, scope="global", graph=graph).keep
    assert len(tfprune.plan(model, 0.5, graph=graph, prune_spanning=True).keep["patches"]) == 8
    assert len(tfprune.plan(model, {"patches": 0.25}, graph=graph).keep["patches"]) == 12  # named: pruned
    assert "1 more prunable on request (*)" in str(graph)


def test_plan_for_macs_prices_the_hidden_width():
    model = functional_vit()
    graph = tfprune.ChannelGraph(model)
    plan, ratio = tfprune.plan_for_macs(model, 0.3, lambda r: tfprune.plan(model, r, scope="global", graph=graph,
                                                                           prune_spanning=True), graph=graph)
    assert len(plan.keep["patches"]) < 16 and ratio <= 0.3
    assert ratio == MacsModel(model, graph=graph).ratio(plan)
    without, _ = tfprune.plan_for_macs(model, 0.3, lambda r: tfprune.plan(model, r, scope="global", graph=graph),
                                       graph=graph)
    assert "patches" not in without.keep


@pytest.mark.parametrize("criterion", ["l2", "mean_activation", "taylor"])
def test_data_criteria_score_the_hidden_channels(criterion):
    """The weight, activation and Taylor criteria score hidden channels too (measured on the tensors of the group),
    and their plans keep mask == rebuild. (APoZ and HRank run but see no zeros and full ranks in this ReLU-free
    residual stream: constant scores, so they are not asserted here.)"""
    model = functional_vit()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    data = (x, rng.integers(0, 3, 16)) if criterion == "taylor" else x
    if criterion == "taylor":
        criterion = tfprune.criteria.Taylor(loss="sparse_categorical_crossentropy", verbose=0)
    scores = tfprune.criteria.get(criterion)(tfprune.ChannelGraph(model), tfprune.ChannelGraph(model)["patches"],
                                             model, data)
    assert scores.shape == (16,) and np.isfinite(scores).all() and np.ptp(scores) > 0  # measured, not constant
    plan = tfprune.plan(model, 0.5, criterion=criterion, data=data, prune_spanning=True)
    assert len(plan.keep["patches"]) == 8
    assert check_equivalence(model, plan, inputs=x[:4]) < TOLERANCE


@pytest.mark.parametrize("norm", [L.LayerNormalization, L.RMSNormalization,
                                  lambda **kw: L.LayerNormalization(rms_scaling=True, **kw)],
                         ids=["layer_norm", "rms_norm", "layer_norm_rms_scaling"])
def test_functional_vit_rebuild_equals_mask_saves_and_costs_what_macs_model_says(norm, tmp_path):
    model = functional_vit(norm)
    plan = tfprune.plan(model, 0.5, prune_spanning=True)
    slim, change = rebuilt(model, plan)
    assert slim.get_layer("patches").filters == 8 and slim.get_layer("ln").weights[0].shape == (8,)
    assert slim.get_layer("positions").weights[0].shape == (4, 8)
    assert check_equivalence(model, plan) < TOLERANCE
    assert tfprune.count_macs(slim) == MacsModel(model).macs(plan) < tfprune.count_macs(model)
    # the figure: the original and the slim model differ, by a finite amount, which rebuild reports
    assert change is not None and np.isfinite(change) and change > 1e-3
    assert change == output_change(model, slim, random_inputs(model))
    path = os.path.join(tmp_path, "slim.keras")
    slim.save(path)
    x = random_inputs(model, seed=3)
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(path)(x)), np.asarray(slim(x)), atol=1e-6)


def test_mask_returns_a_model_of_the_same_layers_with_norms_over_the_kept_channels(tmp_path):
    model = functional_vit()
    copy = tfprune.rebuild(model, tfprune.Plan({}, {}))
    plan = tfprune.plan(copy, 0.5, prune_spanning=True)
    masked = tfprune.mask(copy, plan)
    assert masked is not copy
    norm = masked.get_layer("ln")
    assert isinstance(norm, tfprune.layers.KeptChannelNormalization) and norm.kept == list(plan.keep["patches"])
    assert norm.layer is copy.get_layer("ln")  # the caller's layer, its weights shared
    assert masked.get_layer("block0_mha") is copy.get_layer("block0_mha")
    removed = np.setdiff1d(np.arange(16), plan.keep["patches"])
    assert not np.asarray(copy.get_layer("patches").kernel)[..., removed].any()  # zeroed in place, as always
    x = random_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutputChangeWarning)
        slim = tfprune.rebuild(copy, plan)
    np.testing.assert_allclose(np.asarray(masked(x)), np.asarray(slim(x)), atol=TOLERANCE)
    path = os.path.join(tmp_path, "masked.keras")
    masked.save(path)
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(path)(x)), np.asarray(masked(x)), atol=1e-6)


def test_without_spanning_groups_mask_stays_in_place_and_rebuild_is_silent():
    model = functional_vit()
    plan = tfprune.plan(model, 0.5)
    copy = tfprune.rebuild(model, tfprune.Plan({}, {}))
    assert tfprune.mask(copy, plan) is copy
    assert rebuilt(model, plan)[1] is None


@pytest.mark.parametrize("task", sorted(TASKS))
def test_keras_hub_classifiers_prune_their_hidden_width(task, tmp_path):
    """ViT (its ViTPatchingAndEmbedding: patch conv, class token, position table) and BERT (token, position and
    segment embeddings, the embeddings' LayerNorm) inside KerasHub's classifiers."""
    model = random_weights(TASKS[task]())
    graph = tfprune.ChannelGraph(model)
    hidden = graph.spanning_groups
    assert len(hidden) == 1 and hidden[0].width == 16, str(graph)
    plan = tfprune.plan(model, 0.5, graph=graph, prune_spanning=True)
    assert len(plan.keep[hidden[0].name]) == 8
    x = inputs_for(model)
    assert check_equivalence(model, plan, inputs=x) < TOLERANCE
    slim, change = rebuilt(model, plan)
    assert change is not None and np.isfinite(change) and change > 0
    assert tfprune.count_macs(slim) == MacsModel(model, graph=graph).macs(plan) < tfprune.count_macs(model)
    path = os.path.join(tmp_path, "slim.keras")
    slim.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(keras.tree.flatten(loaded(x)), keras.tree.flatten(slim(x)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm", [L.LayerNormalization, L.RMSNormalization], ids=["layer_norm", "rms_norm"])
def test_a_tied_embedding_prunes_with_its_output_projection(norm):
    model = tied_language_model(norm)
    graph = tfprune.ChannelGraph(model)
    assert [g.name for g in graph.spanning_groups] == ["embed"]
    assert not graph["embed:logits"].prunable  # the vocabulary stays
    plan = tfprune.plan(model, 0.5, graph=graph, prune_spanning=True)
    tokens = np.random.default_rng(0).integers(0, 20, (2, 6)).astype("int32")
    assert check_equivalence(model, plan, inputs=tokens) < TOLERANCE
    slim, change = rebuilt(model, plan)
    assert slim.get_layer("embed").embeddings.shape == (20, 6) and slim.output.shape == (None, 6, 20)
    assert change is not None and change > 0


def test_mask_refuses_a_group_normalization_it_cannot_mask_exactly():
    inputs = keras.Input((8, 8, 3))
    x = L.GroupNormalization(groups=2, name="norm")(L.Conv2D(8, 3, padding="same", name="conv")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D(name="pool")(x)))
    plan = tfprune.plan(model, {"conv": 0.5})
    with pytest.raises(tfprune.PlanError, match="'norm' \\(GroupNormalization\\) computes over as a whole"):
        tfprune.mask(model, plan)
    assert np.asarray(model.get_layer("conv").kernel).all()  # refused before any weight was zeroed


def test_token_and_position_embedding_is_opened_and_its_tables_sliced(tmp_path):
    inputs = keras.Input((6,), dtype="int32", name="tokens")
    x = keras_hub.layers.TokenAndPositionEmbedding(20, 6, 12, name="tpe")(inputs)
    x = L.GlobalAveragePooling1D(name="pool")(L.LayerNormalization(name="ln")(x))
    model = random_weights(keras.Model(inputs, L.Dense(3, name="head")(x), name="token_and_position"))
    plan = tfprune.plan(model, 0.5, prune_spanning=True)
    assert len(plan.keep["tpe/token_embedding"]) == 6
    tokens = np.random.default_rng(0).integers(0, 20, (2, 6)).astype("int32")
    assert check_equivalence(model, plan, inputs=tokens) < TOLERANCE
    slim, change = rebuilt(model, plan)
    assert change is not None and change > 0
    path = os.path.join(tmp_path, "slim.keras")
    slim.save(path)
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(path)(tokens)), np.asarray(slim(tokens)), atol=1e-6)
