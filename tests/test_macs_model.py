"""MacsModel: analytic MACs of a plan equal count_macs of the rebuilt model, on every kind of coupling."""

import keras
import numpy as np
import pytest

import tfprune
from tests.zoo import application
from tfprune.measurement.macs_model import MacsModel

L = keras.layers


def float32_sum_error(macs):
    """How far `expected_macs` (float32, on the backend) may be from the exact count, relative to it.

    It sums one or two terms per layer (54 for ResNet50, 121 for DenseNet121), each rounded about three times (the
    coefficient cast to float32, two products), in the order of the backend's reduction kernel, which is not the
    same on every CPU (XLA vectorises a sum by the machine's vector width). For n positive terms that bounds the
    error by about (n + 2)·2⁻²⁴: 7e-6 for DenseNet121, where a fixed 1e-6 (17·2⁻²⁴) would not hold for every
    order. A wrong or missing term is off by far more: every term of these models is over 5e-5 of their MACs.
    """
    return (len(macs._coefficient) + 2) * 2.0**-24


def grouped_and_separable():
    """Grouped convs (equal blocks), a depthwise conv written as Conv2D(groups=C), separable and transposed convs,
    a Flatten→Dense head, and a Concatenate whose branches an Add ties to another tensor (group parts)."""
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(16, 3, padding="same", name="stem")(inputs)
    x = L.Conv2D(16, 3, padding="same", groups=4, name="grouped")(x)
    x = L.Conv2D(16, 3, padding="same", groups=16, name="depthwise_as_grouped")(x)
    a = L.Conv2D(6, 1, name="branch_a")(x)
    b = L.Conv2D(10, 3, padding="same", name="branch_b")(x)
    cat = L.Concatenate(name="cat")([a, b])
    y = L.Add(name="add")([cat, L.Conv2D(16, 1, name="side")(x)])
    y = L.SeparableConv2D(12, 3, depth_multiplier=2, name="separable")(y)
    y = L.Conv2DTranspose(8, 3, strides=2, name="transposed")(y)
    y = L.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")(y)
    y = L.Flatten()(L.MaxPooling2D(4)(y))
    outputs = L.Dense(5)(L.Dense(7, name="hidden")(y))
    return keras.Model(inputs, outputs)


MODELS = {"ResNet50": lambda: application("ResNet50"), "DenseNet121": lambda: application("DenseNet121"),
          "MobileNetV2": lambda: application("MobileNetV2"), "grouped_and_separable": grouped_and_separable}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_macs_of_a_plan_equal_count_macs_of_the_rebuilt_model(name):
    model = MODELS[name]()
    macs = MacsModel(model)
    assert macs.full == tfprune.count_macs(model)
    for seed, ratio in ((0, 0.3), (1, 0.8)):
        plan = tfprune.plan(model, ratio, criterion="random", seed=seed, graph=macs.graph)
        assert len(plan.keep) == len(macs.graph.prunable_groups) > 0
        slim = tfprune.rebuild(model, plan, graph=macs.graph)
        assert macs.macs(plan) == tfprune.count_macs(slim)
        assert macs.ratio(plan) == pytest.approx(tfprune.count_macs(slim) / tfprune.count_macs(model))
        # the same channels given as widths and ranks, and as 0/1 probabilities
        ranks = {k: np.argsort(np.argsort(~np.isin(np.arange(plan.widths[k]), v), kind="stable"))
                 for k, v in plan.keep.items()}
        widths = {k: len(v) for k, v in plan.keep.items()}
        assert macs.macs_of_widths(widths, ranks) == macs.macs(plan)
        probabilities = {k: np.isin(np.arange(plan.widths[k]), v).astype("float32") for k, v in plan.keep.items()}
        assert float(macs.expected_macs(probabilities)) == pytest.approx(macs.macs(plan), rel=float32_sum_error(macs))


def test_the_parts_of_a_group_are_counted_by_the_channels_kept_not_only_their_number():
    model = grouped_and_separable()
    macs = MacsModel(model)
    group = next(g for g in macs.graph.prunable_groups if g.parts)
    # keeping 6 channels: five of branch_a's (1×1) and one of branch_b's (3×3), or the other way round
    first = tfprune.Plan(keep={group.name: [0, 1, 2, 3, 4, 6]}, widths={group.name: group.width})
    second = tfprune.Plan(keep={group.name: [0, 6, 7, 8, 9, 10]}, widths={group.name: group.width})
    for plan in (first, second):
        assert macs.macs(plan) == tfprune.count_macs(tfprune.rebuild(model, plan, graph=macs.graph))
    assert macs.macs(first) != macs.macs(second)


def test_expected_macs_is_between_the_extremes_and_linear_in_one_group():
    model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    macs = MacsModel(model)
    name = macs.graph.prunable_groups[0].name
    width = macs.graph[name].width
    values = [float(macs.expected_macs({name: np.full(width, p, "float32")})) for p in (0.0, 0.5, 1.0)]
    assert values[0] < values[1] < values[2] == pytest.approx(macs.full)
    assert values[1] == pytest.approx((values[0] + values[2]) / 2, rel=1e-6)  # one group: affine in its width


def test_plan_for_macs_lands_on_the_target_by_the_analytic_count():
    model = application("MobileNetV2")
    plan, ratio = tfprune.plan_for_macs(model, 0.5, lambda r: tfprune.plan(model, r))
    real = tfprune.count_macs(tfprune.rebuild(model, plan)) / tfprune.count_macs(model)
    assert ratio == pytest.approx(real) and 0.45 < real <= 0.5
