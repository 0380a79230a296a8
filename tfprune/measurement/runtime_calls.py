"""What the latency measurements share: a callable that runs a .tflite file in LiteRT or an .onnx file in ONNX Runtime
once on random inputs, the loop that times such callables in turn, CPU pinning, and reading a timing subprocess's
spec. It imports no TensorFlow, so `tfprune.measurement.runtime_timing_worker` starts quickly;
`tfprune.benchmark` (`tfprune.measurement.benchmarking`) and its worker `tfprune.measurement.latency_worker` use it
too.

Two ways of filling a file's inputs stay apart on purpose, as each measurement has always fed them:
`file_call` (the latency tables and `measure_ratio`: the file's own batch-1 shapes, standard normal values cast to
each input's type) and `litert_call` / `onnx_call` (`tfprune.benchmark`: resized to a batch size, values over each
type's range).
"""

import json
import os
import sys
import time

import numpy as np

from tfprune.deployment.runtimes import litert_interpreter, onnx_session


def time_in_turn(calls, runs, warmup, primed=False):
    """`{label: [seconds per call]}`: every call warmed up, then each timed once per round, `runs` rounds, so that
    the machine's load falls on all of them alike.

    Args:
        calls: `{label: callable taking no arguments}`.
        runs: timed calls per label (one a round).
        warmup: untimed calls per label before the first round.
        primed: call each once, untimed, right before its timed call, so that its weights and inputs are in the
            CPU's caches as they are when a layer runs inside its model, not evicted by the calls before it.

    Example:

    >>> from tfprune.measurement.runtime_calls import time_in_turn
    >>> seconds = time_in_turn({"a": lambda: None, "b": lambda: sum(range(100))}, runs=3, warmup=1)
    >>> {label: len(times) for label, times in seconds.items()}
    {'a': 3, 'b': 3}
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds = {label: [] for label in calls}
    for _ in range(runs):
        for label, call in calls.items():
            if primed:
                call()
            start = time.perf_counter()
            call()
            seconds[label].append(time.perf_counter() - start)
    return seconds


def pin_cpus(threads):
    """Bind this process to the first `threads` CPUs it may run on (where the OS allows it); returns them, or None
    where the OS has no `sched_setaffinity`."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def read_spec(argv, module):
    """A timing subprocess's spec: the JSON file named by `argv[1]`, or None (with the usage printed to stderr)
    when `argv` is not `[program, SPEC.json]`; `module` is the worker's module name, for the usage line."""
    if len(argv) != 2:
        print(f"usage: python -m {module} SPEC.json", file=sys.stderr)
        return None
    with open(argv[1]) as f:
        return json.load(f)


def file_call(runtime, path, threads):
    """A no-argument callable that runs the file once on random inputs of its (batch-1) shape: every input standard
    normal values cast to its type (ONNX: float32, a dimension without a size taken as 1).

    Args:
        runtime: "litert" (a .tflite file) or "onnxruntime" (an .onnx file).
        path: the file.
        threads: the runtime's CPU threads.
    """
    rng = np.random.default_rng(0)
    if runtime == "litert":
        interpreter = litert_interpreter(path, threads=threads)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], rng.standard_normal(detail["shape"]).astype(detail["dtype"]))
        return interpreter.invoke
    session = onnx_session(path, threads=threads)
    feed = _standard_feed(session, rng)
    return lambda: session.run(None, feed)


def _standard_feed(session, rng):
    return {node.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in node.shape]).astype("float32")
            for node in session.get_inputs()}


# ONNX Runtime's layout conversions: a one-layer file converts its input and output, a whole model only its own
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput", "Transpose"})


def kernel_timed_call(path, threads, profile_prefix):
    """`(call, kernel_seconds)` for an .onnx file: `call` runs it once as `file_call` does, in a session that ONNX
    Runtime profiles; `kernel_seconds()` ends the profile, deletes its file and returns, for each call made, in
    order, the seconds its operators took, the layout conversions (`LAYOUT_OPS`) and the session's own per-call work
    left out: what the file's operators cost inside a whole model, which converts its layout once.

    Args:
        path: the .onnx file.
        threads: ONNX Runtime's intra-op threads.
        profile_prefix: where the profile is written (a path prefix).
    """
    session = onnx_session(path, threads=threads, profile_prefix=profile_prefix)
    feed = _standard_feed(session, np.random.default_rng(0))

    def kernel_seconds():
        profile = session.end_profiling()
        with open(profile) as f:
            events = json.load(f)
        os.remove(profile)
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                      if e.get("cat") == "Session" and e["name"] == "model_run")
        starts = [start for start, _ in runs]
        micro = np.zeros(len(runs))
        for e in events:
            run = np.searchsorted(starts, e["ts"], side="right") - 1  # the call it ran in
            if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and run >= 0
                    and e.get("args", {}).get("op_name") not in LAYOUT_OPS):
                micro[run] += e["dur"]
        return (micro / 1e6).tolist()

    return (lambda: session.run(None, feed)), kernel_seconds


def random_array(shape, dtype, rng):
    """Random values of `dtype`: integers over the type's whole range, floats standard normal."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def litert_call(path, batch_size, threads):
    """A no-argument callable that runs a single-input .tflite file once, its input resized to `batch_size` and
    filled by `random_array`."""
    interpreter = litert_interpreter(path, threads=threads)
    (detail,) = interpreter.get_input_details()
    shape = (batch_size, *detail["shape"][1:])
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], random_array(shape, detail["dtype"], np.random.default_rng(0)))
    return interpreter.invoke


_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(int8)": np.int8,
                "tensor(uint8)": np.uint8}


def onnx_call(path, batch_size, threads):
    """A no-argument callable that runs an .onnx file once, its inputs `batch_size` examples (a later dimension
    without a size taken as 32) filled by `random_array`; an input of a type outside `_ONNX_DTYPES` raises
    ValueError."""
    session = onnx_session(path, threads=threads)
    rng = np.random.default_rng(0)
    feed = {}
    for node in session.get_inputs():
        if node.type not in _ONNX_DTYPES:
            raise ValueError(f"ONNX file {path!r}: input {node.name!r} has type {node.type}; only "
                             f"{', '.join(_ONNX_DTYPES)} inputs can be timed.")
        shape = (batch_size, *[d if isinstance(d, int) else 32 for d in node.shape[1:]])
        feed[node.name] = random_array(shape, _ONNX_DTYPES[node.type], rng)
    return lambda: session.run(None, feed)
