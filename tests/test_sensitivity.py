"""sensitivity(): Li et al.'s per-group pruning curves, and the ratios they give for a drop or a MACs target."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.criteria.sensitivity import SensitivityResult

RATIOS = (0.25, 0.5, 0.75)


def small_cnn():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c3")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def analysed():
    model = small_cnn()
    x = np.random.default_rng(0).standard_normal((96, 12, 12, 3)).astype("float32")
    logits = model.predict(x, verbose=0)
    kernel, bias = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([kernel, bias - logits.mean(axis=0)])  # centred: every class predicted
    y = model.predict(x, verbose=0).argmax(axis=1)  # the model's own labels: accuracy 1 before pruning
    assert len(np.unique(y)) == 3
    before = [w.copy() for w in model.get_weights()]
    result = tfprune.sensitivity(model, (x, y), ratios=RATIOS, verbose=0, batch_size=32)
    return model, (x, y), before, result


def test_curves_start_at_the_unpruned_metric_and_have_one_row_per_group(analysed):
    model, (x, y), before, result = analysed
    assert result.groups == ["c1", "c2", "c3"]
    assert result.ratios == (0.0, *RATIOS)
    assert result.values.shape == (3, 4)
    unpruned = model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    np.testing.assert_allclose(result.values[:, 0], unpruned)
    assert unpruned == 1.0 and result.metric == "accuracy"
    assert (result.values[:, -1] < 1.0).all()  # removing 3/4 of a layer's filters changes some predictions
    for w, b in zip(model.get_weights(), before, strict=True):  # the model itself was never masked
        np.testing.assert_array_equal(w, b)


def test_each_point_is_the_accuracy_of_the_model_pruned_at_that_group_alone(analysed):
    model, (x, y), _, result = analysed
    for i, j in ((0, 2), (2, 3)):
        slim = tfprune.prune(model, {result.groups[i]: result.ratios[j]})
        accuracy = float((slim.predict(x, verbose=0).argmax(axis=1) == y).mean())
        assert result.values[i, j] == pytest.approx(accuracy)


def test_table_and_figure(analysed):
    result = analysed[3]
    markdown = result.table()
    assert "| c2 | 8 | 1.0000 |" in markdown and markdown.count("\n|") == 5  # header, rule, 3 groups
    assert "c3" in str(result)
    figure = result.figure()
    assert len(figure.axes[0].lines) == 3


def test_ratios_for_drop_take_the_largest_ratio_within_the_tolerance_of_every_smaller_one():
    values = np.array([[1.0, 0.99, 0.97, 0.5],
                       [1.0, 0.80, 0.95, 0.95],   # not monotone: the dip at 0.25 stops it there
                       [1.0, 1.00, 1.00, 1.0]])
    result = SensitivityResult(["a", "b", "c"], (0.0, *RATIOS), values, 1.0, "accuracy", None, None, None, None)
    assert result.ratios_for_drop(0.02) == {"a": 0.25, "b": 0.0, "c": 0.75}
    assert result.ratios_for_drop(0.2) == {"a": 0.5, "b": 0.75, "c": 0.75}
    with pytest.raises(ValueError, match="max_drop"):
        result.ratios_for_drop("0.1")


def test_ratios_for_macs_meet_the_target_with_the_smallest_tolerance(analysed):
    model, data, _, result = analysed
    full = tfprune.count_macs(model)
    ratios = result.ratios_for_macs(0.4)
    slim = tfprune.prune(model, {k: v for k, v in ratios.items() if v > 0})
    assert tfprune.count_macs(slim) <= 0.6 * full
    # One tolerance step less misses the target: the ratios are not larger than needed.
    drops = np.unique(np.maximum.accumulate(result.drops, axis=1))
    used = max(result.drops[result.groups.index(k), result.ratios.index(v)] for k, v in ratios.items())
    smaller = drops[drops < used]
    if len(smaller):
        assert result.macs(result.ratios_for_drop(smaller.max())) > 0.6 * full
    with pytest.raises(ValueError, match="largest measured ratio"):
        result.ratios_for_macs(0.99)


def test_plan_for_macs_uses_the_budget_the_ratios_leave():
    model = small_cnn()
    values = np.array([[1.0, 0.5, 0.4, 0.3],     # c1: sensitive, kept whole
                       [1.0, 1.0, 1.0, 0.9],
                       [1.0, 1.0, 1.0, 0.95]])
    result = SensitivityResult(["c1", "c2", "c3"], (0.0, *RATIOS), values, 1.0, "accuracy", model,
                               tfprune.ChannelGraph(model), tfprune.criteria.get("l1"), None)
    full = tfprune.count_macs(model)
    ratios = result.ratios_for_macs(0.2)
    assert ratios == {"c1": 0.0, "c2": 0.5, "c3": 0.5} and result.macs(ratios) / full < 0.55  # far below 80%
    plan = result.plan_for_macs(0.8)
    assert 0.7 < tfprune.count_macs(tfprune.rebuild(model, plan)) / full <= 0.8  # scaled up to the budget
    assert len(plan.keep["c1"]) == 8 and len(plan.keep["c2"]) < 8 and len(plan.keep["c3"]) < 16  # not re-shaped


def test_sensitivity_errors():
    model = small_cnn()
    x = np.zeros((4, 12, 12, 3), "float32")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        tfprune.sensitivity(model, (x, np.zeros(4)), ratios=(0.5, 1.0))
    uncompiled = keras.Model(model.inputs, model.outputs)
    with pytest.raises(ValueError, match="compile the model"):
        tfprune.sensitivity(uncompiled, (x, np.zeros(4)))
    with pytest.raises(ValueError, match="cannot be pruned"):
        tfprune.sensitivity(model, (x, np.zeros(4)), groups=["head"])
