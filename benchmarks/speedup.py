"""Removed channels against hidden zeros: measured speed-up of tfprune and of tfmot's unstructured pruning.

    nice -n 10 python benchmarks/speedup.py [--models=ResNet50,VGG16] [--targets=0.5,0.75] [--runs=20] [--round_to=16]

For each keras.applications model (random weights: nothing downloads) and each MACs target (0.5 = half the MACs
removed), finds by bisection the per-layer L1 ratio (kept widths rounded up to multiples of --round_to) whose
rebuilt model has that MACs ratio, exports the original and the slim models to float32 TFLite and to ONNX with
`tfprune.export` (which checks each file in its runtime: the maximum output differences are recorded), and times
them with `tfprune.benchmark` (batch 1, one thread and all threads; LiteRT, ONNX Runtime and TensorFlow). Side by side,
in the same timing run, TF Model Optimization's `prune_low_magnitude` at the same sparsity (the fraction of MACs
tfprune removed) on a tf-keras twin of the model with the same weights (benchmarks/tfmot_twin.py, in a subprocess
with TF_USE_LEGACY_KERAS=1). Sizes are of the .tflite files, raw and gzip-compressed (where unstructured zeros pay
off).

Writes benchmarks/results/speedup.md (tables), speedup.json (all figures) and speedup.png (latency ratio against
MACs ratio).
"""

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
from absl import app, flags, logging

import tfprune
from tfprune.measurement.benchmarking import available_threads

import shared_setup

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["ResNet50", "MobileNetV2", "VGG16", "EfficientNetB0", "DenseNet121"],
                  "keras.applications constructors.")
shared_setup.define_input_size(224)
shared_setup.define_targets(["0.5", "0.75"], "Fractions of the MACs to remove.")
flags.DEFINE_float("tolerance", 0.01, "Bisection stops when the MACs ratio is this close to its target.")
flags.DEFINE_integer("round_to", 16, "Kept channel counts are rounded up to a multiple of this (1: no rounding). "
                     "XNNPACK computes channels in blocks of 16 with AVX-512: benchmarks/channel_alignment.py.")
flags.DEFINE_integer("bisection_steps", 12, "At most this many plan+rebuild steps per target.")
shared_setup.define_timing(runs=20, runs_help="Timed calls per model and setting.")
flags.DEFINE_bool("tfmot", True, "Also measure tfmot's prune_low_magnitude (needs the tfmot extra).")
flags.DEFINE_string("tfmot_from", None, "With --notfmot: copy the tfmot figures of each model and target from this "
                    "earlier speedup.json (marked as such in the tables) instead of measuring them again.")
flags.DEFINE_list("merge", [], "Measure nothing: write the tables and plot from these speedup.json files (runs of "
                  "this script on different models), in order.")
flags.DEFINE_string("out_dir", shared_setup.RESULTS_DIR, "Where speedup.md and speedup.png go.")

LOAD = os.getloadavg()  # of the machine when the run starts: the timings are only as good as the machine is quiet
CONV_DOMINATED = ("ResNet50", "VGG16", "DenseNet121")  # dense convolutions, no depthwise: the latency goal's models


def slim_for_macs(model, graph, target):
    """Bisect the per-layer ratio so that MACs(slim)/MACs(model) is within the tolerance of 1 - target."""
    goal, base = 1 - target, tfprune.count_macs(model)
    low, high, best = 0.0, 0.99, None
    for _ in range(FLAGS.bisection_steps):
        ratio = (low + high) / 2
        slim = tfprune.rebuild(model, tfprune.plan(model, ratio, graph=graph, round_to=FLAGS.round_to), graph=graph)
        macs_ratio = tfprune.count_macs(slim) / base
        if best is None or abs(macs_ratio - goal) < abs(best[1] - goal):
            best = (ratio, macs_ratio, slim)
        if abs(macs_ratio - goal) <= FLAGS.tolerance:
            break
        low, high = (ratio, high) if macs_ratio > goal else (low, ratio)
    return best


def gzip_size(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=6))


def tfmot_twin(name, model, sparsities, workdir):
    """Run benchmarks/tfmot_twin.py; {"dense": path, "sparse": {str(sparsity): {"path", "zero_fraction"}}}."""
    weights = os.path.join(workdir, "weights.npz")
    np.savez(weights, *model.get_weights())
    script = os.path.join(shared_setup.BENCHMARKS_DIR, "tfmot_twin.py")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, script, f"--model={name}", f"--input_size={FLAGS.input_size}",
                           f"--weights={weights}", f"--sparsities={','.join(map(str, sparsities))}",
                           f"--out_dir={workdir}"], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tfmot twin of {name} failed (exit {done.returncode}); its last output lines:\n"
                           + "\n".join(done.stderr.strip().splitlines()[-15:]))
    with open(os.path.join(workdir, "twin.json")) as f:
        return json.load(f)


def measure(name, workdir):
    size = FLAGS.input_size
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    graph = tfprune.ChannelGraph(model)
    targets = [float(t) for t in FLAGS.targets]
    variants = {"dense": model}
    found = {}
    for target in targets:
        start = time.perf_counter()
        ratio, macs_ratio, slim = slim_for_macs(model, graph, target)
        found[target] = (ratio, macs_ratio)
        variants[f"tfprune {target:g}"] = slim
        logging.info("%s: target %.2f -> per-layer ratio %.3f, MACs ratio %.3f (%.0f s)", name, target, ratio,
                     macs_ratio, time.perf_counter() - start)
    files, onnx_files, differences = {}, {}, {}
    for label, m in variants.items():
        stem = os.path.join(workdir, label.replace(" ", "_"))
        lite = tfprune.export(m, stem + ".tflite", format="tflite")
        onnx = tfprune.export(m, stem + ".onnx", format="onnx")
        files[label], onnx_files[label] = lite.path, onnx.path
        differences[label] = {"tflite": lite.max_abs_difference, "onnx": onnx.max_abs_difference,
                              "output_scale": float(np.abs(tfprune.deployment.verification.outputs(
                                  m, tfprune.deployment.verification.random_inputs(m))[0]).max())}
        logging.info("%s: %s exported; max abs difference LiteRT %.1e, ONNX Runtime %.1e", name, label,
                     lite.max_abs_difference, onnx.max_abs_difference)
    logging.info("%s: TFLite and ONNX files written", name)
    sparsities = {target: round(1 - found[target][1], 4) for target in targets}  # tfmot at tfprune's real sparsity
    twin = None
    if FLAGS.tfmot:
        twin = tfmot_twin(name, model, list(sparsities.values()), workdir)
        files["tfmot dense"] = twin["dense"]
        for target, sparsity in sparsities.items():
            files[f"tfmot {target:g}"] = twin["sparse"][str(sparsity)]["path"]
        logging.info("%s: tfmot files written", name)

    threads = sorted({1, available_threads()})
    load = os.getloadavg()[0]
    tflite = tfprune.benchmark(files, batch_sizes=(1,), threads=threads, engines=("tflite",), runs=FLAGS.runs,
                               warmup=FLAGS.warmup, progress=lambda m: logging.info("%s: %s", name, m))
    tf_report = tfprune.benchmark(variants, batch_sizes=(1,), threads=threads, engines=("tensorflow",),
                                  runs=FLAGS.runs, warmup=FLAGS.warmup,
                                  progress=lambda m: logging.info("%s: %s", name, m))
    ort_report = tfprune.benchmark(onnx_files, batch_sizes=(1,), threads=threads, engines=("onnxruntime",),
                                   runs=FLAGS.runs, warmup=FLAGS.warmup,
                                   progress=lambda m: logging.info("%s: %s", name, m))

    def ms(report, label, engine, n):
        return report.get(label, engine, 1, n).median_ms

    record = {"model": name, "input": size, "round_to": FLAGS.round_to, "threads": threads, "targets": [],
              "load": [load, os.getloadavg()[0]],
              "runtimes": list(tflite.runtimes + ort_report.runtimes + tf_report.runtimes)}
    dense = {"macs": tfprune.count_macs(model), "params": tfprune.count_params(model),
             "bytes": os.path.getsize(files["dense"]), "gzip": gzip_size(files["dense"]),
             "onnx_bytes": os.path.getsize(onnx_files["dense"]), "max_difference": differences["dense"],
             "tflite_ms": {n: ms(tflite, "dense", "tflite", n) for n in threads},
             "ort_ms": {n: ms(ort_report, "dense", "onnxruntime", n) for n in threads},
             "tf_ms": {n: ms(tf_report, "dense", "tensorflow", n) for n in threads}}
    record["dense"] = dense
    if twin:
        record["tfmot_dense"] = {"bytes": os.path.getsize(files["tfmot dense"]),
                                 "gzip": gzip_size(files["tfmot dense"]),
                                 "tflite_ms": {n: ms(tflite, "tfmot dense", "tflite", n) for n in threads}}
    for target in targets:
        label = f"tfprune {target:g}"
        slim = variants[label]
        entry = {"target": target, "layer_ratio": found[target][0], "macs": tfprune.count_macs(slim),
                 "params": tfprune.count_params(slim), "bytes": os.path.getsize(files[label]),
                 "gzip": gzip_size(files[label]), "onnx_bytes": os.path.getsize(onnx_files[label]),
                 "max_difference": differences[label],
                 "tflite_ms": {n: ms(tflite, label, "tflite", n) for n in threads},
                 "ort_ms": {n: ms(ort_report, label, "onnxruntime", n) for n in threads},
                 "tf_ms": {n: ms(tf_report, label, "tensorflow", n) for n in threads}}
        if twin:
            sparse = f"tfmot {target:g}"
            entry["tfmot"] = {"sparsity": sparsities[target],
                              "zero_fraction": twin["sparse"][str(sparsities[target])]["zero_fraction"],
                              "bytes": os.path.getsize(files[sparse]), "gzip": gzip_size(files[sparse]),
                              "tflite_ms": {n: ms(tflite, sparse, "tflite", n) for n in threads}}
        record["targets"].append(entry)
    return record


def copy_tfmot(record, path):
    """Put the tfmot figures of an earlier run (same model, same target) into `record`, marked with their source."""
    with open(path) as f:
        earlier = {r["model"]: r for r in (_int_keys(r) for r in json.load(f))}
    old = earlier.get(record["model"])
    if old is None or "tfmot_dense" not in old:
        return
    record["tfmot_dense"] = dict(old["tfmot_dense"], copied_from=path)
    by_target = {t["target"]: t for t in old["targets"] if "tfmot" in t}
    for target in record["targets"]:
        if target["target"] in by_target:
            target["tfmot"] = dict(by_target[target["target"]]["tfmot"], copied_from=path)


def _valid_tfmot(target):
    """Whether tfmot zeroed the fraction of weights it was asked to (a broken run did not)."""
    return abs(target["tfmot"]["zero_fraction"] - target["tfmot"]["sparsity"]) <= 0.01


def ratio_rows(records):
    """The main table: ratios slim/dense (tfprune) and sparse/dense-twin (tfmot), one row per model and target."""
    threads = records[0]["threads"]
    every = threads[-1]
    head = ["model", "load average", "MACs removed (target)", "per-layer ratio", "MACs ratio", "params ratio",
            ".tflite size ratio",
            "gzip size ratio", "TFLite latency ratio, 1 thread", f"TFLite latency ratio, {every} threads",
            "TF latency ratio, 1 thread", f"TF latency ratio, {every} threads",
            "ONNX Runtime latency ratio, 1 thread", f"ONNX Runtime latency ratio, {every} threads",
            ".onnx size ratio", "TFLite within 10% of MACs",
            "tfmot zeros", "tfmot .tflite size ratio", "tfmot gzip size ratio", "tfmot TFLite latency ratio, 1 thread",
            f"tfmot TFLite latency ratio, {every} threads"]
    rows = [head]
    for r in records:
        d = r["dense"]
        for t in r["targets"]:
            macs = t["macs"] / d["macs"]
            lite1 = t["tflite_ms"][1] / d["tflite_ms"][1]
            load = "–".join(f"{v:.1f}" for v in r["load"]) if "load" in r else "—"
            row = [r["model"], load, f"{t['target']:.0%}", f"{t['layer_ratio']:.3f}", f"{macs:.3f}",
                   f"{t['params'] / d['params']:.3f}", f"{t['bytes'] / d['bytes']:.3f}", f"{t['gzip'] / d['gzip']:.3f}",
                   f"{lite1:.3f}", f"{t['tflite_ms'][every] / d['tflite_ms'][every]:.3f}",
                   f"{t['tf_ms'][1] / d['tf_ms'][1]:.3f}", f"{t['tf_ms'][every] / d['tf_ms'][every]:.3f}",
                   *_ort_ratios(t, d, every), "yes" if abs(lite1 - macs) <= 0.1 * macs else "no"]
            if "tfmot" in t and not _valid_tfmot(t):
                row += [f"{t['tfmot']['zero_fraction']:.3f} (asked {t['tfmot']['sparsity']:.3f}): invalid run"] + \
                    ["—"] * 4
            elif "tfmot" in t:
                m, md = t["tfmot"], r["tfmot_dense"]
                row += [f"{m['zero_fraction']:.3f}", f"{m['bytes'] / md['bytes']:.3f}", f"{m['gzip'] / md['gzip']:.3f}",
                        f"{m['tflite_ms'][1] / md['tflite_ms'][1]:.3f}",
                        f"{m['tflite_ms'][every] / md['tflite_ms'][every]:.3f}"]
            else:
                row += ["—"] * 5
            rows.append(row)
    return rows


def _ort_ratios(t, d, every):
    """ONNX Runtime latency ratios (1 thread, all threads) and .onnx size ratio; dashes for runs made before them."""
    if "ort_ms" not in t:
        return ["—"] * 3
    return [f"{t['ort_ms'][1] / d['ort_ms'][1]:.3f}", f"{t['ort_ms'][every] / d['ort_ms'][every]:.3f}",
            f"{t['onnx_bytes'] / d['onnx_bytes']:.3f}"]


def absolute_rows(records):
    """Absolute figures behind the ratios."""
    threads = records[0]["threads"]
    every = threads[-1]
    rows = [["model", "variant", "MACs", "params", ".tflite MB", "gzip MB", ".onnx MB", "TFLite ms, 1 thread",
             f"TFLite ms, {every} threads", "ONNX Runtime ms, 1 thread", f"ONNX Runtime ms, {every} threads",
             "TF ms, 1 thread", f"TF ms, {every} threads", "max abs difference LiteRT / ONNX Runtime (largest output)"]]

    def add(model, variant, v, macs="", params=""):
        tf_ms, ort_ms, diff = v.get("tf_ms", {}), v.get("ort_ms", {}), v.get("max_difference")
        rows.append([model, variant, macs, params, f"{v['bytes'] / 1e6:.1f}", f"{v['gzip'] / 1e6:.1f}",
                     f"{v['onnx_bytes'] / 1e6:.1f}" if "onnx_bytes" in v else "—",
                     f"{v['tflite_ms'][1]:.1f}", f"{v['tflite_ms'][every]:.1f}",
                     f"{ort_ms[1]:.1f}" if ort_ms else "—", f"{ort_ms[every]:.1f}" if ort_ms else "—",
                     f"{tf_ms[1]:.1f}" if tf_ms else "—", f"{tf_ms[every]:.1f}" if tf_ms else "—",
                     f"{diff['tflite']:.1e} / {diff['onnx']:.1e} ({diff['output_scale']:.2g})" if diff else "—"])

    for r in records:
        d = r["dense"]
        add(r["model"], "original", d, f"{d['macs'] / 1e9:.2f}G", f"{d['params'] / 1e6:.2f}M")
        for t in r["targets"]:
            add(r["model"], f"tfprune −{t['target']:.0%} MACs", t, f"{t['macs'] / 1e9:.2f}G",
                f"{t['params'] / 1e6:.2f}M")
        if "tfmot_dense" in r:
            add(r["model"], "tf-keras twin (tfmot, dense)", r["tfmot_dense"], f"{d['macs'] / 1e9:.2f}G",
                f"{d['params'] / 1e6:.2f}M")
            for t in r["targets"]:
                add(r["model"], f"tfmot {t['tfmot']['zero_fraction']:.0%} zeros", t["tfmot"],
                    f"{d['macs'] / 1e9:.2f}G", f"{d['params'] / 1e6:.2f}M")
    return rows


def markdown(rows):
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, r in zip(colours, records, strict=False):
        d = r["dense"]
        macs = [1.0] + [t["macs"] / d["macs"] for t in r["targets"]]  # every line starts at the original (1, 1)
        ax.plot(macs, [1.0] + [t["tflite_ms"][1] / d["tflite_ms"][1] for t in r["targets"]], "o-", color=colour,
                label=f"{r['model']} tfprune (TFLite)")
        ax.plot(macs, [1.0] + [t["tf_ms"][1] / d["tf_ms"][1] for t in r["targets"]], "s:", color=colour, alpha=0.6,
                label=f"{r['model']} tfprune (TF)")
        if "ort_ms" in d:
            ax.plot(macs, [1.0] + [t["ort_ms"][1] / d["ort_ms"][1] for t in r["targets"]], "^-.", color=colour,
                    alpha=0.8, label=f"{r['model']} tfprune (ONNX Runtime)")
        if "tfmot_dense" in r:
            md = r["tfmot_dense"]
            valid = [t for t in r["targets"] if _valid_tfmot(t)]
            ax.plot([1.0] + [1 - t["tfmot"]["zero_fraction"] for t in valid],
                    [1.0] + [t["tfmot"]["tflite_ms"][1] / md["tflite_ms"][1] for t in valid], "x--",
                    color=colour,
                    label=f"{r['model']} tfmot (TFLite)")
    ax.plot([0, 1.2], [0, 1.2], color="black", linewidth=0.8, label="latency ratio = MACs ratio")
    ax.fill_between([0, 1.2], [0, 1.08], [0, 1.32], color="gray", alpha=0.15, linewidth=0,
                    label="within 10% of the MACs ratio")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.3)
    ax.set_xlabel("MACs ratio (tfprune) / non-zero weight fraction (tfmot)")
    ax.set_ylabel("latency ratio, batch 1, 1 thread")
    ax.set_title(f"Pruned / original latency, {records[0]['input']}×{records[0]['input']}, this CPU")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    for name in FLAGS.models:
        if not hasattr(keras.applications, name):
            raise app.UsageError(f"--models: {name} is not a keras.applications constructor.")
    started = time.perf_counter()
    if FLAGS.merge:
        records = []
        for path in FLAGS.merge:
            with open(path) as f:
                records += [_int_keys(r) for r in json.load(f)]
        write(records, sum(r.get("seconds", 0) for r in records))
        return
    records = []
    for name in FLAGS.models:
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            records.append(measure(name, workdir))
            records[-1]["seconds"] = time.perf_counter() - start
        if FLAGS.tfmot_from and not FLAGS.tfmot:
            copy_tfmot(records[-1], FLAGS.tfmot_from)
        keras.backend.clear_session()
        logging.info("%s done after %.0f s in all", name, time.perf_counter() - started)
        write(records, time.perf_counter() - started)  # after every model, so a late failure loses nothing


def _int_keys(value):
    """JSON turns the thread-count keys into strings; turn them back."""
    if isinstance(value, dict):
        return {int(k) if k.isdigit() else k: _int_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int_keys(v) for v in value]
    return value


def _load_note():
    if FLAGS.merge:
        return f"tables merged from {', '.join(FLAGS.merge)}"
    return f"load average {LOAD[0]:.1f} at the start of the run, {os.getloadavg()[0]:.1f} at the end"


def _copied_note(records):
    sources = sorted({r["tfmot_dense"]["copied_from"] for r in records if "copied_from" in r.get("tfmot_dense", {})})
    if not sources:
        return ""
    return (f" The tfmot columns were not measured in this run but copied from {', '.join(sources)} (an earlier "
            "run: same models and targets, its own dense twin as the reference).")


def write(records, seconds):
    ratios, absolute = markdown(ratio_rows(records)), markdown(absolute_rows(records))
    print(ratios, flush=True)
    threads = records[0]["threads"]
    settings = (f"keras.applications models, random weights, {FLAGS.input_size}×{FLAGS.input_size}, batch 1, "
                f"L1 per-layer ratio found by bisection for each MACs target, kept widths rounded up to multiples "
                f"of {FLAGS.round_to}; float32 TFLite in LiteRT (XNNPACK), ONNX in ONNX Runtime (CPU, "
                f"intra-op threads as stated, operators in sequence) and "
                f"TensorFlow (tf.function); {'; '.join(records[-1].get('runtimes', []))}; "
                f"median of {FLAGS.runs} timed calls after {FLAGS.warmup} warm-up calls, "
                f"all variants of a model timed in turn in the same run; {threads[-1]} CPU threads available "
                f"({_load_note()}); load average: the 1-minute load average before and after a model's timing. "
                f"Ratios are "
                f"pruned / original; tfmot ratios are pruned / its own "
                f"dense tf-keras twin. tfmot = `prune_low_magnitude` at the sparsity tfprune reached (fraction of "
                f"MACs removed), stripped, float32 TFLite. {len(records)} model(s) in {seconds:.0f} s."
                + _copied_note(records))
    shared_setup.write_text(os.path.join(FLAGS.out_dir, "speedup.md"),
                            settings + "\n\n" + ratios + "\n\nAbsolute figures:\n\n" + absolute + "\n")
    shared_setup.write_text(os.path.join(FLAGS.out_dir, "speedup.json"), json.dumps(records, indent=1))
    plot(records, os.path.join(FLAGS.out_dir, "speedup.png"))
    print(f"written speedup.md, speedup.json and speedup.png in {FLAGS.out_dir}", flush=True)


if __name__ == "__main__":
    app.run(main)
