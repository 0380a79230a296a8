"""The subprocess behind `tfprune.benchmark` for TensorFlow thread counts other than the calling process's own.

    python -m tfprune.measurement.latency_worker SPEC.json

SPEC.json: `{"models": [[label, path.keras], ...], "batch_sizes": [...], "threads": n, "runs": r, "warmup": w,
"out": result.json}`. TensorFlow's intra- and inter-op thread pools are set to `threads` before any op runs; the
models (temporary copies written by `tfprune.benchmark`) are timed in turn and `[[label, batch, [seconds, ...]], ...]`
is written to `out`.
"""

import json
import sys

from tfprune.measurement.runtime_calls import read_spec, time_in_turn


def main(argv):
    spec = read_spec(argv, "tfprune.measurement.latency_worker")
    if spec is None:
        return 2
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(spec["threads"])
    import keras

    from tfprune.measurement.benchmarking import _tensorflow_call

    # The files are copies that tfprune.benchmark saved from models it was given (user files were loaded there
    # with safe mode on), so they are trusted here.
    models = {label: keras.models.load_model(path, safe_mode=False) for label, path in spec["models"]}
    results = []
    for batch in spec["batch_sizes"]:
        calls = {label: _tensorflow_call(model, batch) for label, model in models.items()}
        for label, seconds in time_in_turn(calls, spec["runs"], spec["warmup"]).items():
            results.append([label, batch, seconds])
    with open(spec["out"], "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
