"""WeightSnapshot captures θ0 / θk exactly, and lottery rebuilds rewind the kept weights bit for bit."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.callbacks import WeightSnapshot


def trained(epochs, callbacks):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.Dense(1, name="out")], name="net")
    model.compile(keras.optimizers.Adam(0.05), "mse")
    rng = np.random.default_rng(0)
    initial = [w.copy() for w in model.get_weights()]
    model.fit(rng.normal(size=(32, 6)), rng.normal(size=(32, 1)), epochs=epochs, batch_size=8, verbose=0,
              callbacks=callbacks)
    return model, initial


def test_theta_zero_is_the_weights_before_the_first_step_and_rewinds_bit_for_bit():
    snapshot = WeightSnapshot(epoch=0)
    model, initial = trained(2, [snapshot])
    assert list(snapshot.weights) == [v.path for v in model.weights]
    for v, before in zip(model.weights, initial, strict=True):
        np.testing.assert_array_equal(snapshot.weights[v.path], before)
        assert not np.array_equal(v.numpy(), before)  # training moved every weight
    plan = tfprune.plan(model, 0.5)
    kept = list(plan.keep["hidden"])
    slim = tfprune.rebuild(model, plan, reinit="lottery", initial_weights=snapshot.weights)
    np.testing.assert_array_equal(slim.get_layer("hidden").kernel.numpy(), initial[0][:, kept])
    np.testing.assert_array_equal(slim.get_layer("hidden").bias.numpy(), initial[1][kept])
    np.testing.assert_array_equal(slim.get_layer("out").kernel.numpy(), initial[2][kept])


def test_theta_k_is_taken_after_epoch_k():
    after_one, after_two = WeightSnapshot(epoch=1), WeightSnapshot(epoch=2)
    _, _ = trained(2, [after_one, after_two])
    reference, _ = trained(1, [])
    for v in reference.weights:
        np.testing.assert_allclose(after_one.weights[v.path], v.numpy(), rtol=1e-6, atol=1e-7)
        assert not np.allclose(after_two.weights[v.path], v.numpy())


def test_not_captured_before_its_epoch_and_config():
    snapshot = WeightSnapshot(epoch=5, verbose=1)
    trained(2, [snapshot])
    assert snapshot.weights is None
    assert WeightSnapshot(**snapshot.get_config()).get_config() == {"epoch": 5, "verbose": 1}
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
            WeightSnapshot(epoch=bad)


def test_scratch_b_budget_scales_epochs_by_the_macs_ratio():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, name="c2")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    slim = tfprune.prune(model, 0.5)
    ratio = tfprune.count_macs(model) / tfprune.count_macs(slim)
    assert tfprune.scratch_b_epochs(30, model, slim) == int(np.ceil(30 * ratio)) > 30
    assert tfprune.scratch_b_epochs(30, model, slim, max_factor=1.5) == 45 < int(np.ceil(30 * ratio))
    assert tfprune.scratch_b_epochs(30, model, slim, max_factor=100) == int(np.ceil(30 * ratio))
    assert tfprune.scratch_b_epochs(30, model, slim, max_factor=np.int64(2)) == 60  # numpy numbers are numbers
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        tfprune.scratch_b_epochs(0, model, slim)
    for bad in (0.5, True, "2", float("nan")):
        with pytest.raises(ValueError, match="max_factor must be None or a number >= 1"):
            tfprune.scratch_b_epochs(30, model, slim, max_factor=bad)
