"""Latency tables: interpolation (exact where it should be, monotone), the model's prediction from synthetic
tables, its differentiable expectation, the cache (hit and miss), and round_to="auto"'s tile decision.

Nothing here asserts a measured time: the machine running the suite may be busy. The one test that measures builds
tiny tables and checks their structure and the cache."""

import dataclasses
import json
import math
import os

import keras
import numpy as np
import pytest

import tfprune
from tfprune.deployment.channel_tiles import channel_tile, resolve_round_to
from tfprune.measurement.latency_tables import (
    LatencyModel,
    LatencyTables,
    LayerTable,
    cache_file,
    fit_coefficients,
    grid_counts,
    synthetic_tables,
    tabled_layers,
)

L = keras.layers


def tiny_cnn(prefix=""):
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name=prefix + "conv")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", name=prefix + "dw")(x)
    x = L.Conv2D(8, 1, name=prefix + "pw")(x)
    outputs = L.Dense(3, name=prefix + "head")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="latency_tiny")


def test_bilinear_interpolation_is_exact_on_a_bilinear_function_and_monotone():
    inputs, outputs = (8, 16, 32, 64), (4, 8, 16)

    def f(i, o):  # the form of a convolution's time: a·C_in·C_out + b·C_in + c·C_out + d
        return 0.01 * i * o + 0.1 * i + 0.2 * o + 1.0

    table = LayerTable(inputs, outputs, [[f(i, o) for o in outputs] for i in inputs])
    for i, o in ((8, 4), (12, 5), (40, 10), (64, 16), (20, 16)):
        assert table.at(i, o) == pytest.approx(f(i, o), rel=1e-12)  # float64 arithmetic on exact corners
    # below the grid: the first point scaled in proportion to the kept counts
    assert table.at(4, 2) == pytest.approx(f(8, 4) * 4 / 8 * 2 / 4, rel=1e-12)
    assert table.at(0, 0) == 0
    # a noisy table (a dip at a wider point) is made non-decreasing before use
    noisy = LayerTable((8, 16, 32), (8, 16), [[1.0, 2.0], [3.0, 2.5], [2.0, 4.0]])
    values = np.array([[noisy.at(i, o) for o in range(1, 17)] for i in range(1, 33)])
    assert np.all(np.diff(values, axis=0) >= 0) and np.all(np.diff(values, axis=1) >= 0)
    one_d = LayerTable((8, 16), None, [1.0, 0.5])  # a depthwise table
    assert one_d.at(16) == one_d.at(8) == 1.0


def test_tables_refuse_a_bad_grid():
    with pytest.raises(ValueError, match="increasing, distinct counts and one time per grid point"):
        LayerTable((8, 8), (4,), [[1.0], [2.0]])
    with pytest.raises(ValueError, match=r"grid must list increasing fractions in \(0, 1\]"):
        LatencyModel(tiny_cnn(), grid=(0.5, 0.25), cache_dir=False)
    with pytest.raises(ValueError, match="runtime must be one of"):
        LatencyModel(tiny_cnn(), runtime="tflite", cache_dir=False)


def test_grid_counts():
    assert grid_counts(64, (0.25, 0.5, 0.75, 1.0)) == (16, 32, 48, 64)
    assert grid_counts(3, (0.25, 0.5)) == (1, 2, 3)
    assert grid_counts(24, (0.1, 0.5), unit=8) == (8, 16, 24)


def test_latency_model_predicts_from_the_tables():
    model = tiny_cnn()
    tables = synthetic_tables(model, ms_per_mac=1e-6, rest_ms=0.2)
    latency = LatencyModel(model, tables=tables, cache_dir=False)
    assert {t.path for t in tabled_layers(latency.graph)} == {"conv", "dw", "pw", "head"}
    # at full width the prediction is the whole model's time: the tables plus the rest
    assert latency.full == pytest.approx(tables.whole_ms, rel=1e-12)
    assert latency.rest_ms == pytest.approx(0.2, rel=1e-9)
    # the synthetic tables are time ∝ MACs, and the rest follows the tabled layers' output elements
    macs = tfprune.macs_model.MacsModel(model, graph=latency.graph)
    previous = latency.full
    for ratio in (0.25, 0.5, 0.75):
        plan = tfprune.plan(model, ratio, graph=latency.graph)
        assert latency.cost(plan) < previous  # fewer channels, less time
        previous = latency.cost(plan)
        tabled = latency.cost(plan) - latency.rest_ms * latency._weights @ np.bincount(
            latency._position_side, weights=_keep(latency, plan)[latency._positions],
            minlength=latency._n_sides) / latency._weights_full
        assert tabled == pytest.approx(1e-6 * macs.macs(plan), rel=1e-9)
    # the expectation at 0/1 probabilities is the exact prediction (float32: relative error far below 1e-5)
    plan = tfprune.plan(model, 0.5, graph=latency.graph)
    probability = {name: np.isin(np.arange(latency.graph[name].width), kept).astype("float32")
                   for name, kept in plan.keep.items()}
    expected = float(keras.ops.convert_to_numpy(latency.expected_cost(probability)))
    assert expected == pytest.approx(latency.cost(plan), rel=1e-5)


def test_calibration_fits_the_whole_model_at_uniform_widths():
    model = tiny_cnn()
    tables = synthetic_tables(model, ms_per_mac=1e-6, rest_ms=0.0)
    plain = LatencyModel(model, tables=tables, cache_dir=False)
    assert plain.calibration_error is None and (plain.scale, plain.fixed_ms) == (1.0, 0.0)

    # a "runtime" in which each layer takes 0.7 of its table, element-wise work 0.05 ms at full width, 0.02 ms fixed
    def truth(plan=None):
        counts = plain._plan_counts(plan) if plan else np.asarray(plain.full_counts, np.float64)
        return 0.7 * plain._tabled(counts) + 0.05 * plain._activations(counts) + 0.02

    full = truth()
    calibration = [(r, step, truth(tfprune.plan(model, r, round_to=step, graph=plain.graph)))
                   for r in (0.25, 0.5, 0.75) for step in (1, 4)]
    calibrated = LatencyModel(model, tables=dataclasses.replace(tables, whole_ms=full, calibration=calibration),
                              cache_dir=False)
    assert (calibrated.scale, calibrated.rest_ms, calibrated.fixed_ms) == pytest.approx((0.7, 0.05, 0.02), rel=1e-6)
    assert calibrated.calibration_error < 1e-9 and calibrated.full == pytest.approx(full, rel=1e-9)
    first = plain.graph.prunable_groups[0].name
    plan = tfprune.plan(model, {first: 0.5}, graph=plain.graph)  # not a calibration point: still exact
    assert calibrated.cost(plan) == pytest.approx(truth(plan), rel=1e-9)
    # the expectation agrees with the exact prediction at 0/1 probabilities
    probability = {name: np.isin(np.arange(calibrated.graph[name].width), kept).astype("float32")
                   for name, kept in plan.keep.items()}
    assert float(keras.ops.convert_to_numpy(calibrated.expected_cost(probability))) == pytest.approx(
        calibrated.cost(plan), rel=1e-5)
    # and survives the JSON round trip
    again = LatencyTables.from_json(json.loads(json.dumps(calibrated.tables.to_json())))
    assert LatencyModel(model, tables=again, cache_dir=False).cost(plan) == pytest.approx(calibrated.cost(plan))


def test_kept_outputs_are_priced_as_whole_tiles():
    inputs = keras.Input((8, 8, 16))
    outputs = L.Conv2D(16, 1, name="pw")(L.Conv2D(64, 1, name="wide")(inputs))
    model = keras.Model(inputs, outputs)
    tables = synthetic_tables(model, ms_per_mac=1e-6)
    assert tables.tile == 1
    tiled = LatencyModel(model, tables=dataclasses.replace(tables, tile=16), cache_dir=False)
    (group,) = [g.name for g in tiled.graph.prunable_groups]
    # synthetic times are 1e-6 ms a MAC: n kept channels cost 8·8·16·n MACs as "wide"'s outputs, priced in whole
    # tiles of 16, and as many as "pw"'s inputs, which are not tiled
    for n in (16, 17, 24, 32, 33, 64):
        assert tiled.cost_of_widths({group: n}) == pytest.approx(1e-6 * 8 * 8 * 16 * (math.ceil(n / 16) * 16 + n))
        assert LatencyModel(model, tables=tables, cache_dir=False).cost_of_widths({group: n}) == pytest.approx(
            1e-6 * 8 * 8 * 16 * 2 * n)
    # the grid's output counts are multiples of the tile (then the full width)
    (wide,) = [t for t in tabled_layers(tiled.graph) if t.path == "wide"]
    assert wide.counts((0.25, 0.5, 0.75, 1.0), 16, 64, tile=16) == ((16,), (16, 32, 48, 64))
    assert wide.counts((0.1, 0.5, 1.0), 16, 40, tile=16) == ((16,), (16, 32, 40))
    # ONNX Runtime's tables also tile the inputs: "pw"'s kept inputs are priced as whole tiles too
    both = LatencyModel(model, tables=dataclasses.replace(tables, tile=16, input_tile=16), cache_dir=False)
    for n in (16, 17, 33, 64):
        assert both.cost_of_widths({group: n}) == pytest.approx(1e-6 * 8 * 8 * 16 * 2 * math.ceil(n / 16) * 16)
    (pw,) = [t for t in tabled_layers(tiled.graph) if t.path == "pw"]
    assert pw.counts((0.25, 0.5, 0.75, 1.0), 64, 16, tile=16) == ((16, 32, 48, 64), (16,))
    assert pw.counts((0.25, 0.5, 0.75, 1.0), 64, 16, tile=16, input_tile=16) == ((16, 32, 48, 64), (16,))
    assert pw.counts((0.1, 0.5, 1.0), 40, 16, tile=16, input_tile=16) == ((16, 32, 40), (16,))
    assert pw.counts((0.1, 0.5, 1.0), 40, 16, tile=16) == ((4, 20, 40), (16,))


def test_fitted_coefficients_keep_their_bounds():
    # times that only a negative rest would fit exactly: the rest is dropped and the scale and fixed term refit
    (scale, rest, fixed), error = fit_coefficients([(10, 1, 9.0), (5, 0.5, 5.0), (2, 0.25, 2.3)])
    assert scale > 0 and rest >= 0 and fixed >= 0 and error < 0.2
    # a per-call cost the tables paid once a layer: a negative fixed term, as far as `overhead` allows
    points = [(10, 1, 7.0), (6, 0.5, 4.0), (3, 0.3, 1.75)]  # exactly 0.75 · tabled - 0.5
    assert fit_coefficients(points, overhead=1.0)[0] == pytest.approx((0.75, 0.0, -0.5), abs=1e-9)
    (scale, rest, fixed), error = fit_coefficients(points, overhead=0.5)  # -0.5 < -0.75 · 0.5: out of bounds
    assert fixed >= -scale * 0.5 and rest >= 0 and error > 1e-3
    assert fit_coefficients(points)[0][2] >= 0
    # no tabled time at all: the tables' own sum, its error reported
    assert fit_coefficients([(0, 1, 1.0)]) == ((1.0, 0.0, 0.0), 1.0)


def test_calibration_takes_off_the_per_call_cost_of_layers_timed_alone():
    model = tiny_cnn()
    plain = LatencyModel(model, tables=synthetic_tables(model, ms_per_mac=1e-6), cache_dir=False)
    fastest = sum(calls * float(table.monotone.min()) for table, _, _, calls, _ in plain._entries)

    def truth(plan=None):  # the whole model pays 0.9 of the tables' fastest calls once, not once a layer
        counts = plain._plan_counts(plan) if plan else np.asarray(plain.full_counts, np.float64)
        return plain._tabled(counts) - 0.9 * fastest

    calibration = [(r, 1, truth(tfprune.plan(model, r, graph=plain.graph))) for r in (0.25, 0.5, 0.75)]
    calibrated = LatencyModel(model, cache_dir=False, tables=dataclasses.replace(
        plain.tables, whole_ms=truth(), calibration=calibration))
    assert (calibrated.scale, calibrated.fixed_ms) == pytest.approx((1.0, -0.9 * fastest), rel=1e-6)
    assert calibrated.calibration_error < 1e-9
    # a plan cut below every table's grid could come out negative: it is 0 at least
    counts = np.ones(len(plain.full_counts))
    assert calibrated.scale * calibrated._tabled(counts) + calibrated.fixed_ms < 0  # without the floor
    assert calibrated.cost_of_widths({g.name: 1 for g in plain.graph.prunable_groups}) == 0.0


def _keep(cost, plan):
    keep = np.ones(cost._size)
    for name, kept in plan.keep.items():
        group = np.zeros(cost.graph[name].width)
        group[list(kept)] = 1
        keep[cost._slice(name)] = group
    return keep


def test_the_cache_file_does_not_depend_on_automatic_layer_names():
    def cnn():
        inputs = keras.Input((8, 8, 3))  # named input_layer_N, N counting the Inputs made so far in the process
        x = L.Conv2D(4, 3)(inputs)  # conv2d_N likewise, as keras.applications' unnamed pooling layers are
        return keras.Model(inputs, L.Conv2D(4, 3, name="conv")(x), name="same")

    first, second = cnn(), cnn()
    assert [layer.name for layer in first.layers] != [layer.name for layer in second.layers]
    assert cache_file(first, cache_dir="/c") == cache_file(second, cache_dir="/c")
    other = keras.Model(*(lambda i: (i, L.Conv2D(5, 3, name="conv")(i)))(keras.Input((8, 8, 3))), name="same")
    assert cache_file(other, cache_dir="/c") != cache_file(first, cache_dir="/c")


def test_tables_of_another_model_are_refused():
    other = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    with pytest.raises(ValueError, match="no table for layer"):
        LatencyModel(tiny_cnn(), tables=synthetic_tables(other, 1e-6), cache_dir=False)


def test_tables_round_trip_through_json():
    model = tiny_cnn()
    tables = synthetic_tables(model, 1e-6, 0.1)
    again = LatencyTables.from_json(json.loads(json.dumps(tables.to_json())))
    plan = tfprune.plan(model, 0.5)
    assert LatencyModel(model, tables=again, cache_dir=False).cost(plan) == \
        LatencyModel(model, tables=tables, cache_dir=False).cost(plan)


@pytest.mark.tensorflow_only
def test_measured_tables_are_cached_per_model_runtime_and_threads(tmp_path):
    model = tiny_cnn()
    built = LatencyModel(model, grid=(0.5, 1.0), runs=3, warmup=1, cache_dir=tmp_path)
    assert not built.cache_hit and built.cache_path.startswith(str(tmp_path))
    tables = built.tables
    assert tables.runtime == "litert" and tables.threads == 1 and tables.cpu and tables.runtime_version
    assert tables.whole_ms > 0 and all(np.all(t.ms > 0) for t in tables.tables.values())
    # conv: 3 input channels (fixed, 1 point) × 8 outputs at 4 and 8, in multiples of the CPU's tile; dw: its 8
    # channels likewise (one axis); pw: inputs at 4 and 8 (not tiled)
    tiled = len(grid_counts(8, (0.5, 1.0), channel_tile("litert")))
    assert tables.tile == channel_tile("litert")
    shapes = {path: tables.tables[key].ms.shape for path, key in tables.layers.items()}
    assert shapes == {"conv": (1, tiled), "dw": (tiled,), "pw": (2, tiled), "head": (2, 1)}
    again = LatencyModel(model, grid=(0.5, 1.0), cache_dir=tmp_path)
    assert again.cache_hit and again.cache_path == built.cache_path
    assert again.full == built.full
    other_threads = LatencyModel(model, grid=(0.5, 1.0), threads=2, runs=3, warmup=1, cache_dir=tmp_path)
    assert not other_threads.cache_hit and other_threads.cache_path != built.cache_path
    # the same architecture with other layer names (as Keras names them in another process) reads the same tables
    renamed = LatencyModel(tiny_cnn(prefix="other_"), grid=(0.5, 1.0), cache_dir=tmp_path)
    assert renamed.cache_hit and renamed.cache_path == built.cache_path
    assert set(renamed.tables.layers) == {"other_conv", "other_dw", "other_pw", "other_head"}
    assert renamed.full == built.full


@pytest.mark.tensorflow_only
def test_measured_onnx_runtime_tables_tile_inputs_and_outputs(tmp_path):
    model = tiny_cnn()
    tables = LatencyModel(model, runtime="onnxruntime", grid=(0.5, 1.0), runs=3, warmup=1, cache_dir=tmp_path).tables
    tile = channel_tile("onnxruntime")
    assert tables.runtime == "onnxruntime" and tables.tile == tables.input_tile == tile
    assert tables.whole_ms > 0 and all(np.all(t.ms > 0) for t in tables.tables.values())
    tiled = len(grid_counts(8, (0.5, 1.0), tile))
    shapes = {path: tables.tables[key].ms.shape for path, key in tables.layers.items()}
    assert shapes == {"conv": (1, tiled), "dw": (tiled,), "pw": (tiled, tiled), "head": (tiled, 1)}


def test_channel_tile_follows_the_cpu():
    avx2 = "fpu sse sse2 sse4_1 sse4_2 avx fma avx2"
    assert channel_tile("litert", "aarch64", "fp asimd") == 8
    assert channel_tile("litert", "x86_64", avx2) == 16
    assert channel_tile("litert", "x86_64", avx2 + " avx512f avx512bw") == 16
    assert channel_tile("litert", "x86_64", "sse sse2") == 8
    assert channel_tile("onnxruntime", "x86_64", avx2) == 8
    assert channel_tile("onnxruntime", "x86_64", avx2 + " avx512f") == 16
    assert channel_tile("onnxruntime", "arm64", "asimd") == 4
    assert channel_tile("litert", "riscv64", "") == 4
    with pytest.raises(ValueError, match="runtime must be one of"):
        channel_tile("tflite", "x86_64", avx2)
    assert resolve_round_to("auto", "onnxruntime") == channel_tile("onnxruntime")
    for bad in (0, "8", 1.5, True):
        with pytest.raises(ValueError, match="round_to must be an integer >= 1 or 'auto'"):
            resolve_round_to(bad)


def test_round_to_auto_is_taken_wherever_round_to_is():
    model = tfprune.models.small_vgg(widths=(64, 64), convs_per_stage=1)
    tile = channel_tile("litert")
    plan = tfprune.plan(model, 0.4, round_to="auto")
    assert all(len(kept) % tile == 0 or len(kept) == tfprune.ChannelGraph(model)[name].width
               for name, kept in plan.keep.items())
    assert plan == tfprune.plan(model, 0.4, round_to=tile)


def test_dmcp_trains_its_budget_on_the_latency_tables():
    """The latency model's expectation runs inside DMCP's compiled architecture step and moves the gates."""
    from tfprune.search.dmcp import build_supernet
    from tfprune.search.dmcp_training import DMCPTrainer

    model = tfprune.models.small_vgg(input_shape=(12, 12, 1), widths=(8, 16), convs_per_stage=1, dense=16)
    supernet, gated, gates, _, ranks, _ = build_supernet(model, 0.5, (0.1, 1.0, 0.1))
    latency = LatencyModel(supernet, tables=synthetic_tables(supernet, 1e-6, rest_ms=0.001), cache_dir=False)
    trainer = DMCPTrainer(gated, gates, latency, 0.3, keras.losses.get("sparse_categorical_crossentropy"), False,
                          keras.optimizers.Adam(0.05), budget_weight=10.0, seed=0)  # the budget leads
    trainer.compile(optimizer="sgd")
    trainer.build(gated.inputs[0].shape)
    trainer.set_phase(train_weights=True, train_arch=True)
    for gate in gates.values():
        gate.alpha.assign(np.full(gate.n_groups, 3.0, "float32"))  # transitions kept with probability 0.95
    start = float(keras.ops.convert_to_numpy(trainer.expected_macs_ratio()))
    assert start > 0.5
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 12, 12, 1), "float32"), rng.integers(0, 10, 32)
    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = float(keras.ops.convert_to_numpy(trainer.expected_macs_ratio()))
    assert after < start  # the budget loss pulled the expected latency towards 0.3


@pytest.mark.parametrize("runtime", ["litert", "onnxruntime"])
def test_a_searchs_auto_rounding_is_the_tile_of_the_runtime_its_latency_target_names(runtime, tmp_path, monkeypatch):
    """The tables are pre-filled (nothing measured): `WidthSpace` reads the runtime from the target."""
    inputs = keras.Input((4, 4, 3))
    x = L.Conv2D(64, 1, activation="relu", name="wide1")(inputs)
    x = L.Conv2D(64, 1, activation="relu", name="wide2")(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)), name="wide")  # room for tiles
    path = tmp_path / "cache" / os.path.basename(cache_file(model, runtime, 1, cache_dir=tmp_path / "cache"))
    path.parent.mkdir()
    path.write_text(json.dumps(synthetic_tables(model, 1e-6, rest_ms=0.01).to_json()))
    monkeypatch.setenv("TFPRUNE_LATENCY_CACHE", str(tmp_path / "cache"))
    space = tfprune.search.WidthSpace(model, {"latency": 0.5, "runtime": runtime}, round_to="auto")
    assert space.round_to == channel_tile(runtime)
    assert tfprune.search.WidthSpace(model, 0.5, round_to="auto").round_to == channel_tile("litert")
