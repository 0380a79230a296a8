"""The cost interface: ParamsModel equals count_params of the rebuilt model, targets name their cost, and
plan_for_macs, sensitivity's plan and the searches (ABC, random, DMCP) take a params target as they take a MACs one."""

import keras
import numpy as np
import pytest

import tfprune
from tests.test_attention import gqa_block, transformer_block
from tests.test_macs_model import grouped_and_separable
from tfprune.errors import PlanError
from tfprune.measurement.cost_targets import cost_model
from tfprune.measurement.costs import CostTarget, parse_target
from tfprune.measurement.macs_model import MacsModel
from tfprune.measurement.params_model import ParamsModel

L = keras.layers


def small_cnn():
    """BatchNormalization, a depthwise conv and a residual Add: every params formula of a CNN."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(12, 3, padding="same", name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(L.ReLU()(x))
    y = L.Conv2D(12, 1, name="pw")(y)
    x = L.Add(name="add")([x, y])
    x = L.Conv2D(16, 3, strides=2, name="c2")(x)
    outputs = L.Dense(4, name="head")(L.Dense(10, name="fc")(L.GlobalAveragePooling2D()(x)))
    return keras.Model(inputs, outputs, name="costs_cnn")


MODELS = {"small_cnn": small_cnn, "grouped_and_separable": grouped_and_separable,
          "mha": lambda: transformer_block("self"), "gqa": gqa_block}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_params_of_a_plan_equal_count_params_of_the_rebuilt_model(name):
    model = MODELS[name]()
    params = ParamsModel(model)
    assert params.full == tfprune.count_params(model)
    for seed, ratio in ((0, 0.3), (1, 0.7)):
        plan = tfprune.plan(model, ratio, criterion="random", seed=seed, graph=params.graph)
        assert plan.keep
        slim = tfprune.rebuild(model, plan, graph=params.graph)
        assert params.params(plan) == tfprune.count_params(slim) < params.full
        assert params.ratio(plan) == pytest.approx(tfprune.count_params(slim) / params.full)
        # the same channels as widths and ranks, and as 0/1 keep probabilities (exact there)
        ranks = {name: np.argsort(np.argsort([i not in set(kept) for i in range(params.graph[name].width)],
                                             kind="stable")) for name, kept in plan.keep.items()}
        widths = {name: len(kept) for name, kept in plan.keep.items()}
        assert params.cost_of_widths(widths, ranks) == params.params(plan)
        probability = {name: (ranks[name] < widths[name]).astype("float32") for name in widths}
        expected = float(keras.ops.convert_to_numpy(params.expected_cost(probability)))
        # float32: a sum of a few dozen terms, each rounded about three times, relative error far below 1e-5
        assert expected == pytest.approx(params.params(plan), rel=1e-5)


def test_the_costs_share_one_interface():
    model = small_cnn()
    plan = tfprune.plan(model, 0.5)
    for cost in (MacsModel(model), ParamsModel(model)):
        assert 0 < cost.ratio(plan) < 1
        assert cost.ratio(plan) == pytest.approx(cost.cost(plan) / cost.full)
        widths = {name: len(kept) for name, kept in plan.keep.items()}
        assert cost.ratio_of_widths(widths) == pytest.approx(cost.cost_of_widths(widths) / cost.full)
        assert cost.ratio_of_widths({}) == pytest.approx(1.0)
    assert MacsModel(model).macs(plan) == tfprune.count_macs(tfprune.rebuild(model, plan))


def test_targets_name_their_cost():
    assert parse_target(0.5) == CostTarget("macs", 0.5)
    assert parse_target({"macs": 0.4}) == CostTarget("macs", 0.4)
    assert parse_target({"params": 1}) == CostTarget("params", 1.0)
    assert parse_target({"latency": 0.5}) == CostTarget("latency", 0.5, "litert", 1)
    assert parse_target({"latency": 0.5, "runtime": "onnxruntime", "threads": 2}) == CostTarget(
        "latency", 0.5, "onnxruntime", 2)
    bad = [0, 1.5, True, "0.5", None, {}, {"flops": 0.5}, {"macs": 0.5, "params": 0.5}, {"macs": 0},
           {"params": 0.5, "runtime": "litert"}, {"latency": 0.5, "extra": 1}]
    for target in bad:
        with pytest.raises(ValueError, match=r"target must be a MACs ratio in \(0, 1\], or a dict naming one cost"):
            parse_target(target)
    with pytest.raises(ValueError, match=r"runtime must be one of \('litert', 'onnxruntime'\); got 'tflite'"):
        parse_target({"latency": 0.5, "runtime": "tflite"})
    with pytest.raises(ValueError, match="threads must be an integer >= 1; got 0"):
        parse_target({"latency": 0.5, "threads": 0})
    with pytest.raises(ValueError, match=r"target_macs must be a MACs ratio in \(0, 1\),"):
        parse_target(1.0, "target_macs", high=1, closed=False)
    assert type(cost_model(small_cnn(), {"params": 0.5})) is ParamsModel
    # messages name the target as the user wrote it
    assert str(parse_target(0.5)) == '{"macs": 0.5}'
    assert str(parse_target({"latency": 0.25, "threads": 2})) == '{"latency": 0.25, "runtime": "litert", "threads": 2}'


def test_plan_for_macs_takes_a_params_target():
    model = small_cnn()
    plan, ratio = tfprune.plan_for_macs(model, {"params": 0.5}, lambda r: tfprune.plan(model, r))
    slim = tfprune.rebuild(model, plan)
    assert ratio == pytest.approx(tfprune.count_params(slim) / tfprune.count_params(model))
    assert 0.4 < ratio <= 0.5  # bisected onto the budget, not far under it
    with pytest.raises(ValueError, match="cost prices macs but the target is a params ratio"):
        tfprune.plan_for_macs(model, {"params": 0.5}, lambda r: tfprune.plan(model, r), cost=MacsModel(model))


def test_searches_take_a_params_target():
    model = tfprune.models.small_vgg(input_shape=(12, 12, 1), widths=(8, 16), convs_per_stage=1, dense=16)
    full = tfprune.count_params(model)

    def fitness(slim):  # made up: wider is fitter
        return float(slim.count_params())

    for search, options in ((tfprune.search.random_search, {"evaluations": 3}),
                            (tfprune.search.abc, {"food_sources": 2, "cycles": 1})):
        result = search(model, target_macs={"params": 0.5}, fitness=fitness, seed=0, verbose=0, **options)
        assert result.cost == "params"
        assert result.cost_ratio == pytest.approx(tfprune.count_params(result.slim_model()) / full)
        assert result.cost_ratio <= 0.5
        assert result.macs_ratio == pytest.approx(tfprune.count_macs(result.slim_model()) / tfprune.count_macs(model))
        assert all(h["macs_ratio"] <= 1 for h in result.history)
        with pytest.raises(PlanError, match=r'The target \{"params": 0.01\} cannot be reached: .* keeps 0\.\d+ of the '
                                            r'params.* Allowed targets: at least'):
            search(model, target_macs={"params": 0.01}, fitness=fitness, seed=0, verbose=0, **options)


def test_dmcp_takes_a_params_target():
    model = tfprune.models.small_vgg(input_shape=(12, 12, 1), widths=(8, 16), convs_per_stage=1, dense=16)
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    data = rng.random((32, 12, 12, 1), "float32"), rng.integers(0, 10, 32)
    result = tfprune.search.dmcp(model, data, {"params": 0.5}, epochs=1, warmup_fraction=0.0, subnets=2,
                                 batch_size=16, distill=False, seed=0, verbose=0)
    assert result.cost == "params"
    slim = result.slim_model()
    assert result.cost_ratio == pytest.approx(tfprune.count_params(slim) / tfprune.count_params(model))
    assert 0.45 < result.cost_ratio <= 0.5  # repaired onto the budget, and close to it
    # the budget loss watched the expected params, not the MACs
    assert abs(result.expected_macs - 0.5) < 0.1
    with pytest.raises(ValueError, match=r'The target \{"params": 0.01\} is below the smallest reachable params ratio'):
        tfprune.search.dmcp(model, data, {"params": 0.01}, epochs=1, verbose=0)


def test_sensitivity_plan_takes_a_params_target():
    keras.utils.set_random_seed(0)
    model = small_cnn()
    x = np.random.default_rng(0).standard_normal((16, 10, 10, 3)).astype("float32")
    result = tfprune.sensitivity(model, (x, None), ratios=(0.25, 0.5, 0.75), verbose=0,
                                 metric=lambda m, d: -float(np.abs(m.predict(d[0], verbose=0)).mean()))
    plan = result.plan_for_macs({"params": 0.6})
    ratio = tfprune.count_params(tfprune.rebuild(model, plan)) / tfprune.count_params(model)
    assert 0.5 < ratio <= 0.6
