"""Latency on a deployment runtime: a Keras model written as a LiteRT (.tflite) or ONNX Runtime (.onnx) file and
timed in a subprocess with pinned threads (`tfprune.measurement.runtime_timing_worker`).

The latency tables (`tfprune.measurement.latency_tables`) and `plan_for_latency`'s check both time through here:
batch 1, a fixed thread count, the process bound to as many CPUs, and the models compared called in turn so that
the machine's load falls on all of them alike.
"""

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np

from tfprune.backends import require_backend
from tfprune.measurement.costs import RUNTIMES

_SUFFIX = {"litert": ".tflite", "onnxruntime": ".onnx"}


def check_runtime(runtime):
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}; got {runtime!r}.")
    return runtime


def runtime_file(model, directory, name, runtime, frozen=False):
    """Write `model` (batch size 1) as the runtime's file in `directory`; returns its path.

    Args:
        model: a Keras model (TensorFlow backend).
        directory, name: where, and the file's name without its suffix.
        runtime: "litert" (a float32 .tflite, as `tfprune.export` converts it) or "onnxruntime" (an .onnx file).
        frozen: for LiteRT, convert a frozen `tf.function` of the model instead of an exported SavedModel: the same
            operators, several times faster to convert (for the latency tables' many one-layer models).
    """
    require_backend("tensorflow", "writing a model for LiteRT or ONNX Runtime")
    path = os.path.join(directory, name + _SUFFIX[check_runtime(runtime)])
    if runtime == "onnxruntime":
        from tfprune.deployment.onnx_conversion import write_onnx  # imported here: it imports tf2onnx

        write_onnx(model, path)
        return path
    if frozen:
        flatbuffer = _frozen_flatbuffer(model)
    else:
        from tfprune.deployment.exporting import _convert_tflite

        flatbuffer = _convert_tflite(model, None, None)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def _frozen_flatbuffer(model):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    specs = [tf.TensorSpec((1, *t.shape[1:]), t.dtype) for t in model.inputs]
    function = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False))
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(*specs))
    absl = logging.getLogger("absl")  # the converter warns that a frozen function has no trackable object: none needed
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
    finally:
        absl.setLevel(level)


def time_files(batches, runtime, threads=1, runs=50, warmup=5, pin=True, primed=False, kernels=()):
    """Time runtime files in a subprocess: `{label: [seconds per call]}`.

    Args:
        batches: `[[(label, path), ...], ...]`; the files of a batch are called in turn, round by round.
        runtime: "litert" or "onnxruntime".
        threads: the runtime's CPU threads.
        runs, warmup: timed and untimed calls per file.
        pin: bind the subprocess to `threads` CPUs.
        primed: call each file once, untimed, right before each timed call (`runtime_calls.time_in_turn`).
        kernels: labels of .onnx files whose seconds are their operators' alone, from ONNX Runtime's profile, layout
            conversions left out (`runtime_calls.kernel_timed_call`).
    """
    with tempfile.TemporaryDirectory() as workdir:
        spec, out = os.path.join(workdir, "spec.json"), os.path.join(workdir, "out.json")
        with open(spec, "w") as f:
            json.dump({"batches": [[list(item) for item in batch] for batch in batches], "runtime": runtime,
                       "threads": int(threads), "runs": int(runs), "warmup": int(warmup), "pin": bool(pin),
                       "primed": bool(primed), "kernels": list(kernels), "out": out}, f)
        done = subprocess.run([sys.executable, "-m", "tfprune.measurement.runtime_timing_worker", spec],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"The {runtime} timing subprocess failed with exit code {done.returncode}: {last}")
        with open(out) as f:
            return json.load(f)


@dataclasses.dataclass(frozen=True)
class MeasuredRatio:
    """The latency of a slim model against its original on one runtime, timed in turn.

    Attributes:
        ratio: `slim_ms / original_ms`.
        original_ms, slim_ms: medians of the timed calls, in milliseconds.
        runs: timed calls per model.
        runtime, threads: where they ran.
    """

    ratio: float
    original_ms: float
    slim_ms: float
    runs: int
    runtime: str
    threads: int


def measure_ratio(original, slim, runtime="litert", threads=1, runs=50, warmup=5, pin=True, files=None):
    """The measured latency ratio of `slim` to `original`: both written for the runtime, then timed in turn in one
    subprocess with pinned threads, batch 1; medians of `runs` calls each.

    Args:
        original, slim: Keras models (TensorFlow backend).
        runtime: "litert" or "onnxruntime".
        threads: the runtime's CPU threads.
        runs, warmup: timed (at least 50 for a figure to report) and untimed calls per model.
        pin: bind the subprocess to `threads` CPUs.
        files: `{"original": path}` of files already written, reused instead of converting again.

    Returns:
        A `MeasuredRatio`.
    """
    with tempfile.TemporaryDirectory() as workdir:
        paths = dict(files or {})
        for label, model in (("original", original), ("slim", slim)):
            if label not in paths:
                paths[label] = runtime_file(model, workdir, label, runtime)
        seconds = time_files([[("original", paths["original"]), ("slim", paths["slim"])]], runtime, threads, runs,
                             warmup, pin)
    original_ms, slim_ms = (float(np.median(seconds[label])) * 1000 for label in ("original", "slim"))
    return MeasuredRatio(slim_ms / original_ms, original_ms, slim_ms, runs, runtime, threads)
