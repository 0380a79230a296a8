"""The subprocess that times .tflite files in LiteRT or .onnx files in ONNX Runtime for the latency tables and
`plan_for_latency`'s check, with a fixed thread count and, optionally, pinned to as many CPUs.

    python -m tfprune.measurement.runtime_timing_worker SPEC.json

SPEC.json: `{"batches": [[[label, path], ...], ...], "runtime": "litert" | "onnxruntime", "threads": n, "runs": r,
"warmup": w, "pin": true | false, "primed": true | false, "out": result.json}`. With `pin`, the process is bound to
the first `threads` CPUs it may use (`os.sched_setaffinity`) before any runtime starts. Batch by batch (each batch's
sessions are freed before the next is opened), every file is warmed up, then the batch's files are called in turn,
one call each per round (with `primed`, right after an untimed one), `runs` rounds, so that the machine's load falls
on all of them alike; `{label: [seconds per call, ...]}` is written to `out`. Only the runtimes are imported (no
TensorFlow), so the worker starts quickly.
"""

import json
import sys

from tfprune.measurement.runtime_calls import file_call, pin_cpus, read_spec, time_in_turn


def main(argv):
    spec = read_spec(argv, "tfprune.measurement.runtime_timing_worker")
    if spec is None:
        return 2
    if spec.get("pin"):
        pin_cpus(spec["threads"])
    seconds = {}
    for batch in spec["batches"]:
        calls = {label: file_call(spec["runtime"], path, spec["threads"]) for label, path in batch}
        seconds.update(time_in_turn(calls, spec["runs"], spec["warmup"], spec.get("primed", False)))
        del calls
    with open(spec["out"], "w") as f:
        json.dump(seconds, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
