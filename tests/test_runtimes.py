"""LiteRT and ONNX Runtime: the only runtimes that run exported files, with a clear error when one is missing."""

import sys
import time
import warnings

import keras
import pytest

import tfprune
from tfprune.deployment.onnx_conversion import write_onnx
from tfprune.deployment.runtimes import litert_interpreter, onnx_session
from tfprune.errors import RuntimeUnavailableError
from tfprune.measurement.runtime_calls import kernel_timed_call
from tfprune.measurement.runtime_latency import time_files


def tiny():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)], name="tiny")


def test_no_deprecated_interpreter_warning(tmp_path):
    """Export checks and latency measurement of .tflite files never touch the deprecated tf.lite.Interpreter."""
    model = tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = tfprune.export(model, tmp_path / "m.tflite", format="tflite").path
        tfprune.export(model, tmp_path / "q.tflite", format="tflite", quantize="dynamic")
        litert_interpreter(path, threads=1)
        tfprune.benchmark([model, path], batch_sizes=(1,), threads=(1,), engines=("tflite",), runs=1, warmup=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "tf.lite.Interpreter" in m or "ai_edge_litert" in m], messages


def test_missing_litert_is_a_clear_error(tmp_path, monkeypatch):
    model = tiny()
    path = tfprune.export(model, tmp_path / "m.tflite", format="tflite").path
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if the package were not installed
    with pytest.raises(RuntimeUnavailableError, match="LiteRT is needed here but the Python package "
                                                      "'ai-edge-litert' could not be imported .* no"):
        litert_interpreter(path)
    with pytest.raises(RuntimeUnavailableError, match="pip install ai-edge-litert"):
        tfprune.export(model, tmp_path / "again.tflite", format="tflite")
    assert not (tmp_path / "again.tflite").exists()  # refused before converting
    with pytest.raises(RuntimeUnavailableError, match="LiteRT"):
        tfprune.benchmark([path], batch_sizes=(1,), threads=(1,), engines=("tflite",), runs=1, warmup=0)


def test_missing_onnx_runtime_is_a_clear_error(tmp_path, monkeypatch):
    model = tiny()
    path = tfprune.export(model, tmp_path / "m.onnx", format="onnx").path
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeUnavailableError, match=r"ONNX Runtime is needed .*pip install 'tfprune\[onnx\]'"):
        onnx_session(path)
    with pytest.raises(RuntimeUnavailableError, match="ONNX Runtime"):
        tfprune.benchmark([model], batch_sizes=(1,), threads=(1,), engines=("onnxruntime",), runs=1, warmup=0)
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(RuntimeUnavailableError, match="ONNX export needs the packages tf2onnx and onnx"):
        write_onnx(model, tmp_path / "again.onnx")


def test_runtime_errors_reject_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of path"):
        litert_interpreter()


def test_a_profiled_onnx_call_gives_its_operators_time_alone(tmp_path):
    path = str(tmp_path / "tiny.onnx")
    write_onnx(tiny(), path)
    call, kernel_seconds = kernel_timed_call(path, 1, str(tmp_path / "profile"))
    walls = []
    for _ in range(5):
        start = time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
    kernels = kernel_seconds()
    # one figure per call, in order; the operators run inside the call, so each takes less than it
    assert len(kernels) == 5
    assert all(0 < k < w for k, w in zip(kernels, walls, strict=True))
    assert not list(tmp_path.glob("profile*"))  # the profile file is deleted


def test_timing_subprocess_gives_runs_figures_per_file_primed_or_profiled(tmp_path):
    path = str(tmp_path / "tiny.onnx")
    write_onnx(tiny(), path)
    seconds = time_files([[("whole", path), ("kernels", path)]], "onnxruntime", runs=4, warmup=2, primed=True,
                         kernels=["kernels"])
    assert {label: len(s) for label, s in seconds.items()} == {"whole": 4, "kernels": 4}
    assert all(s > 0 for s in seconds["kernels"])
