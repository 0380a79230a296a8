"""benchmark(): inference latency of Keras models, TFLite and ONNX files on this CPU; ratios to a reference model."""

import dataclasses
import json
import numbers
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfprune.backends import require_backend
from tfprune.deployment.runtimes import LITERT, ONNX_RUNTIME, litert_interpreter, onnx_session, runtime_version
from tfprune.deployment.verification import random_inputs
from tfprune.graph.keras_nodes import model_inputs
from tfprune.measurement.runtime_calls import litert_call, onnx_call, time_in_turn

ENGINES = ("tensorflow", "tflite", "onnxruntime")
DEFAULT_ENGINES = ("tensorflow", "tflite")
_FILE_ENGINES = {"tflite": "tflite", "onnx": "onnxruntime"}  # a file of this kind is timed with this engine only
_HEADERS = ("model", "engine", "batch", "threads", "median ms", "p90 ms", "ratio")


@dataclasses.dataclass(frozen=True)
class Latency:
    """One measured setting of one model.

    Attributes:
        model: the model's label.
        engine: "tensorflow" (a `tf.function` calling the Keras model), "tflite" (the LiteRT interpreter,
            `ai_edge_litert`) or "onnxruntime" (an ONNX Runtime CPU session).
        batch_size: examples per inference call.
        threads: CPU threads the engine was allowed to use.
        median_ms, p90_ms: median and 90th percentile of the timed calls, in milliseconds.
        runs: number of timed calls.
        ratio: `median_ms` divided by the reference model's `median_ms` in the same engine, batch size and
            thread count (1.0 for the reference itself; None when the reference was not measured there).
    """

    model: str
    engine: str
    batch_size: int
    threads: int
    median_ms: float
    p90_ms: float
    runs: int
    ratio: float | None


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """The rows of a `tfprune.benchmark` run; `reference` is the label the ratios are relative to, `runtimes` says
    what ran each engine (e.g. "tflite: LiteRT 2.3.0")."""

    reference: str
    rows: tuple
    runtimes: tuple = ()

    def get(self, model, engine, batch_size, threads) -> Latency:
        """The row of `model` in one setting; KeyError if it was not measured."""
        for row in self.rows:
            if (row.model, row.engine, row.batch_size, row.threads) == (model, engine, batch_size, threads):
                return row
        raise KeyError(f"No measurement of {model!r} with engine={engine!r}, batch_size={batch_size}, "
                       f"threads={threads}.")

    def to_dicts(self) -> list:
        """The rows as plain dicts (for JSON)."""
        return [dataclasses.asdict(row) for row in self.rows]

    def table(self) -> str:
        """The rows as an aligned text table, ratios relative to the reference model."""
        cells = [_HEADERS] + [(r.model, r.engine, str(r.batch_size), str(r.threads), f"{r.median_ms:.3f}",
                               f"{r.p90_ms:.3f}", "—" if r.ratio is None else f"{r.ratio:.3f}") for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADERS))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                strict=True)))
                 for row in cells]
        lines.insert(1, "─" * len(lines[0]))
        lines.append(f"ratio = median / median of {self.reference!r} in the same engine, batch and threads; "
                     "models timed in turn, in the same run.")
        if self.runtimes:
            lines.append("engines: " + "; ".join(self.runtimes) + ".")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def available_threads() -> int:
    """The number of CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def benchmark(models, batch_sizes=(1, 8), threads=(1, None), engines=DEFAULT_ENGINES, runs=50, warmup=5,
              progress=None):
    """Time inference of Keras models, TFLite and ONNX files on this CPU; compare each with the first (the reference).

    Every setting (engine × batch size × thread count) times all models in turn, call by call, so that load from
    other processes falls on all of them alike; the ratios compare medians of the same run.

    TensorFlow-bound: needs the Keras TensorFlow backend (`tfprune.backends.BackendError` otherwise); time a
    model trained under JAX by saving it to a .keras file and benchmarking that file from a TensorFlow process.

    - "tensorflow": the Keras model called through one `tf.function` (not `model.predict`). TensorFlow fixes its
      thread pools when it first runs an op, so a thread count other than the one this process already uses is
      measured in a fresh Python subprocess (`tfprune.measurement.latency_worker`) with intra- and inter-op threads
      set to it
      (a model given in memory is saved to a temporary .keras file for it). This process's own count is
      `tf.config.threading.get_intra_op_parallelism_threads()`, 0 meaning all CPUs.
    - "tflite": the LiteRT interpreter (`ai_edge_litert.interpreter.Interpreter(num_threads=...)`, XNNPACK),
      timing `invoke()` on random inputs. A .tflite file is measured as it is; a Keras model is first converted to a
      float32 .tflite with `tfprune.export`. There is no fallback to the deprecated `tf.lite.Interpreter`: without
      the `ai-edge-litert` package this engine raises `tfprune.errors.RuntimeUnavailableError`.
    - "onnxruntime": an ONNX Runtime CPU session with `intra_op_num_threads` = the thread count and operators run
      one after another, timing `run()` on random inputs. An .onnx file is measured as it is; a Keras model is
      first converted with `tfprune.export(..., format="onnx")`. Needs the `onnx` extra.

    Args:
        models: the models to time, the first being the reference: a list, or a dict `{label: model}`. Each is a
            `keras.Model`, a path to a ".keras" file (loaded with Keras safe mode on), or a path to a ".tflite" or
            ".onnx" file.
            Labels default to the model's name or the file's name. All must take inputs of the same shape.
        batch_sizes: batch sizes to time (integers >= 1).
        threads: thread counts to time (integers >= 1; None means all CPUs this process may use).
        engines: which of "tensorflow", "tflite" and "onnxruntime" to time Keras models with (default the first
            two). TFLite files are timed with "tflite" only and ONNX files with "onnxruntime" only, so the engine
            must be listed when such a file is given.
        runs: timed calls per model and setting (>= 1); warmup: untimed calls before them (>= 0).
        progress: optionally called with a one-line description before each setting is timed.

    Returns:
        A `LatencyReport`: `rows` (one `Latency` per model and setting), `get(...)`, `table()`, `to_dicts()`.

    Raises:
        ValueError: for bad arguments, unknown file types, or models whose input shapes differ.

    Example:

    >>> import keras, tfprune
    >>> model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(32, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> slim = tfprune.prune(model, 0.5)
    >>> report = tfprune.benchmark({"original": model, "slim": slim}, batch_sizes=(1,), threads=(None,),
    ...                            engines=("tensorflow",), runs=5, warmup=1)
    >>> [row.model for row in report.rows]
    ['original', 'slim']
    >>> report.get("original", "tensorflow", 1, tfprune.measurement.benchmarking.available_threads()).ratio
    1.0
    """
    require_backend("tensorflow", "tfprune.benchmark")
    batch_sizes = _positive_ints(batch_sizes, "batch_sizes")
    thread_counts = _positive_ints([available_threads() if t is None else t for t in _sequence(threads, "threads")],
                                   "threads")
    engines = tuple(_sequence(engines, "engines"))
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise ValueError(f"engines must be a non-empty list of {ENGINES}; got {engines!r}.")
    runs = _count(runs, "runs", minimum=1)
    warmup = _count(warmup, "warmup", minimum=0)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable taking one string, or None; got {progress!r}.")
    entries = _entries(models)
    for kind, engine in _FILE_ENGINES.items():
        if any(k == kind for _, k, _ in entries) and engine not in engines:
            raise ValueError(f"A .{kind} file can only be timed with the {engine!r} engine; add it to engines.")
    runtimes = [f"tensorflow: TensorFlow {tf.__version__}"] if "tensorflow" in engines else []
    runtimes += [f"tflite: {runtime_version(LITERT)}"] if "tflite" in engines else []
    runtimes += [f"onnxruntime: {runtime_version(ONNX_RUNTIME)}"] if "onnxruntime" in engines else []
    _check_input_shapes(entries)
    notify = progress or (lambda message: None)

    timings = {}  # (label, engine, batch, threads) -> seconds per call
    with tempfile.TemporaryDirectory() as workdir:
        keras_entries = [(label, model) for label, kind, model in entries if kind == "keras"]
        if "tensorflow" in engines and keras_entries:
            own = tf.config.threading.get_intra_op_parallelism_threads() or available_threads()
            for n in thread_counts:
                if n == own:
                    for batch in batch_sizes:
                        notify(f"tensorflow, batch {batch}, {n} thread(s): {len(keras_entries)} model(s) × "
                               f"{runs} runs")
                        calls = {label: _tensorflow_call(model, batch) for label, model in keras_entries}
                        for label, seconds in time_in_turn(calls, runs, warmup).items():
                            timings[label, "tensorflow", batch, n] = seconds
                else:
                    notify(f"tensorflow, {n} thread(s), in a subprocess: {len(keras_entries)} model(s) × "
                           f"{len(batch_sizes)} batch size(s) × {runs} runs")
                    measured = _tensorflow_in_subprocess(keras_entries, batch_sizes, n, runs, warmup, workdir)
                    for (label, batch), seconds in measured.items():
                        timings[label, "tensorflow", batch, n] = seconds
        for engine, kind, make_call in (("tflite", "tflite", litert_call), ("onnxruntime", "onnx", onnx_call)):
            if engine not in engines:
                continue
            files = []
            for index, (label, entry_kind, model) in enumerate(entries):
                if entry_kind == "keras":
                    notify(f"converting {label!r} to {kind}")
                    path = os.path.join(workdir, f"model_{index}.{kind}")
                    from tfprune.deployment.exporting import export  # imported here: exporting is the heavier module

                    export(model, path, format=kind)
                    files.append((label, path))
                elif entry_kind == kind:
                    files.append((label, model))
            if not files:
                continue
            for n in thread_counts:
                for batch in batch_sizes:
                    notify(f"{engine}, batch {batch}, {n} thread(s): {len(files)} model(s) × {runs} runs")
                    calls = {label: make_call(path, batch, n) for label, path in files}
                    for label, seconds in time_in_turn(calls, runs, warmup).items():
                        timings[label, engine, batch, n] = seconds

    reference = entries[0][0]
    rows = []
    for (label, engine, batch, n), seconds in timings.items():
        median = float(np.median(seconds)) * 1000
        base = timings.get((reference, engine, batch, n))
        ratio = None if base is None else median / (float(np.median(base)) * 1000)
        rows.append(Latency(model=label, engine=engine, batch_size=batch, threads=n, median_ms=median,
                            p90_ms=float(np.percentile(seconds, 90)) * 1000, runs=len(seconds), ratio=ratio))
    order = {label: i for i, (label, _, _) in enumerate(entries)}
    rows.sort(key=lambda r: (ENGINES.index(r.engine), r.batch_size, r.threads, order[r.model]))
    measured = {row.engine for row in rows}
    runtimes = [text for text in runtimes if text.split(":")[0] in measured]
    return LatencyReport(reference=reference, rows=tuple(rows), runtimes=tuple(runtimes))


def _tensorflow_call(model, batch_size):
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.nest.map_structure(tf.constant, random_inputs(model, batch_size=batch_size))
    return lambda: tf.nest.flatten(forward(x))[0].numpy()


def _tensorflow_in_subprocess(keras_entries, batch_sizes, threads, runs, warmup, workdir):
    """Run `tfprune.measurement.latency_worker` with `threads` TF threads; `{(label, batch): [seconds]}`."""
    models = []
    for index, (label, model) in enumerate(keras_entries):
        path = os.path.join(workdir, f"model_{index}.keras")
        if not os.path.exists(path):
            model.save(path)
        models.append([label, path])
    spec_path, out_path = os.path.join(workdir, f"spec_{threads}.json"), os.path.join(workdir, f"out_{threads}.json")
    with open(spec_path, "w") as f:
        json.dump({"models": models, "batch_sizes": list(batch_sizes), "threads": threads, "runs": runs,
                   "warmup": warmup, "out": out_path}, f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    done = subprocess.run([sys.executable, "-m", "tfprune.measurement.latency_worker", spec_path], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"The TensorFlow latency subprocess ({threads} thread(s)) failed with exit code "
                           f"{done.returncode}: {last}")
    with open(out_path) as f:
        return {(label, int(batch)): seconds for label, batch, seconds in json.load(f)}


def _entries(models):
    """`[(label, "keras" | "tflite" | "onnx", keras.Model | file path)]` from a list or dict of models and paths."""
    if isinstance(models, dict):
        items = list(models.items())
    elif isinstance(models, list | tuple):
        items = [(None, m) for m in models]
    else:
        raise ValueError(f"models must be a list or a dict {{label: model}} of keras.Model objects and .keras / "
                         f".tflite / .onnx paths; got {type(models).__name__}.")
    if not items:
        raise ValueError("models is empty; give at least one model (the first is the reference).")
    entries = []
    for label, model in items:
        if isinstance(model, keras.Model):
            entries.append((label or model.name, "keras", model))
            continue
        if not isinstance(model, str | os.PathLike):
            raise ValueError(f"Each model must be a keras.Model or a path to a .keras, .tflite or .onnx file; got "
                             f"{type(model).__name__}.")
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ValueError(f"Model file {path!r} does not exist.")
        name = label or os.path.basename(path)
        if path.endswith(".tflite"):
            entries.append((name, "tflite", path))
        elif path.endswith(".onnx"):
            entries.append((name, "onnx", path))
        elif path.endswith(".keras"):
            entries.append((name, "keras", keras.models.load_model(path, safe_mode=True)))
        else:
            raise ValueError(f"Model file {path!r} must end in '.keras', '.tflite' or '.onnx'.")
    labels = [label for label, _, _ in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Model labels must be distinct; got {labels}. Pass a dict {{label: model}}.")
    return entries


def _input_shape(kind, model):
    if kind == "keras":
        return tuple(tuple(t.shape[1:]) for t in model_inputs(model))
    if kind == "onnx":
        return tuple(tuple(d if isinstance(d, int) else None for d in node.shape[1:])
                     for node in onnx_session(model).get_inputs())
    details = litert_interpreter(model).get_input_details()
    if len(details) != 1:
        raise ValueError(f"TFLite file {model!r} has {len(details)} inputs; only single-input files are timed.")
    return (tuple(int(d) for d in details[0]["shape"][1:]),)


def _check_input_shapes(entries):
    shapes = {label: _input_shape(kind, model) for label, kind, model in entries}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{label}: {shape}" for label, shape in shapes.items())
        raise ValueError(f"All models must take inputs of the same shape to be compared; got {listed}.")


def _sequence(values, what):
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise ValueError(f"{what} must be a list or tuple; got {values!r}.")
    return values


def _positive_ints(values, what):
    values = _sequence(values, what)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(f"{what} must be a non-empty list of integers >= 1; got {values!r}.")
    return tuple(dict.fromkeys(int(v) for v in values))


def _count(value, what, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}; got {value!r}.")
    return int(value)
