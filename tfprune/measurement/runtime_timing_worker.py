"""The subprocess that times .tflite files in LiteRT or .onnx files in ONNX Runtime for the latency tables and
`plan_for_latency`'s check, with a fixed thread count and, optionally, pinned to as many CPUs.

    python -m tfprune.measurement.runtime_timing_worker SPEC.json

SPEC.json: `{"batches": [[[label, path], ...], ...], "runtime": "litert" | "onnxruntime", "threads": n, "runs": r,
"warmup": w, "pin": true | false, "primed": true | false, "kernels": [label, ...], "out": result.json}`. With `pin`,
the process is bound to the first `threads` CPUs it may use (`os.sched_setaffinity`) before any runtime starts.
Batch by batch (each batch's sessions are freed before the next is opened), every file is warmed up, then the
batch's files are called in turn, one call each per round (with `primed`, right after an untimed one), `runs`
rounds, so that the machine's load falls on all of them alike; `{label: [seconds per call, ...]}` is written to
`out`. For the ONNX Runtime files labelled in `kernels`, the seconds are those of their operators alone, from ONNX
Runtime's profile of each timed call (`runtime_calls.kernel_timed_call`). Only the runtimes are imported (no
TensorFlow), so the worker starts quickly.
"""

import json
import os
import sys

from tfprune.measurement.runtime_calls import file_call, kernel_timed_call, pin_cpus, read_spec, time_in_turn


def main(argv):
    spec = read_spec(argv, "tfprune.measurement.runtime_timing_worker")
    if spec is None:
        return 2
    if spec.get("pin"):
        pin_cpus(spec["threads"])
    seconds, kernels = {}, set(spec.get("kernels", ()))
    primed = spec.get("primed", False)
    for batch in spec["batches"]:
        calls, profiled = {}, {}
        for label, path in batch:
            if label in kernels:
                prefix = os.path.join(os.path.dirname(spec["out"]), f"profile_{len(seconds) + len(calls)}")
                calls[label], profiled[label] = kernel_timed_call(path, spec["threads"], prefix)
            else:
                calls[label] = file_call(spec["runtime"], path, spec["threads"])
        seconds.update(time_in_turn(calls, spec["runs"], spec["warmup"], primed))
        for label, kernel_seconds in profiled.items():  # the timed calls: after the warm-up, each after its priming
            seconds[label] = kernel_seconds()[spec["warmup"]:][1::2 if primed else 1]
        del calls, profiled
    with open(spec["out"], "w") as f:
        json.dump(seconds, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
