"""Bad input gets a precise error, and the caller's model is left as it was."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune import Plan, PlanError, UnsupportedModelError


def small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="small")


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def assert_unchanged(model, before):
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)

    def call(self, x):
        return self.conv(x)


def test_never_built_subclassed_model_is_refused_with_the_reason():
    with pytest.raises(UnsupportedModelError, match="Subclassed model .* was never built.*input_shape="):
        tfprune.ChannelGraph(Subclassed())
    with pytest.raises(UnsupportedModelError, match="never built"):
        tfprune.prune(Subclassed(), 0.5)
    model = Subclassed()
    model(np.zeros((1, 8, 8, 3), "float32"))
    assert type(tfprune.prune(model, 0.5, prune_outputs=True)).__name__ == "Functional"  # built: traced


def test_unbuilt_sequential_and_non_models_are_refused():
    with pytest.raises(UnsupportedModelError, match="no input shape yet"):
        tfprune.ChannelGraph(keras.Sequential([keras.layers.Dense(3)]))
    with pytest.raises(UnsupportedModelError, match="Expected a keras.Model"):
        tfprune.ChannelGraph("model.keras")


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True, float("nan")])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
        tfprune.plan(small_model(), ratio)


def test_bad_options_name_what_is_allowed():
    model = small_model()
    with pytest.raises(ValueError, match="scope must be one of"):
        tfprune.plan(model, 0.5, scope="network")
    with pytest.raises(ValueError, match="Unknown criterion 'l3'"):
        tfprune.plan(model, 0.5, criterion="l3")
    with pytest.raises(ValueError, match="min_channels must be an integer >= 1"):
        tfprune.plan(model, 0.5, min_channels=0)
    with pytest.raises(ValueError, match="round_to must be an integer >= 1"):
        tfprune.plan(model, 0.5, round_to=2.5)
    with pytest.raises(ValueError, match="reinit must be one of"):
        tfprune.rebuild(model, tfprune.plan(model, 0.5), reinit="fresh")
    with pytest.raises(PlanError, match="no channel group named 'c9'"):
        tfprune.plan(model, {"c9": 0.5})
    with pytest.raises(PlanError, match="'head' cannot be pruned: reaches model output"):
        tfprune.plan(model, {"head": 0.5})


def test_plan_that_empties_a_group():
    model = small_model()
    before = weights_of(model)
    plan = Plan(keep={"c1": []}, widths={"c1": 6})
    for operation in (tfprune.rebuild, tfprune.mask):
        with pytest.raises(PlanError, match="keeps no channel of group 'c1'"):
            operation(model, plan)
    assert_unchanged(model, before)


def test_plan_with_unknown_group_or_bad_indices_or_other_model():
    model = small_model()
    before = weights_of(model)
    with pytest.raises(PlanError, match="no channel group named 'conv9'"):
        tfprune.rebuild(model, Plan(keep={"conv9": [0]}, widths={"conv9": 6}))
    with pytest.raises(PlanError, match=r"distinct indices in \[0, 6\)"):
        tfprune.rebuild(model, Plan(keep={"c1": [0, 6]}, widths={"c1": 6}))
    with pytest.raises(PlanError, match=r"distinct indices in \[0, 6\)"):
        tfprune.mask(model, Plan(keep={"c1": [1, 1]}, widths={"c1": 6}))
    with pytest.raises(PlanError, match="has 6 channels in this model, but the plan was made for 8"):
        tfprune.rebuild(model, Plan(keep={"c1": [0, 1]}, widths={"c1": 8}))
    with pytest.raises(PlanError, match="'head' cannot be pruned"):
        tfprune.rebuild(model, Plan(keep={"head": [0]}, widths={"head": 2}))
    assert_unchanged(model, before)


def test_a_plan_made_for_another_model_says_so():
    model, other = small_model(), keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, name="a"),
                                                     keras.layers.Conv2D(4, 3, name="b"), keras.layers.Flatten(),
                                                     keras.layers.Dense(2, name="out")])
    before = weights_of(model)
    plan = tfprune.plan(other, 0.5)
    for operation in (tfprune.rebuild, tfprune.mask):
        with pytest.raises(PlanError) as error:
            operation(model, plan)
        message = str(error.value)
        assert message.startswith("The plan was made for another model: model 'small' has no channel group named "
                                  "'a', 'b'"), message
        assert "tfprune.plan(model" in message and "prunable groups: c1, c2" in message, message
    with pytest.raises(PlanError, match="1 of the plan's 2 groups are not in this model: .* named 'a'"):
        tfprune.rebuild(model, Plan(keep={"a": [0], "c1": [0]}, widths={"a": 6, "c1": 6}))
    assert_unchanged(model, before)


def test_corrupt_plan_json():
    with pytest.raises(PlanError, match="invalid JSON"):
        Plan.from_json("{not json")
    with pytest.raises(PlanError, match='"format": "tfprune.plan/1"'):
        Plan.from_json('{"groups": {}}')
    with pytest.raises(PlanError, match="Malformed tfprune plan"):
        Plan.from_json('{"format": "tfprune.plan/1", "groups": {"c1": {"keep": [0]}}}')


def test_mismatched_initial_weights():
    model = small_model()
    plan = tfprune.plan(model, 0.5)
    snapshot = weights_of(model)
    with pytest.raises(ValueError, match=r"initial_weights has 5 arrays but the model has 6"):
        tfprune.rebuild(model, plan, reinit="lottery", initial_weights=snapshot[:-1])
    wrong = list(snapshot)
    wrong[0] = np.zeros((3, 3, 3, 7), "float32")
    with pytest.raises(ValueError, match=r"entry for 'c1/kernel' has shape \(3, 3, 3, 7\)"):
        tfprune.rebuild(model, plan, reinit="lottery", initial_weights=wrong)
    with pytest.raises(ValueError, match="no entry for 1 of the model's variables"):
        tfprune.rebuild(model, plan, reinit="lottery",
                        initial_weights={v.path: w for v, w in zip(model.weights[1:], snapshot[1:], strict=True)})
    with pytest.raises(ValueError, match="required with reinit='lottery'"):
        tfprune.rebuild(model, plan, reinit="lottery")
    with pytest.raises(ValueError, match="only allowed with it"):
        tfprune.rebuild(model, plan, initial_weights=snapshot)
    assert_unchanged(model, snapshot)


def test_plan_for_grouped_layer_must_keep_equal_blocks():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 1, name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, groups=2, name="grouped")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(PlanError, match=r"same number of channels in each of its 2 blocks; the plan keeps \[3, 1\]"):
        tfprune.rebuild(model, Plan(keep={"c1": [0, 1, 2, 4]}, widths={"c1": 8}))
    slim = tfprune.rebuild(model, Plan(keep={"c1": [0, 1, 4, 7]}, widths={"c1": 8}))
    assert slim.get_layer("grouped").kernel.shape == (3, 3, 2, 8)
