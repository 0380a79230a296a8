"""What ChannelGraph groups together, and how rebuild slices along those groups: one small model per rule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune

L = keras.layers


def randomize(model, seed=0):
    """Random weights everywhere (positive BN variances), so that no channel is trivially zero."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        low = 0.5 if v.name == "moving_variance" else -1.0
        v.assign(rng.uniform(low, 1.0, v.shape).astype(v.dtype))
    return model


def head(x, units=2):
    """A global-average-pooled Dense head, so that the layers before it are prunable."""
    return L.Dense(units, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))


def assert_rebuild_predicts_like_mask(model, plan, shape, copy=None):
    """rebuild(mask(copy)) predicts what mask(copy) predicts, and the slim model is smaller.

    `copy` is a second build of the model, for models keras.models.clone_model refuses (a Python lambda)."""
    masked = copy or keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    tfprune.mask(masked, plan)
    slim = tfprune.rebuild(masked, plan)
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
    expected, actual = np.asarray(masked(x)), np.asarray(slim(x))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert slim.count_params() < model.count_params()
    return slim


def members(group):
    return {(m.layer, m.side) for m in group.members}


def test_residual_add_ties_two_convs_into_one_group():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(8, 3, padding="same", name="b")(L.ReLU(name="relu")(a))
    x = L.Add(name="add")([a, b])
    model = randomize(keras.Model(inputs, head(L.Conv2D(5, 1, name="c")(x))))

    graph = tfprune.ChannelGraph(model)

    assert "b" not in graph  # b's channels are a's channels
    group = graph["a"]
    assert group.prunable and group.width == 8
    assert {("a", "out"), ("b", "out"), ("b", "in"), ("c", "in")} <= members(group)
    plan = tfprune.Plan(keep={"a": [1, 4, 6]}, widths={"a": 8})
    slim = assert_rebuild_predicts_like_mask(model, plan, (8, 8, 3))
    assert slim.get_layer("a").filters == slim.get_layer("b").filters == 3
    np.testing.assert_array_equal(slim.get_layer("b").bias.numpy(), model.get_layer("b").bias.numpy()[[1, 4, 6]])


def test_concatenate_keeps_separate_groups_and_slices_the_consumer_by_offsets():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(6, 1, name="b")(inputs)
    x = L.Concatenate(name="cat")([a, b])
    model = randomize(keras.Model(inputs, head(L.Conv2D(5, 3, padding="same", name="consumer")(x))))

    graph = tfprune.ChannelGraph(model)

    assert graph["a"].width == 4 and graph["b"].width == 6
    assert graph["a"] is not graph["b"]
    assert ("consumer", "in") in members(graph["a"]) and ("consumer", "in") in members(graph["b"])
    plan = tfprune.Plan(keep={"a": [0, 2], "b": [1, 3, 5]}, widths={"a": 4, "b": 6})
    slim = assert_rebuild_predicts_like_mask(model, plan, (8, 8, 3))
    rows = [0, 2, 4 + 1, 4 + 3, 4 + 5]  # b's channels start at offset 4 of the concatenation
    np.testing.assert_array_equal(slim.get_layer("consumer").kernel.numpy(),
                                  model.get_layer("consumer").kernel.numpy()[:, :, rows, :])


def test_add_after_concatenate_ties_the_branches_to_the_other_input_and_keeps_one_channel_per_branch():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(2, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(3, 1, name="b")(inputs)
    c = L.Conv2D(5, 3, padding="same", name="c")(inputs)
    x = L.Add(name="add")([L.Concatenate(name="cat")([a, b]), c])
    model = randomize(keras.Model(inputs, head(x)))

    graph = tfprune.ChannelGraph(model)

    group = graph["a"]  # a's 2 channels and b's 3 are c's 5
    assert group.width == 5 and "b" not in graph and "c" not in graph
    assert [(path, channels.tolist()) for path, channels in group.parts] == [("a", [0, 1]), ("b", [2, 3, 4])]
    with pytest.raises(tfprune.PlanError, match="removes all the channels of layer 'a'"):
        tfprune.Plan(keep={"a": [2, 3]}, widths={"a": 5}).validate(graph)
    for seed in range(10):  # removing 4 of 5 would empty a branch: the plan keeps one channel of each
        plan = tfprune.plan(model, 0.8, criterion="random", seed=seed, graph=graph)
        kept = set(plan.keep["a"])
        assert len(kept) == 2 and kept & {0, 1} and kept & {2, 3, 4}
    slim = assert_rebuild_predicts_like_mask(model, plan, (8, 8, 3))
    assert (slim.get_layer("a").filters, slim.get_layer("b").filters, slim.get_layer("c").filters) == (1, 1, 2)


def test_branches_feeding_a_grouped_conv_keep_a_channel_each_and_equal_counts_per_block():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(1, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(1, 1, name="b")(inputs)
    d = L.Conv2D(4, 1, name="d")(inputs)
    c = L.Conv2D(6, 3, padding="same", name="c")(inputs)
    x = L.Add(name="add")([L.Concatenate(name="cat")([a, b, d]), c])
    model = randomize(keras.Model(inputs, head(L.Conv2D(4, 3, padding="same", groups=2, name="grouped")(x))))

    graph = tfprune.ChannelGraph(model)

    group = graph["a"]
    np.testing.assert_array_equal(group.blocks, [0, 0, 0, 1, 1, 1])
    assert [path for path, _ in group.parts] == ["a", "b", "d"]
    for seed in range(10):  # asked to keep 2 (one per block), it must keep a's and b's only channels, both in block 0
        kept = tfprune.plan(model, {"a": 0.67}, criterion="random", seed=seed, graph=graph).keep["a"]
        assert len(kept) == 4 and {0, 1} <= set(kept), kept
        assert np.bincount(group.blocks[list(kept)]).tolist() == [2, 2]
    plan = tfprune.plan(model, {"a": 0.67}, criterion="random", seed=0, graph=graph)
    assert_rebuild_predicts_like_mask(model, plan, (8, 8, 3))


def test_flatten_dense_loses_height_times_width_rows_per_removed_channel():
    inputs = keras.Input((6, 5, 2))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.Flatten(name="flatten")(x)
    model = randomize(keras.Model(inputs, L.Dense(3, name="dense")(x)))

    plan = tfprune.Plan(keep={"conv": [0, 3]}, widths={"conv": 4})
    slim = assert_rebuild_predicts_like_mask(model, plan, (6, 5, 2))

    kernel = model.get_layer("dense").kernel.numpy()
    slim_kernel = slim.get_layer("dense").kernel.numpy()
    assert kernel.shape[0] - slim_kernel.shape[0] == 2 * 6 * 5  # two channels removed, H*W rows each
    np.testing.assert_array_equal(slim_kernel, kernel[np.isin(np.arange(kernel.shape[0]) % 4, [0, 3])])


def test_depthwise_multiplier_2_ties_two_outputs_to_each_input():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(3, 3, padding="same", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(x)
    model = randomize(keras.Model(inputs, head(L.Conv2D(4, 1, name="pointwise")(x))))

    graph = tfprune.ChannelGraph(model)

    assert "depthwise" not in graph  # the depthwise outputs are the conv's channels, each twice
    assert graph["conv"].width == 3
    assert {("depthwise", "in"), ("depthwise", "out"), ("pointwise", "in")} <= members(graph["conv"])
    plan = tfprune.Plan(keep={"conv": [0, 2]}, widths={"conv": 3})
    slim = assert_rebuild_predicts_like_mask(model, plan, (8, 8, 3))
    depthwise = slim.get_layer("depthwise")
    assert depthwise.kernel.shape == (3, 3, 2, 2)
    np.testing.assert_array_equal(depthwise.bias.numpy(), model.get_layer("depthwise").bias.numpy()[[0, 1, 4, 5]])
    assert slim.get_layer("pointwise").kernel.shape == (1, 1, 4, 4)


def test_grouped_conv_group_has_blocks_and_plans_keep_equal_counts_per_block():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="conv")(inputs)
    x = L.Conv2D(9, 3, padding="same", groups=3, name="grouped")(x)
    model = randomize(keras.Model(inputs, head(L.Conv2D(4, 1, name="pointwise")(x))))

    graph = tfprune.ChannelGraph(model)

    np.testing.assert_array_equal(graph["conv"].blocks, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(graph["grouped"].blocks, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    for seed in range(5):
        plan = tfprune.plan(model, 0.5, criterion="random", seed=seed, graph=graph)
        for name in ("conv", "grouped"):
            counts = np.bincount(graph[name].blocks[list(plan.keep[name])], minlength=3)
            assert len(set(counts.tolist())) == 1 and counts[0] < graph[name].width // 3, (name, counts)
    slim = assert_rebuild_predicts_like_mask(model, plan, (8, 8, 3))
    assert slim.get_layer("grouped").groups == 3
    with pytest.raises(tfprune.PlanError, match="same number of channels"):
        tfprune.Plan(keep={"conv": [0, 1, 2, 4]}, widths={"conv": 6}).validate(graph)


class ChannelScale(L.Layer):
    """A custom layer tfprune has no rule for."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


# A Lambda that mixes channels with a TensorFlow op (so that it can be neither traced nor shown to act per channel).
@pytest.mark.parametrize("make", [
    pytest.param(lambda: L.Lambda(lambda t: 2.0 * tf.roll(t, 1, axis=-1), name="odd"), id="lambda",
                 marks=pytest.mark.tensorflow_only),
    pytest.param(lambda: ChannelScale(name="odd"), id="custom")])
def test_unknown_layer_is_a_boundary_and_the_model_still_rebuilds(make):
    def build():
        inputs = keras.Input((8, 8, 3))
        x = L.Conv2D(6, 3, padding="same", name="before")(inputs)
        x = make()(x)
        x = L.Conv2D(5, 3, padding="same", activation="relu", name="after")(x)
        return keras.Model(inputs, head(L.Conv2D(4, 1, name="last")(x)))

    model = randomize(build())

    graph = tfprune.ChannelGraph(model)

    for name in ("before", "odd"):  # the channels entering and leaving the unknown layer
        assert not graph[name].prunable
        assert any("'odd'" in reason for reason in graph[name].reasons), graph[name].reasons
    assert graph["after"].prunable and graph["last"].prunable
    with pytest.raises(tfprune.PlanError, match="cannot be pruned"):
        tfprune.plan(model, {"before": 0.5})
    plan = tfprune.plan(model, 0.5)
    assert set(plan.keep) == {"after", "last"}
    slim = assert_rebuild_predicts_like_mask(model, plan, (8, 8, 3), copy=build())
    assert type(slim.get_layer("odd")) is type(model.get_layer("odd"))
    assert slim.get_layer("before").filters == 6


def test_output_groups_are_fixed_unless_prune_outputs():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="hidden")(inputs)
    model = randomize(keras.Model(inputs, L.Conv2D(4, 1, name="out")(x)))

    graph = tfprune.ChannelGraph(model)
    assert graph["hidden"].prunable
    assert not graph["out"].prunable
    assert graph["out"].reasons == ("reaches model output 'out'",)
    with pytest.raises(tfprune.PlanError, match="reaches model output"):
        tfprune.Plan(keep={"out": [0, 1]}, widths={"out": 4}).validate(graph)

    graph = tfprune.ChannelGraph(model, prune_outputs=True)
    assert graph["out"].prunable
    plan = tfprune.plan(model, 0.5, prune_outputs=True)
    assert plan.prune_outputs and len(plan.keep["out"]) == 2
    assert tfprune.rebuild(model, plan).output.shape == (None, 8, 8, 2)


@pytest.mark.parametrize("norm", [L.LayerNormalization, lambda name: L.GroupNormalization(groups=2, name=name)],
                         ids=["layer_norm", "group_norm"])
def test_layer_and_group_normalization_mark_their_group_spanning(norm):
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = norm(name="norm")(x)
    model = keras.Model(inputs, head(L.Conv2D(4, 1, name="after")(x)))

    graph = tfprune.ChannelGraph(model)

    assert graph["conv"].prunable
    assert graph["conv"].spanning == ("norm",)
    assert graph["after"].spanning == ()
    assert "prunable*" in str(graph)


def test_group_normalization_with_two_groups_forces_even_kept_counts():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.GroupNormalization(groups=2, name="norm")(x)
    model = keras.Model(inputs, head(x))
    graph = tfprune.ChannelGraph(model)
    assert graph["conv"].n_blocks == 2

    for ratio in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        for seed in range(3):
            kept = tfprune.plan(model, ratio, criterion="random", seed=seed, graph=graph,
                                 prune_spanning=True).keep["conv"]
            assert len(kept) % 2 == 0 and len(kept) >= 8 - int(ratio * 8), (ratio, kept)
            assert np.bincount(graph["conv"].blocks[list(kept)]).tolist() == [len(kept) // 2] * 2
    with pytest.raises(tfprune.PlanError, match="same number"):
        tfprune.Plan(keep={"conv": [0, 1, 2, 4, 5]}, widths={"conv": 8}).validate(graph)


def test_str_lists_every_group_with_width_status_and_reason():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="features")(inputs)
    model = keras.Model(inputs, head(x, units=3), name="tiny")

    text = str(tfprune.ChannelGraph(model))

    lines = text.splitlines()
    assert lines[0].startswith("ChannelGraph of 'tiny': 3 groups, 1 prunable, 6 prunable channels")
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["features"][1:3] == ["6", "prunable"]
    assert rows["logits"][1:3] == ["3", "fixed"]
    assert "reaches model output 'logits'" in text
    assert any(name.startswith("input:") for name in rows)
