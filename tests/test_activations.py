"""ActivationTaps / channel_statistics: the measured tensors and their per-channel statistics, against hand
computations with `keras.Model(inputs, intermediate tensors)`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.criteria.activations import ActivationTaps, channel_statistics

RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 8, 8, 3)).astype("float32")


def per_channel(arrays, fn):
    """Mean over every value of every array (all axes but the last) of fn(array)."""
    values = np.concatenate([fn(a).reshape(-1, a.shape[-1]) for a in arrays])
    return values.mean(axis=0)


def residual_with_submodel():
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, keras.layers.ReLU(name="inner_relu")(
        keras.layers.Conv2D(4, 3, padding="same", name="inner_conv")(inner_in)), name="inner")
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.ReLU(name="stem_relu")(keras.layers.Conv2D(4, 1, name="stem")(inputs))
    s = keras.layers.ReLU(name="post")(keras.layers.Add(name="add")([a, inner(a)]))
    c = keras.layers.Conv2D(5, 3, activation="relu", name="head_conv")(s)
    outputs = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(c))
    return keras.Model(inputs, outputs), keras.Model(inputs, [a, s, c])


def test_residual_group_through_a_nested_model_matches_hand_computation():
    model, probe = residual_with_submodel()
    a, s, c = probe.predict(X, verbose=0)
    stats = channel_statistics(model, X, ("mean_abs", "zero_fraction"), batch_size=4)
    # 'stem' and 'inner/inner_conv' are one group (the Add); it is read by inner_conv (a) and head_conv (s).
    assert "inner/inner_conv" not in stats
    np.testing.assert_allclose(stats["stem"]["mean_abs"], per_channel([a, s], np.abs), rtol=1e-5)
    np.testing.assert_allclose(stats["stem"]["zero_fraction"], per_channel([a, s], lambda v: v == 0), rtol=1e-6)
    # head_conv's channels are read by the Dense through global pooling: the pooled vectors are measured.
    pooled = c.mean(axis=(1, 2))
    np.testing.assert_allclose(stats["head_conv"]["mean_abs"], np.abs(pooled).mean(axis=0), rtol=1e-5)


def test_shared_layer_reads_two_tensors_of_one_group():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    x1 = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs))
    x2 = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same", name="b")(inputs))
    shared = keras.layers.Conv2D(6, 3, name="shared")
    y = keras.layers.Concatenate()([shared(x1), shared(x2)])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y)))
    v1, v2 = keras.Model(inputs, [x1, x2]).predict(X, verbose=0)
    stats = channel_statistics(model, X, ("mean_abs",))
    (name,) = [name for name in stats if name in ("a", "b")]  # 'a' and 'b' are one group: 'shared' reads both
    np.testing.assert_allclose(stats[name]["mean_abs"], per_channel([v1, v2], np.abs), rtol=1e-5)


def test_flatten_is_looked_through_and_rank_is_per_map():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 1, use_bias=False, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    # channel 0 copies the input, channel 1 its negative (always 0 after ReLU on positive input), channel 2 half
    model.get_layer("conv").set_weights([np.array([1.0, -1.0, 0.5]).reshape(1, 1, 1, 3)])
    rank_one = np.outer(np.arange(1, 7), np.ones(6)).reshape(1, 6, 6, 1).astype("float32")
    full_rank = (np.eye(6) + 1).reshape(1, 6, 6, 1).astype("float32")
    data = np.concatenate([rank_one, full_rank])
    stats = channel_statistics(model, data, ("rank", "zero_fraction", "mean_abs"))["conv"]
    np.testing.assert_allclose(stats["rank"], [3.5, 0.0, 3.5])  # (1 + 6) / 2 maps
    np.testing.assert_allclose(stats["zero_fraction"], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(stats["mean_abs"][2], 0.5 * data.mean(), rtol=1e-6)


def test_taylor_matches_gradient_tape_on_a_keras_model():
    model, probe = residual_with_submodel()
    y = RNG.integers(0, 2, len(X))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    stats = channel_statistics(model, (X, y), ("taylor",), loss=loss, batch_size=3)
    # By hand: the head_conv group is read by the Dense through global pooling; differentiate there.
    c = probe.predict(X, verbose=0)[2]
    pooled = c.mean(axis=(1, 2))
    kernel, bias = model.get_layer("out").get_weights()
    logits = pooled @ kernel + bias
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    gradient = (softmax - np.eye(2)[y]) @ kernel.T  # d(sum of cross-entropies)/d pooled, by hand
    expected = np.abs(pooled * gradient).mean(axis=0)
    np.testing.assert_allclose(stats["head_conv"]["taylor"], expected, rtol=1e-4)
    assert stats["stem"]["taylor"].shape == (4,) and (stats["stem"]["taylor"] > 0).all()


def test_taps_trace_once_read_only_and_see_masking():
    model, _ = residual_with_submodel()
    before = [w.copy() for w in model.get_weights()]
    taps = ActivationTaps(model)
    first = taps.channel_statistics(X, "mean_abs", batch_size=4)  # batches of 4, 4 and 2
    again = taps.channel_statistics(X, "mean_abs", batch_size=3)
    # TensorFlow traces once for every batch size; JAX once per batch shape (4, 2, then 3, 1)
    assert taps.traces == (1 if keras.backend.backend() == "tensorflow" else 4)
    np.testing.assert_allclose(first["stem"]["mean_abs"], again["stem"]["mean_abs"], rtol=1e-5)
    for w, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)
    plan = tfprune.Plan(keep={"head_conv": [0, 1, 2]}, widths={"head_conv": 5})
    tfprune.mask(model, plan)
    masked = taps.channel_statistics(tf.data.Dataset.from_tensor_slices(X).batch(5), "mean_abs")
    assert taps.traces == (1 if keras.backend.backend() == "tensorflow" else 5)
    assert (masked["head_conv"]["mean_abs"][3:] == 0).all() and (masked["head_conv"]["mean_abs"][:3] > 0).all()


def test_errors_say_what_is_wrong():
    model, _ = residual_with_submodel()
    with pytest.raises(ValueError, match="Unknown statistics"):
        channel_statistics(model, X, ("median",))
    with pytest.raises(ValueError, match="needs labels"):
        channel_statistics(model, X, ("taylor",), loss="mse")
    with pytest.raises(ValueError, match="needs a loss"):
        channel_statistics(model, (X, np.zeros(len(X))), ("taylor",))
    with pytest.raises(ValueError, match="needs data"):
        channel_statistics(model, None)


def test_map_ranks_agree_with_svd_ranks():
    from tfprune.criteria.activations import _map_ranks

    rng = np.random.default_rng(7)
    low = np.einsum("bik,bjk->bij", rng.standard_normal((6, 9, 3)), rng.standard_normal((6, 5, 3)))  # rank ≤ 3
    maps = np.stack([rng.standard_normal((6, 9, 5)), low, np.zeros((6, 9, 5)),
                     np.maximum(rng.standard_normal((6, 9, 5)), 0)], axis=-1).astype("float32")
    expected = np.linalg.matrix_rank(np.moveaxis(maps, -1, 1))  # numpy SVD, same float32 tolerance
    ranks = keras.ops.convert_to_numpy(_map_ranks(keras.ops.convert_to_tensor(maps)))
    np.testing.assert_array_equal(ranks, expected)
    ranks = keras.ops.convert_to_numpy(_map_ranks(keras.ops.convert_to_tensor(maps.transpose(0, 2, 1, 3))))
    np.testing.assert_array_equal(ranks, expected)
    assert (expected[:, 1] == 3).all() and (expected[:, 2] == 0).all()
