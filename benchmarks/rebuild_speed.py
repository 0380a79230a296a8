"""Time channel-graph analysis, planning and rebuild on large keras.applications models.

    python benchmarks/rebuild_speed.py [--models=ResNet50,ConvNeXtXLarge] [--ratio=0.5] [--repeats=3]
    python benchmarks/rebuild_speed.py --models= --traced=HGNetV2-B4   # trace + analysis + rebuild, custom layers

Goal (issue 2): ResNet50 at 224x224, 50% per layer, analysis + rebuild under 3 s on a 2-core machine.
Prints one row per model (best of `repeats`) and writes benchmarks/results/rebuild_speed.md.
"""

import os
import time

import keras
from absl import app, flags

import tfprune

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["ResNet50", "MobileNetV2", "DenseNet201", "EfficientNetB7", "EfficientNetV2L",
                             "NASNetLarge", "ConvNeXtXLarge"], "keras.applications constructors to time.")
flags.DEFINE_float("ratio", 0.5, "Fraction of channels removed per group.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions per model; the best is reported.")
flags.DEFINE_list("traced", [], "KerasHub backbones built from custom layers to time with tracing: HGNetV2-B4.")
flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results", "rebuild_speed.md"), "Markdown output.")

DEFAULT_SIZE = {"NASNetLarge": 331, "InceptionV3": 299, "InceptionResNetV2": 299, "Xception": 299}


def time_model(name):
    size = DEFAULT_SIZE.get(name, 224)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    best = None
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        graph = tfprune.ChannelGraph(model)
        t1 = time.perf_counter()
        plan = tfprune.plan(model, FLAGS.ratio, graph=graph)
        t2 = time.perf_counter()
        slim = tfprune.rebuild(model, plan, graph=graph)
        t3 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t1 - t0 + t3 - t2)
        best = times if best is None or times[-1] < best[-1] else best
    return size, model.count_params(), slim.count_params(), best


def hgnetv2_b4():
    """KerasHub's HGNetV2 with the B4 architecture (stage widths and depths of the published B4; random weights)."""
    import keras_hub

    return keras_hub.models.HGNetV2Backbone(
        depths=[1, 1, 3, 1], embedding_size=48, hidden_sizes=[128, 512, 1024, 2048], stem_channels=[3, 32, 48],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(48, 48, 128, 1, 6, 3), (128, 96, 512, 1, 6, 3), (512, 192, 1024, 3, 6, 5),
                                 (1024, 384, 2048, 1, 6, 5)],
        apply_downsample=[False, True, True, True], use_lightweight_conv_block=[False, False, True, True],
        image_shape=(224, 224, 3))


TRACED = {"HGNetV2-B4": hgnetv2_b4}


def time_traced(name):
    """Trace + analysis, plan and rebuild of a model of custom layers (the trace is timed with the analysis)."""
    model = TRACED[name]()
    best = None
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        graph = tfprune.ChannelGraph(model)  # traces (and checks the trace) first
        t1 = time.perf_counter()
        plan = tfprune.plan(model, FLAGS.ratio, graph=graph)
        t2 = time.perf_counter()
        slim = tfprune.rebuild(model, plan, graph=graph)
        t3 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t1 - t0 + t3 - t2)
        best = times if best is None or times[-1] < best[-1] else best
    return 224, model.count_params(), slim.count_params(), best


def main(argv):
    del argv
    rows = ["| model | input | params before → after | analysis s | plan (L1) s | rebuild s | analysis + rebuild s |",
            "|---|---|---|---|---|---|---|"]
    jobs = [(name, time_model) for name in FLAGS.models] + [(name, time_traced) for name in FLAGS.traced]
    for name, timer in jobs:
        size, before, after, (analysis, planning, rebuilding, total) = timer(name)
        label = f"KerasHub {name} (trace + analysis)" if timer is time_traced else name
        row = (f"| {label} | {size}×{size} | {before / 1e6:.1f}M → {after / 1e6:.1f}M | {analysis:.2f} | "
               f"{planning:.2f} | {rebuilding:.2f} | {total:.2f} |")
        print(row, flush=True)
        rows.append(row)
        keras.backend.clear_session()
    os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        f.write(f"Ratio {FLAGS.ratio} per layer, best of {FLAGS.repeats}, {os.cpu_count()} CPU cores.\n\n")
        f.write("\n".join(rows) + "\n")
    print(f"written {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
