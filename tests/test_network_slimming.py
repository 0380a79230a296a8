"""NetworkSlimming: the proximal step zeroes exactly the scales it should, the plan follows the paper's rule."""

import keras
import numpy as np
import pytest

import tfprune
from tests.training_problems import regression as data
from tfprune.callbacks import NetworkSlimming


def bn_net(gammas, second_gammas=None):
    """conv → BN → ReLU (→ residual conv → BN tied to the first by an Add) → pooling → Dense."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(x))
    if second_gammas is not None:
        y = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
        y = keras.layers.BatchNormalization(name="bn2")(y)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    outputs = keras.layers.Dense(1, name="out")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    for name, values in (("bn", gammas), ("bn2", second_gammas)):
        if values is not None:
            model.get_layer(name).gamma.assign(np.asarray(values, "float32"))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


SMALL_FIRST = [1e-3] * 4 + [1.0] * 4


def test_proximal_step_makes_exactly_the_small_scales_zero_and_plan_removes_them():
    model = bn_net(SMALL_FIRST)
    slimming = NetworkSlimming(l1=1.0)
    history = model.fit(*data(), epochs=2, batch_size=16, verbose=0, callbacks=[slimming])
    gamma = model.get_layer("bn").gamma.numpy()
    assert np.all(gamma[:4] == 0)
    assert np.all(np.abs(gamma[4:]) > 0.3)
    plan = slimming.plan()
    np.testing.assert_array_equal(plan.keep["conv"], [4, 5, 6, 7])
    assert history.history["slimming_zero_scales"][-1] == pytest.approx(0.5)
    assert history.history["slimming_channels"][-1] == pytest.approx(0.5)
    assert history.history["slimming_macs"][-1] < 1
    slim = slimming.slim_model()
    assert slim.get_layer("conv").filters == 4
    assert model.get_layer("bn").gamma.constraint is None  # uninstalled after fit


def test_subgradient_shrinks_scales_without_zeroing_and_global_percentile_plan():
    plain, penalised = bn_net(SMALL_FIRST), bn_net(SMALL_FIRST)
    plain.fit(*data(), epochs=3, batch_size=16, verbose=0)
    slimming = NetworkSlimming(l1=0.05, proximal=False)
    penalised.fit(*data(), epochs=3, batch_size=16, verbose=0, callbacks=[slimming])
    shrunk, free = (np.abs(m.get_layer("bn").gamma.numpy()) for m in (penalised, plain))
    assert shrunk[4:].sum() < free[4:].sum() - 0.05
    assert np.all(shrunk != 0)
    assert penalised.get_layer("bn").gamma.regularizer is None  # uninstalled after fit
    assert len(slimming.plan().keep["conv"]) == 8  # nothing is exactly zero
    np.testing.assert_array_equal(np.sort(slimming.plan(0.5).keep["conv"]), [4, 5, 6, 7])


def test_channel_through_two_batchnorms_goes_only_when_both_scales_are_zero():
    second = [1.0] * 2 + [1e-3] * 4 + [1.0] * 2  # channels 2, 3 small in both BNs; 0, 1 and 4, 5 in one only
    model = bn_net(SMALL_FIRST, second)
    slimming = NetworkSlimming(l1=1.0)
    model.fit(*data(), epochs=2, batch_size=16, verbose=0, callbacks=[slimming])
    group = tfprune.ChannelGraph(model).groups[1]
    assert {m.layer for m in group.members} >= {"bn", "bn2"}
    kept = slimming.plan().keep[group.name]
    np.testing.assert_array_equal(kept, [0, 1, 4, 5, 6, 7])


def test_scales_of_a_model_fitted_before_are_still_thresholded():
    model = bn_net(SMALL_FIRST)
    model.fit(*data(), epochs=1, batch_size=16, verbose=0)  # a train step traced without the callback
    model.fit(*data(), epochs=1, batch_size=16, verbose=0, callbacks=[NetworkSlimming(l1=1.0)])
    assert np.all(model.get_layer("bn").gamma.numpy()[:4] == 0)
    model.get_layer("bn").gamma.assign(np.full(8, 1e-3, "float32"))
    model.fit(*data(), epochs=1, batch_size=16, verbose=0)  # the callback is gone: no more thresholding
    assert np.all(model.get_layer("bn").gamma.numpy() != 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"l1": -1}, "l1 must be a finite number >= 0"),
    ({"l1": "big"}, "l1 must be"),
    ({"proximal": "yes"}, "proximal must be True"),
    ({"min_channels": 0}, "min_channels must be an integer >= 1"),
    ({"verbose": 2}, "verbose must be 0 or 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NetworkSlimming(**kwargs)


def test_config_and_plan_before_fit():
    slimming = NetworkSlimming(l1=1e-5, proximal=False, min_channels=2)
    assert slimming.get_config() == {"l1": 1e-5, "proximal": False, "min_channels": 2, "prune_outputs": False,
                                     "backup_dir": None, "verbose": 0}
    with pytest.raises(RuntimeError, match="has not seen a model yet"):
        slimming.plan()
    with pytest.raises(ValueError, match="ratio must be a number in"):
        model = bn_net(SMALL_FIRST)
        model.fit(*data(16), epochs=1, verbose=0, callbacks=[slimming])
        slimming.plan(1.5)
