"""The subprocess that times .tflite files in LiteRT or .onnx files in ONNX Runtime for the latency tables and
`plan_for_latency`'s check, with a fixed thread count and, optionally, pinned to as many CPUs.

    python -m tfprune.measurement.runtime_timing_worker SPEC.json

SPEC.json: `{"batches": [[[label, path], ...], ...], "runtime": "litert" | "onnxruntime", "threads": n, "runs": r,
"warmup": w, "pin": true | false, "out": result.json}`. With `pin`, the process is bound to the first `threads` CPUs
it may use (`os.sched_setaffinity`) before any runtime starts. Batch by batch (each batch's sessions are freed
before the next is opened), every file is warmed up, then the batch's files are called in turn, one call each per
round, `runs` rounds, so that the machine's load falls on all of them alike; `{label: [seconds per call, ...]}` is
written to `out`. Only the runtimes are imported (no TensorFlow), so the worker starts quickly.
"""

import json
import os
import sys
import time

import numpy as np


def pin_cpus(threads):
    """Bind this process to the first `threads` CPUs it may run on (where the OS allows it); returns them."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def runtime_call(runtime, path, threads):
    """A no-argument callable that runs the file once on random inputs of its (batch-1) shape."""
    from tfprune.deployment.runtimes import litert_interpreter, onnx_session

    rng = np.random.default_rng(0)
    if runtime == "litert":
        interpreter = litert_interpreter(path, threads=threads)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], rng.standard_normal(detail["shape"]).astype(detail["dtype"]))
        return interpreter.invoke
    session = onnx_session(path, threads=threads)
    feed = {node.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in node.shape]).astype("float32")
            for node in session.get_inputs()}
    return lambda: session.run(None, feed)


def time_in_turn(calls, runs, warmup):
    """`{label: [seconds per call]}`: every call warmed up, then each timed once per round, `runs` rounds."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds = {label: [] for label in calls}
    for _ in range(runs):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[label].append(time.perf_counter() - start)
    return seconds


def main(argv):
    if len(argv) != 2:
        print("usage: python -m tfprune.measurement.runtime_timing_worker SPEC.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        spec = json.load(f)
    if spec.get("pin"):
        pin_cpus(spec["threads"])
    seconds = {}
    for batch in spec["batches"]:
        calls = {label: runtime_call(spec["runtime"], path, spec["threads"]) for label, path in batch}
        seconds.update(time_in_turn(calls, spec["runs"], spec["warmup"]))
        del calls
    with open(spec["out"], "w") as f:
        json.dump(seconds, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
