"""tfprune.benchmark: structure and consistency of the latency report on real tiny models (no timing thresholds)."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.measurement.benchmarking import Latency, LatencyReport, available_threads


def convnet(input_shape=(16, 16, 3)):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ], name="convnet")


@pytest.fixture(scope="module")
def models():
    model = convnet()
    return model, tfprune.prune(model, 0.5)


@pytest.fixture(scope="module")
def tflite_file(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "slim.tflite"
    tfprune.export(models[1], path, format="tflite")
    return str(path)


def test_report_covers_every_model_and_setting(models, tflite_file):
    model, slim = models
    seen = []
    report = tfprune.benchmark({"original": model, "slim": slim, "slim file": tflite_file}, batch_sizes=(1, 2),
                               threads=(1, None), runs=3, warmup=1, progress=seen.append)
    assert isinstance(report, LatencyReport) and report.reference == "original"
    every = available_threads()
    threads = sorted({1, every})
    expected = {(m, "tensorflow", b, t) for m in ("original", "slim") for b in (1, 2) for t in threads}
    expected |= {(m, "tflite", b, t) for m in ("original", "slim", "slim file") for b in (1, 2) for t in threads}
    assert {(r.model, r.engine, r.batch_size, r.threads) for r in report.rows} == expected
    assert len(report.rows) == len(expected)  # no setting measured twice
    for row in report.rows:
        assert isinstance(row, Latency)
        assert row.runs == 3
        assert 0 < row.median_ms <= row.p90_ms
        reference = report.get("original", row.engine, row.batch_size, row.threads)
        assert row.ratio == pytest.approx(row.median_ms / reference.median_ms)
    assert all(r.ratio == 1.0 for r in report.rows if r.model == "original")
    assert seen and all(isinstance(message, str) for message in seen)
    assert any("subprocess" in message for message in seen) == (every != 1)  # this process runs all threads

    table = report.table()
    assert table == str(report)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["model", "engine", "batch", "threads"]
    assert len(lines) == len(expected) + 4  # header, rule, rows, two footnotes
    assert lines[-1].startswith("engines: tensorflow: TensorFlow 2.") and "tflite: LiteRT " in lines[-1]
    assert "slim file" in table
    assert report.to_dicts()[0] == {"model": "original", "engine": "tensorflow", "batch_size": 1, "threads": 1,
                                     "median_ms": report.rows[0].median_ms, "p90_ms": report.rows[0].p90_ms,
                                     "runs": 3, "ratio": 1.0}
    with pytest.raises(KeyError, match="No measurement"):
        report.get("slim file", "tensorflow", 1, 1)


def test_onnxruntime_engine(models, tmp_path):
    model, slim = models
    onnx_file = tfprune.export(slim, tmp_path / "slim.onnx", format="onnx").path
    seen = []
    report = tfprune.benchmark({"original": model, "slim": slim, "slim file": onnx_file}, batch_sizes=(1, 3),
                               threads=(1,), engines=("tflite", "onnxruntime"), runs=3, warmup=1,
                               progress=seen.append)
    expected = {(m, "onnxruntime", b, 1) for m in ("original", "slim", "slim file") for b in (1, 3)}
    expected |= {(m, "tflite", b, 1) for m in ("original", "slim") for b in (1, 3)}
    assert {(r.model, r.engine, r.batch_size, r.threads) for r in report.rows} == expected
    for row in report.rows:
        assert 0 < row.median_ms <= row.p90_ms
        assert row.ratio == pytest.approx(row.median_ms / report.get("original", row.engine, row.batch_size,
                                                                     1).median_ms)
    assert [r.engine for r in report.rows[:4]] == ["tflite"] * 4  # engines in the order of ENGINES
    assert any("converting 'original' to onnx" in m for m in seen)
    assert any(m.startswith("onnxruntime, batch 3, 1 thread(s): 3 model(s)") for m in seen)
    assert report.runtimes[0].startswith("tflite: LiteRT ") and report.runtimes[1].startswith(
        "onnxruntime: ONNX Runtime ")
    assert "onnxruntime: ONNX Runtime" in report.table().splitlines()[-1]
    with pytest.raises(ValueError, match="A .onnx file can only be timed with the 'onnxruntime' engine"):
        tfprune.benchmark([model, onnx_file], engines=("tensorflow", "tflite"))


def test_onnxruntime_threads_are_honoured(models, tmp_path):
    from tfprune.deployment.runtimes import onnx_session

    path = tfprune.export(models[0], tmp_path / "m.onnx", format="onnx").path
    for threads in (1, 2):
        options = onnx_session(path, threads=threads).get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)


def test_keras_file_and_default_labels(models, tmp_path):
    model, slim = models
    path = tmp_path / "original.keras"
    model.save(path)
    report = tfprune.benchmark([str(path), slim], batch_sizes=(1,), threads=(None,), engines=("tensorflow",),
                               runs=2, warmup=0)
    assert [r.model for r in report.rows] == ["original.keras", slim.name]
    assert report.rows[1].ratio == pytest.approx(report.rows[1].median_ms / report.rows[0].median_ms)


def test_reference_file_gives_no_tensorflow_ratio(models, tflite_file):
    model, _ = models
    report = tfprune.benchmark([tflite_file, model], batch_sizes=(1,), threads=(None,), runs=2, warmup=0)
    tensorflow_row = report.get(model.name, "tensorflow", 1, available_threads())
    assert tensorflow_row.ratio is None
    assert "—" in report.table()
    assert np.isfinite(report.get(model.name, "tflite", 1, available_threads()).ratio)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_sizes": (0,)}, "batch_sizes must be a non-empty list of integers >= 1"),
    ({"batch_sizes": ()}, "batch_sizes must be a non-empty list"),
    ({"batch_sizes": 8}, "batch_sizes must be a list or tuple"),
    ({"threads": (0,)}, "threads must be a non-empty list of integers >= 1"),
    ({"threads": (1.5,)}, "threads must be a non-empty list of integers >= 1"),
    ({"engines": ("onnx",)}, "engines must be a non-empty list of"),
    ({"engines": "tflite"}, "engines must be a list or tuple"),
    ({"runs": 0}, "runs must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"progress": "yes"}, "progress must be a callable"),
])
def test_bad_arguments_raise(models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfprune.benchmark(list(models), **kwargs)


def test_bad_models_raise(models, tflite_file, tmp_path):
    model, slim = models
    with pytest.raises(ValueError, match="models is empty"):
        tfprune.benchmark([])
    with pytest.raises(ValueError, match="must be a list or a dict"):
        tfprune.benchmark(model)
    with pytest.raises(ValueError, match="does not exist"):
        tfprune.benchmark([model, str(tmp_path / "missing.tflite")])
    (tmp_path / "weights.h5").write_bytes(b"0")
    with pytest.raises(ValueError, match="must end in '.keras', '.tflite' or '.onnx'"):
        tfprune.benchmark([model, str(tmp_path / "weights.h5")])
    with pytest.raises(ValueError, match="must be a keras.Model or a path"):
        tfprune.benchmark([model, 3])
    with pytest.raises(ValueError, match="labels must be distinct"):
        tfprune.benchmark([model, model])
    with pytest.raises(ValueError, match="only be timed with the 'tflite' engine"):
        tfprune.benchmark([model, tflite_file], engines=("tensorflow",))
    with pytest.raises(ValueError, match="inputs of the same shape"):
        tfprune.benchmark({"a": model, "b": convnet((20, 20, 3))})
