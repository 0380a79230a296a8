from pathlib import Path

import keras
import numpy as np
import pytest

import tfprune
from tfprune.layers import MarkovChannelGate
from tfprune.layers.markov_channel_gate import width_steps


def _gate(channels=20, width_range=(0.1, 1.0, 0.1), seed=0, **kwargs):
    gate = MarkovChannelGate(channels, width_range, **kwargs)
    gate.build((None, channels))
    gate.alpha.assign(np.random.default_rng(seed).normal(0.5, 1.5, gate.n_groups).astype("float32"))
    return gate


def test_public_name():
    assert tfprune.layers.MarkovChannelGate is MarkovChannelGate


def test_width_steps():
    assert width_steps(20, (0.1, 1.0, 0.1)) == (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)
    assert width_steps(10, (0.25, 1.0, 0.25)) == (2, 5, 8, 10)  # round(2.5) and round(7.5) go to even
    assert width_steps(4, (0.1, 1.0, 0.1)) == (1, 2, 3, 4)  # duplicates merged, at least one channel
    assert width_steps(64, (0.3, 1.0, 0.3)) == (19, 38, 58, 64)  # a step that does not divide the range
    gate = MarkovChannelGate(20)
    assert gate.min_channels == 2 and gate.n_groups == 9 and sum(gate.group_sizes) == 18


def test_expected_width_is_the_monte_carlo_mean_of_sampled_widths():
    gate = _gate()
    seed = keras.random.SeedGenerator(1)
    draws = keras.ops.convert_to_numpy(gate.sample_width(seed, samples=20000))
    assert keras.ops.shape(gate.sample_width(seed)) == ()
    assert set(np.unique(draws)) <= set(gate.steps)
    expected = float(gate.expected_width())
    assert abs(draws.mean() - expected) <= 0.01 * expected, (draws.mean(), expected)


def test_marginals_non_increasing_and_keep_probability_per_channel():
    gate = _gate(seed=3, channel_order=np.random.default_rng(0).permutation(20))
    q = keras.ops.convert_to_numpy(gate.marginals())
    assert np.all(np.diff(q) <= 0) and np.all((q > 0) & (q < 1))
    keep = keras.ops.convert_to_numpy(gate.keep_probability())
    in_order = keep[list(gate.channel_order)]
    assert np.all(np.diff(in_order) <= 0)  # non-increasing along the channel order
    np.testing.assert_allclose(in_order, np.repeat(np.concatenate([[1.0], q]), (2,) + gate.group_sizes), rtol=1e-6)
    np.testing.assert_allclose(keep.sum(), float(gate.expected_width()), rtol=1e-6)


def expected_width_gradient(gate):
    """d expected_width / d alpha, on the backend in use."""
    if keras.backend.backend() == "jax":
        import jax

        def width(alpha):
            with keras.StatelessScope(state_mapping=[(gate.alpha, alpha)]):
                return gate.expected_width()

        return np.asarray(jax.grad(width)(gate.alpha.value))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        width = gate.expected_width()
    return tape.gradient(width, gate.alpha).numpy()


def test_expected_width_gradient_matches_the_analytic_one():
    gate = _gate(seed=5)
    grad = expected_width_gradient(gate)
    p = 1 / (1 + np.exp(-gate.alpha.numpy().astype(np.float64)))
    q = np.cumprod(p)
    sizes = np.array(gate.group_sizes)
    analytic = [(1 - p[j]) * np.sum(sizes[j:] * q[j:]) for j in range(gate.n_groups)]
    np.testing.assert_allclose(grad, analytic, rtol=1e-5)


def test_saturated_alpha_gives_the_extreme_widths():
    # sigmoid(±50) is 1 − 2e-22 and 2e-22: in float32, 1.0 and ~0 with the usual kernels, but a backend's sigmoid
    # approximation may give 1 − 2⁻²⁴ instead, which moves the width (2 + 2 × nine marginals, a float32 sum) by 3e-7
    # of it; widths one step away (18, 4) are 10% and 100% off.
    gate = _gate()
    gate.alpha.assign(np.full(gate.n_groups, 50.0, "float32"))
    assert float(gate.expected_width()) == pytest.approx(20, rel=1e-6)
    gate.alpha.assign(np.full(gate.n_groups, -50.0, "float32"))
    assert float(gate.expected_width()) == pytest.approx(2, rel=1e-6)


def test_markov_and_mask_modes():
    order = [3, 1, 4, 0, 2, 5, 7, 6, 9, 8]
    gate = _gate(10, (0.2, 1.0, 0.2), channel_order=order)
    x = np.random.default_rng(0).normal(size=(3, 4, 10)).astype("float32")
    y = keras.ops.convert_to_numpy(gate(x))
    np.testing.assert_allclose(y, x * keras.ops.convert_to_numpy(gate.keep_probability()), rtol=1e-6)
    gate.set_mask(4)
    y = keras.ops.convert_to_numpy(gate(x))
    kept = np.zeros(10, bool)
    kept[order[:4]] = True
    np.testing.assert_array_equal(y, x * kept)
    gate.set_full()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(gate(x)), x)
    gate.set_markov()
    assert int(gate.mode.numpy()) == 0


def test_one_trace_serves_every_sub_network():
    traces = []

    class CountingGate(MarkovChannelGate):
        def call(self, inputs):
            traces.append(1)
            return super().call(inputs)

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(10, 3, name="conv")(inputs)
    gate = CountingGate(10, (0.2, 1.0, 0.2), name="gate")
    outputs = keras.layers.GlobalAveragePooling2D()(gate(x))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    model.predict_on_batch(x)
    before = len(traces)
    results = []
    for width in (2, 4, 10):
        gate.set_mask(width)
        results.append(model.predict_on_batch(x))
    gate.set_markov()
    results.append(model.predict_on_batch(x))
    assert len(traces) == before
    assert np.count_nonzero(results[0][0]) == 2 and np.count_nonzero(results[1][0]) == 4
    np.testing.assert_allclose(results[2], keras.layers.GlobalAveragePooling2D()(model.get_layer("conv")(x)),
                               rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_keras_file(tmp_path):
    gate = MarkovChannelGate(12, (0.25, 1.0, 0.25), channel_order=list(range(11, -1, -1)), name="g")
    clone = MarkovChannelGate.from_config(gate.get_config())
    assert clone.get_config() == gate.get_config() and clone.steps == gate.steps == (3, 6, 9, 12)

    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(12, 3, name="conv")(inputs)
    x = MarkovChannelGate(12, (0.25, 1.0, 0.25), channel_order=list(range(11, -1, -1)), name="gate")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    gate = model.get_layer("gate")
    gate.alpha.assign([1.0, -0.5, 2.0])
    data = np.random.default_rng(1).normal(size=(2, 6, 6, 2)).astype("float32")
    markov = model.predict_on_batch(data)
    model.save(tmp_path / "gated.keras")
    loaded = keras.models.load_model(tmp_path / "gated.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(data), markov, rtol=1e-6)
    assert isinstance(loaded.get_layer("gate"), MarkovChannelGate)
    gate.set_mask(6)
    masked = model.predict_on_batch(data)
    model.save(tmp_path / "masked.keras")
    loaded = keras.models.load_model(tmp_path / "masked.keras")
    assert int(loaded.get_layer("gate").width.numpy()) == 6 and int(loaded.get_layer("gate").mode.numpy()) == 1
    np.testing.assert_allclose(loaded.predict_on_batch(data), masked, rtol=1e-6)


@pytest.mark.parametrize("width_range, message", [
    ((0.5, 0.2, 0.1), "increasing"),
    ((0.0, 1.0, 0.1), "increasing"),
    ((0.1, 0.9, 0.1), "end at 1.0"),
    ((0.1, 1.0, 0.0), "step"),
    ((0.1, 1.0, 2.0), "step"),
    ((0.1, 1.0), "three numbers"),
    ("wide", "three numbers"),
])
def test_bad_width_range(width_range, message):
    with pytest.raises(ValueError, match=message):
        MarkovChannelGate(16, width_range)


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels must be an integer"):
        MarkovChannelGate(0)
    with pytest.raises(ValueError, match="permutation"):
        MarkovChannelGate(4, channel_order=[0, 1, 1, 2])
    gate = MarkovChannelGate(4)
    with pytest.raises(RuntimeError, match="not built"):
        gate.set_mask(2)
    with pytest.raises(ValueError, match="made for 4 channels"):
        gate(np.ones((1, 5), "float32"))
    gate = _gate(4)
    with pytest.raises(ValueError, match=r"width must be in \[1, 4\]"):
        gate.set_mask(5)


def test_a_keras_file_saved_by_tfprune_0_1_0_still_loads():
    """`tests/data/markov_gate_v0.1.0.keras` was saved before the package was regrouped by role (the gate then lived
    in `tfprune.layers.markov_channel_gate`, as its config's `module` still says): it loads by its registered name
    and computes what it computed when saved (the float32 outputs stored beside it, to rounding)."""
    data = Path(__file__).parent / "data"
    model = keras.saving.load_model(data / "markov_gate_v0.1.0.keras")
    gate = model.get_layer("gate")
    assert isinstance(gate, MarkovChannelGate) and gate.channels == 8 and gate.steps == (2, 4, 6, 8)
    saved = np.load(data / "markov_gate_v0.1.0_io.npz")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(saved["x"])), saved["y"], rtol=1e-5, atol=1e-5)
