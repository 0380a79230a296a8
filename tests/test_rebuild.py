"""rebuild(): kinds of model, re-initialisation modes, plans as values, and the caller's model left alone."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune import Plan
from tfprune.deployment.verification import check_equivalence


def conv_net(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="conv_net")


def test_sequential_stays_sequential_and_predicts():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="d1"),
                              keras.layers.Dense(8, activation="relu", name="d2"), keras.layers.Dense(2, name="out")])
    plan = tfprune.plan(model, 0.5)
    slim = tfprune.rebuild(model, plan)
    assert isinstance(slim, keras.Sequential)
    assert [layer.units for layer in slim.layers] == [8, 4, 2]
    x = np.random.default_rng(0).normal(size=(4, 12)).astype("float32")
    masked = tfprune.mask(tfprune.rebuild(model, Plan({}, {})), plan)
    np.testing.assert_allclose(slim.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-5)


def test_keep_slices_the_trained_weights_exactly():
    model = conv_net()
    plan = Plan(keep={"c1": [1, 4, 6], "c2": [0, 5]}, widths={"c1": 8, "c2": 6})
    slim = tfprune.rebuild(model, plan)
    np.testing.assert_array_equal(slim.get_layer("c1").kernel.numpy(),
                                  model.get_layer("c1").kernel.numpy()[..., [1, 4, 6]])
    np.testing.assert_array_equal(slim.get_layer("bn1").moving_variance.numpy(),
                                  model.get_layer("bn1").moving_variance.numpy()[[1, 4, 6]])
    np.testing.assert_array_equal(slim.get_layer("c2").kernel.numpy(),
                                  model.get_layer("c2").kernel.numpy()[:, :, [1, 4, 6]][..., [0, 5]])
    # Flatten of 10x10x6 → Dense: rows are (h, w, c) in row-major order; channels 0 and 5 survive.
    rows = np.arange(600).reshape(10, 10, 6)[..., [0, 5]].ravel()
    np.testing.assert_array_equal(slim.get_layer("head").kernel.numpy(), model.get_layer("head").kernel.numpy()[rows])


def test_lottery_slices_the_snapshot_not_the_trained_weights():
    model = conv_net()
    snapshot = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1.0 for w in snapshot])  # "training"
    plan = tfprune.plan(model, 0.5)
    kept = list(plan.keep["c1"])
    for initial in (snapshot, {v.path: w for v, w in zip(model.weights, snapshot, strict=True)}):
        slim = tfprune.rebuild(model, plan, reinit="lottery", initial_weights=initial)
        np.testing.assert_array_equal(slim.get_layer("c1").kernel.numpy(), snapshot[0][..., kept])
        np.testing.assert_array_equal(slim.get_layer("c1").bias.numpy(), snapshot[1][kept])


def test_scratch_uses_fresh_initialisers_reproducibly():
    model = conv_net()
    model.set_weights([w + 5.0 for w in model.get_weights()])
    plan = tfprune.plan(model, 0.5)
    a = tfprune.rebuild(model, plan, reinit="scratch", seed=3)
    b = tfprune.rebuild(model, plan, reinit="scratch", seed=3)
    c = tfprune.rebuild(model, plan, reinit="scratch", seed=4)
    kernel = a.get_layer("c1").kernel.numpy()
    assert np.abs(kernel).max() < 1.0  # Glorot-uniform range for this shape, not the +5 trained weights
    np.testing.assert_array_equal(kernel, b.get_layer("c1").kernel.numpy())
    assert not np.array_equal(kernel, c.get_layer("c1").kernel.numpy())
    np.testing.assert_array_equal(a.get_layer("c1").bias.numpy(), 0.0)
    np.testing.assert_array_equal(a.get_layer("bn1").moving_variance.numpy(), 1.0)


def test_plan_rebuild_prune_leave_the_model_alone():
    model = conv_net()
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    tfprune.prune(model, 0.5, scope="global")
    tfprune.rebuild(model, tfprune.plan(model, 0.3, criterion="random", seed=1))
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.get_config() == config


def test_slim_weights_are_their_own_arrays():
    """rebuild reads the caller's weights without copying them: what it keeps unsliced must still be a copy."""
    model = conv_net()
    plan = Plan(keep={"c1": [0, 2]}, widths={"c1": 8})  # c2 and the head's bias are carried over whole
    snapshot = [w.copy() for w in model.get_weights()]
    for slim in (tfprune.rebuild(model, plan), tfprune.rebuild(model, plan, reinit="lottery",
                                                               initial_weights=snapshot)):
        head_bias = model.get_layer("head").bias.numpy()
        slim.get_layer("head").bias.assign(head_bias + 1.0)
        slim.get_layer("c2").kernel.assign(np.zeros(slim.get_layer("c2").kernel.shape, "float32"))
        np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), head_bias)
        for a, b in zip(model.get_weights(), snapshot, strict=True):
            np.testing.assert_array_equal(a, b)
        model.get_layer("head").bias.assign(head_bias - 1.0)  # and the other way round
        np.testing.assert_array_equal(slim.get_layer("head").bias.numpy(), head_bias + 1.0)
        model.get_layer("head").bias.assign(head_bias)


def test_plan_json_round_trip_and_reuse_on_a_copy(tmp_path):
    model = conv_net()
    plan = tfprune.plan(model, 0.4, scope="global")
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded == plan
    twin = conv_net(seed=1)  # same architecture, other weights: the plan applies by group name
    assert tfprune.rebuild(twin, loaded).count_params() == tfprune.rebuild(model, plan).count_params()


def test_scopes_and_rounding():
    model = conv_net()
    graph = tfprune.ChannelGraph(model)
    per_layer = tfprune.plan(model, 0.5, graph=graph)
    assert {k: len(v) for k, v in per_layer.keep.items()} == {"c1": 4, "c2": 3}
    rounded = tfprune.plan(model, 0.5, round_to=4, graph=graph)
    assert {k: len(v) for k, v in rounded.keep.items()} == {"c1": 4, "c2": 4}
    floor = tfprune.plan(model, 0.9, min_channels=3, graph=graph)
    assert {k: len(v) for k, v in floor.keep.items()} == {"c1": 3, "c2": 3}
    overall = tfprune.plan(model, 0.5, scope="global", graph=graph)
    assert sum(len(v) for v in overall.keep.values()) == 14 - 7


def test_global_scope_removes_the_weakest_channels_across_groups():
    model = conv_net()
    c1, c2 = model.get_layer("c1"), model.get_layer("c2")
    k1 = np.ones(c1.kernel.shape, "float32")
    k1[..., :4] = 0.01  # four weak filters in c1
    c1.kernel.assign(k1)
    c2.kernel.assign(np.ones(c2.kernel.shape, "float32"))
    plan = tfprune.plan(model, 4 / 14, scope="global", normalize=None)
    assert plan.keep["c1"] == (4, 5, 6, 7) and len(plan.keep["c2"]) == 6


def test_l1_keeps_the_largest_filters_of_a_residual_group():
    inputs = keras.Input((6, 6, 4))
    a = keras.layers.Conv2D(5, 1, name="a")(inputs)
    b = keras.layers.Conv2D(5, 1, name="b")(inputs)
    x = keras.layers.Add()([a, b])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    ka = np.ones((1, 1, 4, 5), "float32") * np.array([1, 2, 3, 4, 5], "float32")
    kb = np.ones((1, 1, 4, 5), "float32") * np.array([5, 1, 1, 1, 1], "float32")
    model.get_layer("a").kernel.assign(ka)
    model.get_layer("b").kernel.assign(kb)
    plan = tfprune.plan(model, 0.4)  # sums per channel: 6, 3, 4, 5, 6
    assert plan.keep == {"a": (0, 3, 4)}


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_every_named_criterion_prunes(criterion):
    model = conv_net()
    slim = tfprune.prune(model, 0.5, criterion=criterion, seed=0)
    assert tfprune.count_macs(slim) < tfprune.count_macs(model)


def test_a_layer_whose_automatic_config_keras_dropped_is_copied_with_its_policy():
    """`Identity(dtype=DTypePolicy(...))`, as KerasHub builds it: Keras's auto-config refuses the policy object, and
    `layer_config` recovers it with the policy serialised, keeping the layer's dtype policy."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Identity(dtype=keras.DTypePolicy("float32"), name="same")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(NotImplementedError):
        model.get_layer("same").get_config()

    slim = tfprune.rebuild(model, tfprune.plan(model, 0.5))

    assert type(slim.get_layer("same")) is keras.layers.Identity
    assert slim.get_layer("same").dtype_policy.name == "float32"
    assert slim.get_layer("same").output.shape == (None, 6, 6, 4)
    assert check_equivalence(model, tfprune.plan(model, 0.5)) < 1e-6


def test_an_inner_input_of_open_length_stays_open():
    """A nested model that takes any sequence length (a KerasHub backbone inside a model of fixed length): its slim
    copy takes any length too. Its token mask's last axis is the sequence, not channels, and is not given the
    outer model's length, which JAX could not broadcast against hidden states of open length."""
    tokens, ids = keras.Input((None, 16), name="tokens"), keras.Input((None,), dtype="int32", name="ids")
    x = keras.layers.Dense(16, name="up")(keras.layers.Dense(8, activation="relu", name="inner_dense")(tokens))
    inner = keras.Model([tokens, ids], x * keras.ops.expand_dims(keras.ops.cast(ids, x.dtype), -1), name="inner")
    outer_tokens = keras.Input((5, 16), name="outer_tokens")
    outer_ids = keras.Input((5,), dtype="int32", name="outer_ids")
    model = keras.Model([outer_tokens, outer_ids], inner([outer_tokens, outer_ids]), name="fixed_length")

    slim = tfprune.rebuild(model, tfprune.plan(model, 0.5))

    assert [tuple(t.shape) for t in slim.get_layer("inner").inputs] == [(None, None, 16), (None, None)]
    assert slim.get_layer("inner").get_layer("inner_dense").units == 4
    assert check_equivalence(model, tfprune.plan(model, 0.5)) < 1e-6


def shared_across_nesting():
    """A Dense called inside a nested sub-model and again in the model around it (as a tied embedding's reverse
    call is in KerasHub's CausalLMs): one set of weights under two paths."""
    keras.utils.set_random_seed(0)
    shared = keras.layers.Dense(8, name="shared")
    inner_inputs = keras.Input((6,), name="inner_inputs")
    inner = keras.Model(inner_inputs, keras.layers.Dense(8, activation="relu", name="mid")(shared(inner_inputs)),
                        name="inner")
    inputs = keras.Input((6,), name="x")
    x = keras.layers.Dense(6, activation="relu", name="back")(inner(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(shared(x)), name="outer")


def test_a_layer_shared_between_a_nested_model_and_the_outer_one_is_copied_once():
    model = shared_across_nesting()
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")

    copy = tfprune.rebuild(model, Plan({}, {}))

    assert copy.get_layer("inner").get_layer("shared") is copy.get_layer("shared")
    assert tfprune.count_params(copy) == tfprune.count_params(model) == 209
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)  # same sums

    graph = tfprune.ChannelGraph(model)
    assert graph.first_path("shared") == "inner/shared" and graph.first_path("head") == "head"
    # Both calls' weights are one table: its output channels are one group, its input channels another, which
    # the outer call ties to the model's input (so 'back' is fixed).
    assert graph.channels(graph.recorded("shared")["out"])[0].tolist() == [graph["inner/shared"].index] * 8
    assert not any(group.name == "back" for group in graph.prunable_groups)

    plan = tfprune.plan(model, 0.5, graph=graph)
    assert set(plan.keep) == {"inner/shared", "inner/mid"}
    slim = tfprune.rebuild(model, plan, graph=graph)
    assert slim.get_layer("inner").get_layer("shared") is slim.get_layer("shared")
    assert slim.get_layer("shared").units == 4
    assert check_equivalence(model, plan) < 1e-5  # float32 rounding of the same sums in another order
    # (No .keras round trip here: Keras 3.15 cannot load this very model, slim or not, since its format has no way
    # to say that a layer of a nested model is also the outer one's.)
