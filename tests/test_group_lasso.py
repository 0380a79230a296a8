"""GroupLasso: proximal group soft-thresholding zeroes whole filters / input channels; they become the plan."""

import keras
import numpy as np
import pytest

from tests.training_problems import regression as data
from tfprune.callbacks import GroupLasso
from tfprune.callbacks.group_lasso import _reduced_axes


def two_convs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    outputs = keras.layers.Dense(1, name="out")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def scale(model, layer, index, factor):
    kernel = model.get_layer(layer).kernel
    value = kernel.numpy()
    value[index] *= factor
    kernel.assign(value)


def test_filter_groups_reach_exactly_zero_and_become_the_plan():
    model = two_convs()
    scale(model, "conv1", (..., slice(0, 3)), 1e-3)  # filters 0-2 of conv1 tiny
    lasso = GroupLasso(strength=0.5, groups="filter")
    history = model.fit(*data(), epochs=2, batch_size=16, verbose=0, callbacks=[lasso])
    kernel = model.get_layer("conv1").kernel.numpy()
    assert np.all(kernel[..., :3] == 0)
    assert np.all(np.linalg.norm(kernel[..., 3:].reshape(-1, 5), axis=0) > 0)
    plan = lasso.plan()
    np.testing.assert_array_equal(plan.keep["conv1"], [3, 4, 5, 6, 7])
    assert lasso.slim_model().get_layer("conv1").filters == 5
    logs = history.history
    assert logs["group_lasso_channels"][-1] == pytest.approx((5 + len(plan.keep["conv2"])) / 14)
    assert 0 < logs["group_lasso_zero_groups"][-1] < 1
    assert logs["group_lasso_penalty"][-1] < logs["group_lasso_penalty"][0] * 1.5
    assert model.get_layer("conv1").kernel.constraint is None


def test_channel_groups_remove_channels_nobody_reads():
    model = two_convs()
    scale(model, "conv2", (..., slice(5, 8), slice(None)), 1e-3)  # conv2 hardly reads channels 5-7 of conv1
    lasso = GroupLasso(strength=0.5, groups="channel")
    model.fit(*data(), epochs=2, batch_size=16, verbose=0, callbacks=[lasso])
    assert np.all(model.get_layer("conv2").kernel.numpy()[:, :, 5:] == 0)
    np.testing.assert_array_equal(lasso.plan().keep["conv1"], [0, 1, 2, 3, 4])
    # conv1's filters for those channels were not penalised (channel groups only): the removal is exact anyway
    x, _ = data(8)
    slim = lasso.slim_model()
    np.testing.assert_allclose(slim(x), model(x), rtol=1e-5, atol=1e-6)


def test_penalty_as_loss_term_shrinks_group_norms():
    plain, penalised = two_convs(), two_convs()
    plain.fit(*data(), epochs=3, batch_size=16, verbose=0)
    lasso = GroupLasso(strength=0.05, groups=("filter", "channel"), proximal=False)
    history = penalised.fit(*data(), epochs=3, batch_size=16, verbose=0, callbacks=[lasso])

    def norms(m):
        return np.linalg.norm(m.get_layer("conv1").kernel.numpy().reshape(-1, 8), axis=0).sum()

    assert norms(penalised) < norms(plain) - 0.05
    assert np.all(penalised.get_layer("conv1").kernel.numpy() != 0)
    assert history.history["loss"][0] > history.history["group_lasso_penalty"][0] > 0  # the loss includes it
    assert penalised.get_layer("conv1").kernel.regularizer is None


def test_shape_and_depth_groups_regularise_without_pruning():
    model = two_convs()
    lasso = GroupLasso(strength=5.0, groups=("shape", "depth"))
    model.fit(*data(), epochs=2, batch_size=16, verbose=0, callbacks=[lasso])
    assert np.all(model.get_layer("conv1").kernel.numpy() == 0)  # a strong depth penalty zeroes whole kernels
    assert lasso.plan().keep == {}  # but only filter and channel groups are pruned


def test_plan_by_ratio_removes_the_smallest_norms_globally():
    model = two_convs()
    scale(model, "conv1", (..., slice(0, 3)), 1e-2)
    scale(model, "conv2", (..., slice(0, 2)), 1e-2)
    lasso = GroupLasso(strength=1e-4)
    model.fit(*data(16), epochs=1, verbose=0, callbacks=[lasso])
    plan = lasso.plan(ratio=5 / 14)
    np.testing.assert_array_equal(plan.keep["conv1"], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(plan.keep["conv2"], [2, 3, 4, 5])


def test_reduced_axes():
    assert _reduced_axes("filter", 4) == (0, 1, 2)
    assert _reduced_axes("channel", 4) == (0, 1, 3)
    assert _reduced_axes("shape", 4) == (3,)
    assert _reduced_axes("channel", 2) == (1,)


@pytest.mark.parametrize("kwargs, message", [
    ({"strength": -0.1}, "strength must be a finite number >= 0"),
    ({"groups": "kernel"}, "groups must be one of"),
    ({"groups": ("filter", "filter")}, "distinct"),
    ({"groups": ()}, "groups must be one of"),
    ({"proximal": 1}, "proximal must be True"),
    ({"threshold": float("nan")}, "threshold must be"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupLasso(**kwargs)


def test_config():
    config = GroupLasso(strength=1e-3, groups=("filter", "channel"), backup_dir="/tmp/x").get_config()
    assert config["groups"] == ("filter", "channel") and config["backup_dir"] == "/tmp/x"
    assert GroupLasso(**config).get_config() == config
