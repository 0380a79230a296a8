"""Criteria: known-answer cases for the data-driven criteria, their cache, and Li et al.'s filter norms."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune import criteria

RNG = np.random.default_rng(0)


def one_by_one(filters, kernel, bias=None, in_channels=2, size=8, then_conv=False):
    """input → Conv2D 1×1 (given kernel) → ReLU → [Conv2D 3×3 →] global pooling → Dense(2)."""
    inputs = keras.Input((size, size, in_channels))
    x = keras.layers.Conv2D(filters, 1, activation="relu", use_bias=bias is not None, name="conv")(inputs)
    if then_conv:
        x = keras.layers.Conv2D(4, 3, name="next")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x)))
    weights = [np.asarray(kernel, "float32").reshape(1, 1, in_channels, filters)]
    model.get_layer("conv").set_weights(weights + ([np.asarray(bias, "float32")] if bias is not None else []))
    return model


def test_rank_one_feature_map_gets_the_lowest_hrank_score():
    # Input channel 0 is noise (full-rank maps); channel 1 is an outer product u vᵀ of positive vectors (rank 1).
    n = 12
    noise = RNG.standard_normal((n, 8, 8))
    outer = np.einsum("bi,bj->bij", RNG.random((n, 8)) + 0.1, RNG.random((n, 8)) + 0.1)
    x = np.stack([noise, outer], axis=-1).astype("float32")
    # Filter 0 reads the noise, filter 1 the rank-1 channel, filter 2 both.
    model = one_by_one(3, [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], then_conv=True)  # 'next' reads the 8×8 maps
    hrank = criteria.HRank(batch_size=4, steps=None, verbose=0)
    scores = hrank(tfprune.ChannelGraph(model), tfprune.ChannelGraph(model)["conv"], model, x)
    assert scores[1] == 1.0 and scores[0] > 5 and scores[2] > 5
    assert tfprune.plan(model, 0.34, criterion=hrank, data=x).keep["conv"] == (0, 2)


def test_always_zero_channel_has_apoz_one_and_mean_activation_zero_and_goes_first():
    x = RNG.standard_normal((16, 8, 8, 2)).astype("float32")
    model = one_by_one(4, RNG.standard_normal((2, 4)), bias=[0.0, -100.0, 0.0, 0.0])
    stats = criteria.channel_statistics(model, x, ("zero_fraction", "mean_abs"))["conv"]
    assert stats["zero_fraction"][1] == 1.0 and stats["mean_abs"][1] == 0.0
    assert (stats["zero_fraction"][[0, 2, 3]] < 1).all() and (stats["mean_abs"][[0, 2, 3]] > 0).all()
    for name in ("apoz", "mean_activation"):
        kept = tfprune.plan(model, 0.25, criterion=name, data=x).keep["conv"]
        assert kept == (0, 2, 3), name
    np.testing.assert_allclose(criteria.APoZ(verbose=0)(None, tfprune.ChannelGraph(model)["conv"], model, x),
                               1 - stats["zero_fraction"])


def test_taylor_ranks_a_channel_the_loss_does_not_see_lowest():
    x = RNG.standard_normal((24, 8, 8, 2)).astype("float32")
    y = RNG.integers(0, 2, 24)
    model = one_by_one(3, [[1.0, 1.0, -1.0], [0.5, -1.0, 1.0]])
    kernel, bias = model.get_layer("head").get_weights()
    kernel[1] = 0.0  # channel 1 reaches the loss through nothing
    model.get_layer("head").set_weights([kernel, bias])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    taylor = criteria.Taylor(verbose=0)
    scores = taylor(tfprune.ChannelGraph(model), tfprune.ChannelGraph(model)["conv"], model, (x, y))
    assert scores[1] == 0.0 and (scores[[0, 2]] > 0).all()
    assert tfprune.plan(model, 0.34, criterion="taylor", data=(x, y)).keep["conv"] == (0, 2)
    # A loss given explicitly wins over the compiled one; an uncompiled model without a loss is refused.
    explicit = criteria.Taylor(loss="mse", verbose=0)
    assert explicit(None, tfprune.ChannelGraph(model)["conv"], model, (x, np.eye(2)[y]))[1] == 0.0
    with pytest.raises(ValueError, match="needs a loss"):
        tfprune.plan(one_by_one(3, np.ones((2, 3))), 0.3, criterion="taylor", data=(x, y))


def test_one_measurement_serves_several_plans_per_object_and_reset_measures_again():
    x = RNG.standard_normal((8, 8, 8, 2)).astype("float32")
    model = one_by_one(4, RNG.standard_normal((2, 4)))
    crit = criteria.MeanActivation(batch_size=4, verbose=0)
    plans = [tfprune.plan(model, r, criterion=crit, data=x) for r in (0.25, 0.5, 0.75)]
    assert crit.measurements == 1
    assert [len(p.keep["conv"]) for p in plans] == [3, 2, 1]
    tfprune.plan(model, 0.5, criterion=crit, data=x.copy())  # another data object: measured again
    assert crit.measurements == 2
    crit.reset()
    tfprune.plan(model, 0.5, criterion=crit, data=x.copy())
    assert crit.measurements == 3
    assert crit._taps.traces == 1  # the same model: the traced pass is reused
    by_name = tfprune.plan(model, 0.5, criterion="mean_activation", data=x)
    assert by_name == plans[1]


def test_data_driven_criteria_without_data_say_so():
    model = one_by_one(4, RNG.standard_normal((2, 4)))
    for name in ("mean_activation", "apoz", "hrank", "taylor"):
        with pytest.raises(ValueError, match="pass data="):
            tfprune.plan(model, 0.5, criterion=name)
    with pytest.raises(ValueError, match="batch_size"):
        criteria.HRank(batch_size=0)
    with pytest.raises(ValueError, match="Unknown criterion"):
        tfprune.plan(model, 0.5, criterion="hrnak")


def test_group_reaching_only_the_output_is_refused_by_feature_map_criteria():
    inputs = keras.Input((6,))
    model = keras.Sequential([inputs, keras.layers.Dense(4, name="d1"), keras.layers.Dense(3, name="d2")])
    x = RNG.standard_normal((5, 6)).astype("float32")
    assert tfprune.plan(model, 0.5, criterion="mean_activation", data=x).keep["d1"]
    with pytest.raises(ValueError, match="no convolution, Dense or attention layer reads"):
        tfprune.plan(model, 0.5, criterion="mean_activation", data=x, prune_outputs=True)


def residual_pair():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 1, name="b")(keras.layers.ReLU()(a))
    s = keras.layers.ReLU()(keras.layers.Add()([a, b]))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(5, 1, name="c")(s)))
    return keras.Model(inputs, outputs)


def test_l1_sums_filter_norms_over_every_producer_of_the_group():
    model = residual_pair()
    graph = tfprune.ChannelGraph(model)
    (group,) = [g for g in graph.prunable_groups if g.width == 4]  # 'a' and 'b' are tied by the Add
    expected = sum(np.abs(model.get_layer(n).kernel.numpy()).sum(axis=(0, 1, 2)) for n in ("a", "b"))
    np.testing.assert_allclose(criteria.l1(graph, group), expected, rtol=1e-6)
    np.testing.assert_allclose(criteria.FilterNorm(p=1)(graph, group), expected, rtol=1e-6)
    squares = sum((model.get_layer(n).kernel.numpy() ** 2).sum(axis=(0, 1, 2)) for n in ("a", "b"))
    np.testing.assert_allclose(criteria.l2(graph, group), np.sqrt(squares), rtol=1e-6)


def chain(separable=False):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    second = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
    x = second(8, 3, padding="same", activation="relu", name="b")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))


def test_greedy_ignores_kernels_of_channels_removed_from_the_previous_layer():
    model = chain()
    greedy = tfprune.plan(model, 0.5, criterion=criteria.FilterNorm(variant="greedy"))
    independent = tfprune.plan(model, 0.5, criterion=criteria.FilterNorm(variant="independent"))
    assert greedy.keep["a"] == independent.keep["a"]  # nothing before 'a'
    assert independent == tfprune.plan(model, 0.5, criterion="l1")
    kept_a = list(greedy.keep["a"])
    b_scores = np.abs(model.get_layer("b").kernel.numpy()[:, :, kept_a, :]).sum(axis=(0, 1, 2))
    assert greedy.keep["b"] == tuple(sorted(np.argsort(-b_scores, kind="stable")[:4]))
    kept_b = list(greedy.keep["b"])
    c_scores = np.abs(model.get_layer("c").kernel.numpy()[:, :, kept_b, :]).sum(axis=(0, 1, 2))
    assert greedy.keep["c"] == tuple(sorted(np.argsort(-c_scores, kind="stable")[:3]))
    assert greedy != independent  # with these weights the variants differ
    with pytest.raises(ValueError, match="scope='layer'"):
        tfprune.plan(model, 0.5, criterion=criteria.FilterNorm(variant="greedy"), scope="global")


def test_greedy_through_a_separable_convolution():
    model = chain(separable=True)
    greedy = tfprune.plan(model, 0.5, criterion=criteria.FilterNorm(variant="greedy"))
    kept_a = list(greedy.keep["a"])  # separable 'b' (depth multiplier 1): pointwise rows are a's channels
    b_scores = np.abs(model.get_layer("b").pointwise_kernel.numpy()[:, :, kept_a, :]).sum(axis=(0, 1, 2))
    assert greedy.keep["b"] == tuple(sorted(np.argsort(-b_scores, kind="stable")[:4]))
    slim = tfprune.rebuild(model, greedy)
    assert slim.get_layer("b").filters == 4
