"""Planning for latency: the latency model's prediction against the measured latency, and latency ÷ MACs with and
without round_to="auto".

    nice -n 10 python benchmarks/latency_planning.py [--models=ResNet50,MobileNetV2,EfficientNetB0]
        [--targets=0.5,0.25] [--runtimes=litert,onnxruntime] [--runs=50]
    python benchmarks/latency_planning.py --report        # the .md table from the .jsonl rows written so far
    python benchmarks/latency_planning.py --smoke         # a tiny model, few runs: checks the script, not the CPU

For each keras.applications model (random weights: nothing downloads) at --input_size, each runtime and each target:

- `latency`: `tfprune.plan_for_latency(model, target, runtime)` (widths rounded to the runtime's tile, its default):
  the latency tables' build time (and whether they came from the cache) and calibration, the predicted and the
  measured latency ratio (original and slim interleaved in one pinned subprocess, batch 1, median of --runs calls),
  and every plan it measured on the way;
- `macs` and `macs_auto`: `tfprune.plan_for_macs` at the same target as a MACs ratio, uniform L1 widths, with
  round_to=1 and round_to="auto" (the runtime's channel tile on this CPU): the measured latency ratio ÷ MACs ratio;
- `random0`, `random1`, ... (`--random_plans` per model and runtime): L1 plans in which every prunable group loses
  its own fraction of its channels, drawn uniformly from [0, 0.85] (seeded by the plan's number), rounded to the
  runtime's tile: how far the prediction is from the measurement on widths unlike the uniform ones the model was
  calibrated at. The fractions are in the row, so a later latency model can predict the same plans again.

Each finished row is appended at once to benchmarks/results/latency_planning.jsonl (with the machine's load average
when it was measured), and rows already there are skipped, so an interrupted run resumes. Run it on a quiet
machine: latency measured on a loaded one says little.
"""

import json
import os
import time

from absl import app, flags

import shared_setup

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["ResNet50", "MobileNetV2", "EfficientNetB0"], "keras.applications constructors.")
shared_setup.define_input_size(224)
shared_setup.define_targets(["0.5", "0.25"], "Latency (and MACs) ratios to reach, slim over original.")
flags.DEFINE_list("runtimes", ["litert", "onnxruntime"], "Runtimes: litert, onnxruntime.")
flags.DEFINE_integer("threads", 1, "The runtimes' CPU threads.", lower_bound=1)
shared_setup.define_timing(runs=50, runs_help="Timed calls per model in each measurement (at least 50).")
flags.DEFINE_integer("random_plans", 4, "Plans with random widths per model and runtime.", lower_bound=0)
flags.DEFINE_string("cache_dir", None, "Where the latency tables are cached (default: tfprune's).")
flags.DEFINE_string("out", shared_setup.results_path("latency_planning.jsonl"), "The rows, one JSON per line.")
flags.DEFINE_bool("report", False, "Measure nothing: write the .md table (beside --out) from the rows.")
flags.DEFINE_bool("smoke", False, "A tiny model at 32×32, 50 runs, rows to a temporary file: checks the script.")


def _done(path):
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["model"], r["runtime"], r["target"], r["plan"]) for r in rows}


def _append(path, row):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _model(name, size):
    import keras

    import tfprune

    if name == "tiny":
        return tfprune.models.small_vgg(input_shape=(size, size, 3), widths=(32, 64), convs_per_stage=1, dense=64)
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))


def random_fractions(graph, seed, most=0.85):
    """`{group name: fraction removed}`, drawn uniformly from [0, most] for each prunable group (`seed`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {g.name: float(rng.uniform(0.0, most)) for g in graph.prunable_groups if not g.spanning}


def measure(path, models, targets, runtimes, size, threads, runs, cache_dir, random_plans=0):
    import tfprune
    from tfprune.deployment.channel_tiles import resolve_round_to
    from tfprune.measurement.latency_tables import LatencyModel
    from tfprune.measurement.runtime_latency import measure_ratio

    done = _done(path)
    for name in models:
        model = _model(name, size)
        graph = tfprune.ChannelGraph(model)
        for runtime in runtimes:
            start = time.perf_counter()
            latency = LatencyModel(model, runtime=runtime, threads=threads, graph=graph, cache_dir=cache_dir,
                                   progress=lambda m: print(f"  {m}", flush=True))
            build = {"tables_build_seconds": round(latency.tables.build_seconds, 1),
                     "tables_from_cache": latency.cache_hit,
                     "this_build_seconds": round(time.perf_counter() - start, 1),
                     "whole_ms": latency.tables.whole_ms, "calibration": latency.tables.calibration,
                     "scale": latency.scale, "rest_ms": latency.rest_ms, "fixed_ms": latency.fixed_ms,
                     "calibration_error": latency.calibration_error}
            macs = tfprune.macs_model.MacsModel(model, graph=graph)
            for target in targets:
                base = {"model": name, "runtime": runtime, "target": target, "threads": threads,
                        "input_size": size, "tile": resolve_round_to("auto", runtime)}
                if (name, runtime, target, "latency") not in done:
                    print(f"{name} {runtime} {target}: plan_for_latency", flush=True)
                    plan, fit = tfprune.plan_for_latency(model, target, runtime=runtime, threads=threads,
                                                         latency_model=latency, runs=runs)
                    _append(path, {**base, **build, "plan": "latency", "round_to": base["tile"],
                                   "predicted_ratio": fit.predicted_ratio,
                                   "measured_ratio": fit.measured_ratio, "original_ms": fit.original_ms,
                                   "slim_ms": fit.slim_ms, "corrections": fit.corrections, "tried": fit.tried,
                                   "macs_ratio": macs.ratio(plan), "load": os.getloadavg()})
                for label, round_to in (("macs", 1), ("macs_auto", "auto")):
                    if (name, runtime, target, label) in done:
                        continue
                    print(f"{name} {runtime} {target}: plan_for_macs, round_to={round_to}", flush=True)
                    step = resolve_round_to(round_to, runtime)
                    plan, macs_ratio = tfprune.plan_for_macs(
                        model, target, lambda r, m=model, s=step, g=graph: tfprune.plan(m, r, round_to=s, graph=g),
                        graph=graph)
                    slim = tfprune.rebuild(model, plan, graph=graph)
                    measured = measure_ratio(model, slim, runtime, threads, runs=runs)
                    _append(path, {**base, "plan": label, "round_to": step, "macs_ratio": macs_ratio,
                                   "predicted_ratio": latency.ratio(plan), "measured_ratio": measured.ratio,
                                   "original_ms": measured.original_ms, "slim_ms": measured.slim_ms,
                                   "latency_per_macs": measured.ratio / macs_ratio, "load": os.getloadavg()})
            for k in range(random_plans):
                if (name, runtime, None, f"random{k}") in done:
                    continue
                print(f"{name} {runtime}: random plan {k}", flush=True)
                fractions = random_fractions(graph, k)
                step = resolve_round_to("auto", runtime)
                plan = tfprune.plan(model, fractions, round_to=step, graph=graph)
                measured = measure_ratio(model, tfprune.rebuild(model, plan, graph=graph), runtime, threads, runs=runs)
                _append(path, {"model": name, "runtime": runtime, "target": None, "threads": threads,
                               "input_size": size, "tile": step, "plan": f"random{k}", "round_to": step,
                               "fractions": fractions, "macs_ratio": macs.ratio(plan),
                               "predicted_ratio": latency.ratio(plan), "measured_ratio": measured.ratio,
                               "original_ms": measured.original_ms, "slim_ms": measured.slim_ms,
                               "load": os.getloadavg()})


def report(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    lines = ["Predicted (latency tables) and measured latency ratios, slim over original; batch 1, "
             f"{rows[0]['threads'] if rows else 1} thread(s), median of the timed calls, original and slim "
             "interleaved in one pinned subprocess (`python benchmarks/latency_planning.py`). Load: the 1-minute load "
             "average when the row was measured.", "",
             "Prediction error: predicted ÷ measured − 1. Measured tries: the (predicted, measured) ratios of "
             "every plan plan_for_latency measured, the last being the one returned.", "",
             "| model | runtime | target | plan | round_to | MACs ratio | predicted | measured | prediction error | "
             "latency ÷ MACs | measured tries | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    plans = ("latency", "macs", "macs_auto")
    random = sorted((r for r in rows if r["target"] is None),
                    key=lambda r: (r["runtime"], models.index(r["model"]), r["plan"]))
    rows = sorted((r for r in rows if r["target"] is not None),
                  key=lambda r: (r["runtime"], models.index(r["model"]), -r["target"], plans.index(r["plan"])))
    for r in rows:
        tries = ", ".join(f"{p:.3f}→{m:.3f}" for p, m in r.get("tried", []))
        lines.append(f"| {r['model']} | {r['runtime']} | {r['target']} | {r['plan']} | {r.get('round_to', '')} | "
                     f"{r['macs_ratio']:.3f} | {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                     f"{r['predicted_ratio'] / r['measured_ratio'] - 1:+.1%} | "
                     f"{r['measured_ratio'] / r['macs_ratio']:.2f} | {tries} | {r['load'][0]:.1f} |")
    if random:
        lines += ["", "Random widths (`random_plans`): every prunable group loses its own fraction of its channels, "
                  "drawn from [0, 0.85], rounded to the tile.", "",
                  "| model | runtime | plan | MACs ratio | predicted | measured | prediction error | load |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['runtime']} | {r['plan']} | {r['macs_ratio']:.3f} | "
                  f"{r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                  f"{r['predicted_ratio'] / r['measured_ratio'] - 1:+.1%} | {r['load'][0]:.1f} |" for r in random]
    built = {(r["model"], r["runtime"]): r for r in rows if r.get("calibration_error") is not None}
    if built:
        lines += ["", "The latency models: the tables' build time (one-layer models and calibration), the whole "
                  "model's measured latency, and the fitted prediction `scale · Σ tables + rest · kept activations "
                  "+ fixed` with its largest relative error at the calibration points.", "",
                  "| model | runtime | tables built in | whole model (ms) | scale | rest (ms) | fixed (ms) | "
                  "calibration error |", "|---|---|---|---|---|---|---|---|"]
        for (name, runtime), r in built.items():
            lines.append(f"| {name} | {runtime} | {r['tables_build_seconds']:.0f} s | {r['whole_ms']:.2f} | "
                         f"{r['scale']:.3f} | {r['rest_ms']:.3f} | {r['fixed_ms']:.3f} | "
                         f"{r['calibration_error']:.1%} |")
    out = os.path.splitext(path)[0] + ".md"
    shared_setup.write_text(out, "\n".join(lines) + "\n")
    return out


def main(argv):
    del argv
    if FLAGS.report:
        print(f"wrote {report(FLAGS.out)}")
        return
    if FLAGS.smoke:
        import tempfile

        folder = tempfile.mkdtemp(prefix="latency_planning_smoke_")
        path = os.path.join(folder, "latency_planning.jsonl")
        for _ in range(2):  # the second run resumes: it measures nothing
            measure(path, ["tiny"], [0.5], FLAGS.runtimes, 32, FLAGS.threads, 50, os.path.join(folder, "cache"), 2)
        print(f"wrote {report(path)}")
        return
    measure(FLAGS.out, FLAGS.models, [float(t) for t in FLAGS.targets], FLAGS.runtimes, FLAGS.input_size,
            FLAGS.threads, FLAGS.runs, FLAGS.cache_dir, FLAGS.random_plans)
    print(f"wrote {report(FLAGS.out)}")


if __name__ == "__main__":
    app.run(main)
