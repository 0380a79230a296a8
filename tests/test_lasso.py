"""He et al.'s channel pruning: LASSO selection (criterion "lasso"), least-squares reconstruction, their plumbing."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.criteria.channel_pruning.capturing import LayerInputs, NotEnoughData
from tfprune.criteria.channel_pruning.lasso import LassoSelection, lasso_keep
from tfprune.criteria.channel_pruning.patches import LinearPatches
from tfprune.criteria.channel_pruning.reconstruction import output_errors, reconstruct


def images(n, shape=(10, 10, 3), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def two_convs(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x)))


def vgg_like(seed=0):
    """Conv-BN-ReLU stages, pooling, and a Dense head without softmax (so the output error is of logits)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = inputs
    for i, width in enumerate((8, 12, 16)):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        if i == 1:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def residual_net(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="branch_1")(stem)
    y = keras.layers.Conv2D(8, 3, padding="same", name="branch_2")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([stem, y]))
    x = keras.layers.Conv2D(8, 1, name="after")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x)))


def relative_error(model, slim, x):
    a, b = np.asarray(model(x, training=False)), np.asarray(slim(x, training=False))
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# ---- known answers -------------------------------------------------------------------------------------------


def test_a_channel_that_another_stands_in_for_is_selected_away():
    """Channel 5 copies channel 2 and the next layer reads it with 0.7 × channel 2's kernel: LASSO can drop it
    at no cost (β₂ = 1.7). Both have the largest filters, so L1 keeps both and drops another channel."""
    model = two_convs()
    kernel, bias = model.get_layer("c1").get_weights()
    kernel[..., 2] *= 4
    kernel[..., 5], bias[5] = kernel[..., 2], bias[2]
    model.get_layer("c1").set_weights([kernel, bias])
    kernel, bias = model.get_layer("c2").get_weights()
    kernel[:, :, 5, :] = 0.7 * kernel[:, :, 2, :]
    model.get_layer("c2").set_weights([kernel, bias])
    lasso = LassoSelection(images=32, seed=0)
    ratio = {"c1": 1 / 6 + 1e-9}
    assert set(range(6)) - set(tfprune.plan(model, ratio, criterion=lasso, data=images(32)).keep["c1"]) == {5}
    assert set(range(6)) - set(tfprune.plan(model, ratio).keep["c1"]) not in ({2}, {5})
    assert lasso.selections["c1"]["exact"]
    np.testing.assert_allclose(lasso.selections["c1"]["beta"][2], 1.7, rtol=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_search_hits_every_requested_count(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) * rng.uniform(0.1, 3, size=12)  # correlated
    gram = z.T @ z
    for n_keep in range(1, 13):
        kept, beta, _, exact, _ = lasso_keep(gram, n_keep)
        assert exact and len(kept) == n_keep
        assert np.array_equal(kept, np.flatnonzero(beta)) or n_keep == 12


def test_identical_channels_still_give_the_count_and_say_truthfully_whether_lasso_gave_it():
    """Three identical channels: in exact arithmetic one coefficient carries them all, but the eigendecomposition
    rounds the three columns of the design apart by a few ulps, and then some CPUs' kernels do find two non-zero
    coefficients. Either way the count is met, and `exact` says which happened."""
    z = np.random.default_rng(0).normal(size=(100, 1))
    gram = np.tile(z, (1, 3)).T @ np.tile(z, (1, 3))
    kept, beta, _, exact, _ = lasso_keep(gram, 2)
    assert len(kept) == 2 and len(set(kept.tolist())) == 2 and set(kept.tolist()) <= {0, 1, 2}
    assert exact == (np.count_nonzero(beta) == 2)
    if exact:
        assert kept.tolist() == np.flatnonzero(beta).tolist()


def test_counts_lasso_did_not_give_are_reported_and_still_met():
    """With no bisection step, the only α tried (1e-12 of the one that zeroes everything) keeps all four of four
    well-conditioned channels: 2 is not a count LASSO gave, so the solution is trimmed and `exact` is False."""
    z = np.random.default_rng(0).normal(size=(200, 4)) * [1.0, 3.0, 0.5, 2.0]
    kept, beta, _, exact, _ = lasso_keep(z.T @ z, 2, max_steps=0)
    assert np.count_nonzero(beta) == 4 and not exact
    assert kept.tolist() == [1, 3]  # the two largest contributions |β_c|·||Z_c||, far apart (scales 3 and 2 vs 1, 0.5)


def test_plan_keeps_exactly_the_requested_count_in_every_group():
    model = vgg_like()
    lasso = LassoSelection(images=24, seed=0)
    plan = tfprune.plan(model, 0.4, criterion=lasso, data=images(24, (12, 12, 3)))
    assert {k: len(v) for k, v in plan.keep.items()} == {"conv0": 5, "conv1": 8, "conv2": 10}
    assert all(s["exact"] for s in lasso.selections.values())


def test_global_scope_ranks_by_the_lasso_path():
    model = vgg_like()
    lasso = LassoSelection(images=24, seed=0)
    plan = tfprune.plan(model, 0.4, criterion=lasso, scope="global", data=images(24, (12, 12, 3)))
    assert sum(len(v) for v in plan.keep.values()) == 36 - 14  # floor(0.4 × 36) channels removed in all
    assert not lasso.selections  # no per-group target count in global scope


def test_reconstruction_beats_l1_pruning_at_the_same_width():
    """Relative error of the logits on held-out inputs, and of every refitted layer's output."""
    model = vgg_like()
    fit, held_out = images(160, (12, 12, 3), seed=1), images(64, (12, 12, 3), seed=2)
    l1_plan = tfprune.plan(model, 0.5)
    l1 = tfprune.rebuild(model, l1_plan)
    lasso = LassoSelection(images=160, seed=0)
    he = tfprune.prune(model, 0.5, criterion=lasso, data=fit)
    he_plan = tfprune.plan(model, 0.5, criterion=LassoSelection(images=160, seed=0), data=fit)
    assert tfprune.count_macs(he) == tfprune.count_macs(l1)
    l1_error, he_error = relative_error(model, l1, held_out), relative_error(model, he, held_out)
    assert he_error < 0.6 * l1_error, (he_error, l1_error)
    l1_layers = output_errors(model, l1, l1_plan, held_out, images=64, seed=3)
    he_layers = output_errors(model, he, he_plan, held_out, images=64, seed=3)
    assert set(he_layers) == {f.path for f in lasso.reconstruction.fits} == {"conv1", "conv2", "logits"}
    for path in he_layers:
        assert he_layers[path] < l1_layers[path], (path, he_layers[path], l1_layers[path])
    for f in lasso.reconstruction.fits:
        assert f.error_after < f.error_before


def test_slim_shapes_saving_and_the_callers_model_untouched(tmp_path):
    model = vgg_like()
    before = [w.copy() for w in model.get_weights()]
    x = images(256, (12, 12, 3))  # the default number of images of criterion "lasso"
    slim = tfprune.prune(model, 0.5, criterion="lasso", data=x, seed=0)
    plan = tfprune.plan(model, 0.5, criterion="lasso", data=x, seed=0)
    sliced = tfprune.rebuild(model, plan)
    assert [w.shape for w in slim.weights] == [w.shape for w in sliced.weights]
    assert not np.allclose(slim.get_layer("conv1").kernel.numpy(), sliced.get_layer("conv1").kernel.numpy())
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    slim.save(tmp_path / "slim.keras")
    loaded = keras.saving.load_model(tmp_path / "slim.keras")
    np.testing.assert_allclose(loaded(x[:4]), slim(x[:4]), rtol=1e-5, atol=1e-5)


def test_residual_groups_are_selected_over_all_their_consumers_and_refitted():
    model = residual_net()
    x = images(64, (8, 8, 3))
    lasso = LassoSelection(images=64, seed=0)
    slim = tfprune.prune(model, 0.5, criterion=lasso, data=x)
    assert sorted(lasso.selections["stem"]["consumers"]) == ["after", "branch_1"]  # the group the Add ties
    assert {f.path for f in lasso.reconstruction.fits} == {"branch_1", "branch_2", "after", "head"}
    assert all(f.error_after < f.error_before for f in lasso.reconstruction.fits)
    assert slim.get_layer("after").kernel.shape == (1, 1, 4, 4)


def test_depthwise_layers_are_looked_through_and_left_sliced():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="expand")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(4, 1, name="project")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x)))
    lasso = LassoSelection(images=32, seed=0)
    tfprune.prune(model, {"expand": 0.5}, criterion=lasso, data=images(32, (8, 8, 3)))
    assert lasso.selections["expand"]["consumers"] == ["project"]
    assert [f.path for f in lasso.reconstruction.fits] == ["project"]
    assert lasso.reconstruction.skipped == {"depthwise": "not a plain convolution or Dense layer (DepthwiseConv2D)"}


# ---- sampling --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, shape", [
    (lambda: keras.layers.Conv2D(3, 3, strides=2, padding="same"), (9, 7, 4)),
    (lambda: keras.layers.Conv2D(3, (3, 2), dilation_rate=2, padding="same"), (8, 8, 2)),
    (lambda: keras.layers.Conv2D(3, 3, strides=(2, 1), padding="valid"), (9, 8, 2)),
    (lambda: keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2), (10, 2)),
    (lambda: keras.layers.Conv3D(2, 2, padding="same"), (5, 4, 3, 2)),
    (lambda: keras.layers.Dense(3), (4, 5)),
    (lambda: keras.layers.Dense(3), (6,)),
])
def test_sampled_patches_times_the_kernel_are_the_layer_output(make, shape):
    layer = make()
    x = images(3, shape)
    y = np.asarray(layer(x))
    geometry = LinearPatches(layer, shape)
    assert geometry.output_spatial == y.shape[1:-1]
    where = geometry.sample_positions(3, 4, np.random.default_rng(0))
    index = (np.arange(3)[:, None], *np.moveaxis(where, -1, 0))
    np.testing.assert_allclose(geometry.linear_output(geometry.extract(x, where), *geometry.weights(layer)),
                               y[index].reshape(-1, y.shape[-1]), rtol=1e-4, atol=1e-4)


def test_layer_inputs_reads_nested_models():
    inner_in = keras.Input((6, 6, 4))
    inner = keras.Model(inner_in, keras.layers.Conv2D(2, 1, name="conv")(inner_in), name="inner")
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 1, name="first")(inputs)
    model = keras.Model(inputs, inner(x))
    x = images(5, (6, 6, 3))
    (batch,) = LayerInputs(model, ["inner/conv"]).batches(x, batch_size=8)
    np.testing.assert_allclose(batch["inner/conv"], model.get_layer("first")(x), rtol=1e-5, atol=1e-6)


# ---- errors ----------------------------------------------------------------------------------------------------


def test_clear_errors():
    model = two_convs()
    with pytest.raises(ValueError, match="needs data"):
        tfprune.plan(model, 0.5, criterion="lasso")
    with pytest.raises(NotEnoughData, match="has 10 examples but 256"):
        tfprune.plan(model, 0.5, criterion="lasso", data=images(10))
    with pytest.raises(ValueError, match="refits the kept weights"):
        tfprune.prune(model, 0.5, criterion="lasso", data=images(10), reinit="scratch")
    with pytest.raises(ValueError, match="images must be an integer"):
        LassoSelection(images=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    x = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(x)
    grouped = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"Group 'c' is read by no plain .*'grouped': a grouped convolution"):
        tfprune.plan(grouped, {"c": 0.5}, criterion=LassoSelection(images=4), data=images(4, (6, 6, 4)))


def test_a_layer_with_too_few_samples_is_left_sliced_with_a_warning():
    model = two_convs()  # head reads a Flatten of 6x6x4: 4 channels × 36 positions + bias per output
    plan = tfprune.Plan(keep={"c2": [0, 1]}, widths={"c2": 4})
    slim = tfprune.rebuild(model, plan)
    sliced = slim.get_layer("head").kernel.numpy().copy()
    with pytest.warns(UserWarning, match="'head' is not refitted: 20 sampled positions for 73 unknowns"):
        report = reconstruct(model, slim, plan, images(20), images=20)
    assert "head" in report.skipped and not report.fits
    np.testing.assert_array_equal(slim.get_layer("head").kernel.numpy(), sliced)


def test_concatenated_groups_and_sequential_conv1d():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(4, 1, activation="relu", name="b")(inputs)
    x = keras.layers.Conv2D(5, 3, name="reader")(keras.layers.Concatenate()([a, b]))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x)))
    lasso = LassoSelection(images=32, seed=0)
    slim = tfprune.prune(model, 0.5, criterion=lasso, data=images(32, (8, 8, 3)))
    assert slim.get_layer("reader").kernel.shape == (3, 3, 5, 3)  # 3 of 6 + 2 of 4 in, 3 of 5 out
    assert lasso.selections["a"]["consumers"] == lasso.selections["b"]["consumers"] == ["reader"]
    assert [f.path for f in lasso.reconstruction.fits] == ["reader", "head"]
    assert all(f.error_after < f.error_before for f in lasso.reconstruction.fits)

    sequential = keras.Sequential([keras.Input((16, 2)), keras.layers.Conv1D(8, 3, activation="relu", name="c1"),
                                   keras.layers.Conv1D(4, 3, padding="causal", name="c2"),
                                   keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2, name="out")])
    lasso = LassoSelection(images=32, seed=0)
    slim = tfprune.prune(sequential, 0.5, criterion=lasso, data=images(32, (16, 2)))
    assert isinstance(slim, keras.Sequential) and slim.get_layer("c2").kernel.shape == (3, 4, 2)
    assert [f.path for f in lasso.reconstruction.fits] == ["c2", "out"]


def test_shared_layers_are_counted_and_not_refitted():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 1, name="c")(inputs)
    shared = keras.layers.Conv2D(4, 1, name="shared")
    x = shared(shared(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x)))
    taps = LayerInputs(model, ["shared"])
    list(taps.batches(images(2, (6, 6, 3))))
    assert taps.calls == {"shared": 2}
    plan = tfprune.Plan(keep={"c": [0, 1]}, widths={"c": 4})
    report = reconstruct(model, tfprune.rebuild(model, plan), plan, images(8, (6, 6, 3)), images=8)
    assert report.skipped == {"shared": "shared: called 2 times"}
    assert [f.path for f in report.fits] == ["head"]
