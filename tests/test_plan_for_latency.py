"""plan_for_latency: bisection on the latency model, the measured check and its correction, bad input.

The latency model here is built from synthetic tables (known answers, nothing measured); the one test that measures
asserts the structure of the check, never a time, since the machine running the suite may be busy."""

import numpy as np
import pytest

import tfprune
from tfprune.deployment.channel_tiles import channel_tile
from tfprune.measurement.latency_tables import LatencyModel, synthetic_tables
from tfprune.pruning.targets import fill_tiles, next_aim


def _model():
    return tfprune.models.small_vgg(input_shape=(16, 16, 1), widths=(16, 32), convs_per_stage=1)


def test_bisects_onto_the_predicted_target():
    model = _model()
    latency = LatencyModel(model, tables=synthetic_tables(model, 1e-6, rest_ms=0.01), cache_dir=False)
    for target in (0.5, 0.25):
        plan, fit = tfprune.plan_for_latency(model, target, latency_model=latency, verify=False, round_to=1)
        assert fit.predicted_ratio == pytest.approx(latency.ratio(plan))
        assert 0.8 * target < fit.predicted_ratio <= target
        assert fit.measured_ratio is None and fit.within is None and fit.corrections == 0

    wide = tfprune.models.small_vgg(input_shape=(16, 16, 1), widths=(64, 128), convs_per_stage=1, dense=128)
    latency = LatencyModel(wide, tables=synthetic_tables(wide, 1e-6), cache_dir=False)
    plan, fit = tfprune.plan_for_latency(wide, {"latency": 0.5}, latency_model=latency, verify=False,
                                         round_to="auto")
    tile = channel_tile("litert")
    assert fit.predicted_ratio <= 0.5
    assert all(len(kept) % tile == 0 for kept in plan.keep.values())


def test_whole_tiles_are_given_back_between_the_steps_of_the_one_ratio_family():
    # at a quarter off, 64, 128 and 64 channels all fall to multiples of 16 at once: the rounded one-ratio family
    # jumps there, and fill_tiles gives tiles back group by group up to the aim
    model = tfprune.models.small_vgg(input_shape=(16, 16, 1), widths=(64, 128), convs_per_stage=1, dense=64)
    latency = LatencyModel(model, tables=synthetic_tables(model, 1e-6), cache_dir=False)
    graph = latency.graph
    uniform = tfprune.plan(model, 0.25, round_to=16, graph=graph)  # 48, 96 and 48 channels kept
    wider = tfprune.plan(model, 0.24, round_to=16, graph=graph)  # 64, 112 and 64
    low, high = latency.ratio(uniform), latency.ratio(wider)
    aim = (low + high) / 2
    filled, ratio = fill_tiles(model, uniform, aim, latency, 16, graph)
    assert ratio == pytest.approx(latency.ratio(filled)) and low < ratio <= aim
    assert all(len(kept) % 16 == 0 for kept in filled.keep.values())
    # the channels given back are the L1 plan's next ones: each group keeps a superset of what it kept
    assert all(set(uniform.keep[name]) <= set(filled.keep[name]) for name in uniform.keep)


def test_bad_input():
    model = _model()
    latency = LatencyModel(model, tables=synthetic_tables(model, 1e-6), cache_dir=False)
    with pytest.raises(ValueError, match="plan_for_latency's target is a latency ratio"):
        tfprune.plan_for_latency(model, {"macs": 0.5}, latency_model=latency)
    with pytest.raises(ValueError, match=r"target must be a MACs ratio in \(0, 1\]"):
        tfprune.plan_for_latency(model, 1.5, latency_model=latency)
    with pytest.raises(ValueError, match="runs must be an integer >= 50"):
        tfprune.plan_for_latency(model, 0.5, latency_model=latency, runs=20)
    with pytest.raises(ValueError, match="tolerance must be a fraction"):
        tfprune.plan_for_latency(model, 0.5, latency_model=latency, tolerance=0)
    with pytest.raises(ValueError, match="runtime must be one of"):
        tfprune.plan_for_latency(model, 0.5, runtime="tflite", latency_model=latency)
    onnx = LatencyModel(model, runtime="onnxruntime", tables=synthetic_tables(model, 1e-6), cache_dir=False)
    with pytest.warns(UserWarning, match="not multiples of ONNX Runtime's channel block"):
        tfprune.plan_for_latency(model, 0.5, runtime="onnxruntime", latency_model=onnx, verify=False, round_to=3)


@pytest.mark.tensorflow_only
def test_the_plan_is_measured_and_re_aimed_when_the_model_is_off():
    model = _model()
    # tables that price the layers at 10x their share: the prediction is far off, so the measurement must re-aim
    latency = LatencyModel(model, tables=synthetic_tables(model, 1e-3, rest_ms=0.0), cache_dir=False)
    plan, fit = tfprune.plan_for_latency(model, 0.5, latency_model=latency, runs=50, tolerance=0.05, corrections=1,
                                         round_to=1)
    assert fit.measured_ratio is not None and fit.original_ms > 0 and fit.slim_ms > 0
    assert fit.measured_ratio == pytest.approx(fit.slim_ms / fit.original_ms)
    assert fit.corrections in (0, 1)
    assert fit.within == (abs(fit.measured_ratio / 0.5 - 1) <= 0.05)
    assert set(plan.keep) == {g.name for g in latency.graph.prunable_groups}
    assert np.isfinite(fit.predicted_ratio)
    assert len(fit.tried) == fit.corrections + 1
    assert (fit.predicted_ratio, fit.measured_ratio) in fit.tried


def test_re_aiming_interpolates_once_the_target_is_bracketed():
    # one plan measured: the model's error there undone (measured 0.2 where 0.25 was predicted → aim 0.3125)
    assert next_aim([(0.25, 0.2)], 0.25) == pytest.approx(0.3125)
    # two on one side: the closer one's error undone
    assert next_aim([(0.25, 0.1), (0.3, 0.2)], 0.25) == pytest.approx(0.375)
    # on both sides: linear between the closest below and the closest above the target
    tried = [(0.25, 0.1), (0.3, 0.2), (0.5, 0.4), (0.4, 0.3)]
    assert next_aim(tried, 0.25) == pytest.approx(0.35)
