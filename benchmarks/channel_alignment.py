"""Does the width of the kept channels matter, or only their number? TFLite latency against `round_to`.

    nice -n 10 python benchmarks/channel_alignment.py [--models=VGG16,DenseNet121] [--ratio=0.3] [--runs=20]

For each keras.applications model (random weights, 224×224) the same L1 per-layer ratio is planned with kept counts
rounded up to multiples of 1, 8 and 16 (`tfprune.plan(..., round_to=...)`), each slim model is exported to float32
TFLite, and all are timed at batch 1 on one thread in the same run. Rounding up keeps a few more channels, so the MACs
ratio grows with `round_to`; the column to read is latency ratio / MACs ratio (1.0: the latency falls exactly with
the MACs). Writes benchmarks/results/channel_alignment.md.
"""

import os

import keras
from absl import app, flags, logging

import tfprune

import shared_setup

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["VGG16", "ResNet50", "DenseNet121"], "keras.applications constructors.")
flags.DEFINE_float("ratio", 0.3, "Fraction of the channels of every prunable group removed.")
flags.DEFINE_list("round_to", ["1", "8", "16"], "Multiples the kept counts are rounded up to.")
shared_setup.define_timing(runs=20)
shared_setup.define_out("channel_alignment.md", "Markdown output.")


def measure(name):
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    graph = tfprune.ChannelGraph(model)
    base = tfprune.count_macs(model)
    variants, macs = {"original": model}, {}
    for multiple in map(int, FLAGS.round_to):
        plan = tfprune.plan(model, FLAGS.ratio, graph=graph, round_to=multiple)
        variants[f"round_to {multiple}"] = slim = tfprune.rebuild(model, plan, graph=graph)
        macs[multiple] = tfprune.count_macs(slim) / base
    report = tfprune.benchmark(variants, batch_sizes=(1,), threads=(1,), engines=("tflite",), runs=FLAGS.runs,
                               warmup=FLAGS.warmup, progress=lambda m: logging.info("%s: %s", name, m))
    dense_ms = report.get("original", "tflite", 1, 1).median_ms
    rows = []
    for multiple, ratio in macs.items():
        ms = report.get(f"round_to {multiple}", "tflite", 1, 1).median_ms
        rows.append(f"| {name} | {multiple} | {ratio:.3f} | {dense_ms:.1f} → {ms:.1f} | {ms / dense_ms:.3f} | "
                    f"{ms / dense_ms / ratio:.2f} |")
        logging.info("%s", rows[-1])
    return rows


def main(argv):
    del argv
    load = os.getloadavg()[0]
    lines = [f"L1, {FLAGS.ratio:.0%} of every prunable group, kept counts rounded up to the multiple; float32 TFLite "
             f"(XNNPACK), batch 1, one thread, median of {FLAGS.runs} calls after {FLAGS.warmup} warm-up calls, "
             f"all variants of a model timed in turn; load average {load:.1f} at the start "
             "(`nice -n 10 python benchmarks/channel_alignment.py`).", "",
             "| model | round_to | MACs ratio | TFLite ms | latency ratio | latency ratio / MACs ratio |",
             "|---|---|---|---|---|---|"]
    for name in FLAGS.models:
        lines += measure(name)
        keras.backend.clear_session()
    text = "\n".join(lines) + "\n"
    print(text)
    shared_setup.write_text(FLAGS.out, text)


if __name__ == "__main__":
    app.run(main)
