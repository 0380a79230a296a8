"""Time channel-graph analysis, planning and rebuild of keras.applications models, beside Torch-Pruning.

    python benchmarks/rebuild_speed.py [--models=ResNet50,ConvNeXtXLarge] [--ratio=0.5] [--repeats=5]
    python benchmarks/rebuild_speed.py --models= --traced=HGNetV2-B4   # trace + analysis + rebuild, custom layers

The default models are those Torch-Pruning 1.6.1 was timed on, side by side on this machine (issue 12: ResNet-50,
MobileNetV2, EfficientNet-B0, DenseNet-121 at 50% per layer, dependency graph + pruning); its seconds are shown in
a reference column. Goals: ResNet50 at 224x224, analysis + rebuild under 3 s on a 2-core machine (issue 2);
analysis + plan + rebuild at or below Torch-Pruning's time (issue 12).

Prints one row per model (the repetition with the lowest total, wall clock; the CPU seconds of this process for
the same repetition beside it, which a loaded machine inflates less) and writes `--out` with the command and the
load average. A section headed `## Earlier runs` already in `--out` is kept below the new table.
"""

import os
import sys
import time

import keras
from absl import app, flags

import tfprune

import shared_setup

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["ResNet50", "MobileNetV2", "EfficientNetB0", "DenseNet121"],
                  "keras.applications constructors to time (e.g. also DenseNet201, EfficientNetB7, "
                  "EfficientNetV2L, NASNetLarge, ConvNeXtXLarge).")
flags.DEFINE_float("ratio", 0.5, "Fraction of channels removed per group.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions per model; the one with the lowest total is reported.")
flags.DEFINE_list("traced", [], "KerasHub backbones built from custom layers to time with tracing: HGNetV2-B4.")
shared_setup.define_out("rebuild_speed.md", "Markdown output.")

DEFAULT_SIZE = {"NASNetLarge": 331, "InceptionV3": 299, "InceptionResNetV2": 299, "Xception": 299}
# Torch-Pruning 1.6.1, torchvision models at 224x224, 50% per layer, DependencyGraph + pruning, seconds (issue 12).
TORCH_PRUNING = {"ResNet50": 0.25, "MobileNetV2": 0.09, "EfficientNetB0": 0.14, "DenseNet121": 2.97}
EARLIER = "## Earlier runs"


def time_steps(model):
    """(analysis, plan, rebuild, total, total CPU) seconds of the best of `repeats` runs, and the slim model."""
    best, slim = None, None
    for _ in range(FLAGS.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        graph = tfprune.ChannelGraph(model)  # a model of custom layers is traced (and the trace checked) first
        t1 = time.perf_counter()
        plan = tfprune.plan(model, FLAGS.ratio, graph=graph)
        t2 = time.perf_counter()
        slim = tfprune.rebuild(model, plan, graph=graph)
        t3, c3 = time.perf_counter(), time.process_time()
        times = (t1 - t0, t2 - t1, t3 - t2, t3 - t0, c3 - c0)
        best = times if best is None or times[3] < best[3] else best
    return best, slim


def time_model(name):
    size = DEFAULT_SIZE.get(name, 224)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    times, slim = time_steps(model)
    return size, model.count_params(), slim.count_params(), times


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
    times, slim = time_steps(model)
    return 224, model.count_params(), slim.count_params(), times


def earlier_runs(path):
    """The `## Earlier runs` section of an existing results file, or ''."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        text = f.read()
    return text[text.index(EARLIER):] if EARLIER in text else ""


def main(argv):
    del argv
    rows = ["| model | input | params before → after | analysis s | plan (L1) s | rebuild s | "
            "analysis + plan + rebuild s | same, CPU s | Torch-Pruning 1.6.1 s |",
            "|---|---|---|---|---|---|---|---|---|"]
    loads = [shared_setup.load_average()]
    jobs = [(name, time_model) for name in FLAGS.models] + [(name, time_traced) for name in FLAGS.traced]
    for name, timer in jobs:
        size, before, after, (analysis, planning, rebuilding, total, cpu) = timer(name)
        label = f"KerasHub {name} (trace + analysis)" if timer is time_traced else name
        reference = f"{TORCH_PRUNING[name]:.2f}" if name in TORCH_PRUNING else ""
        row = (f"| {label} | {size}×{size} | {before / 1e6:.1f}M → {after / 1e6:.1f}M | {analysis:.3f} | "
               f"{planning:.3f} | {rebuilding:.3f} | {total:.3f} | {cpu:.3f} | {reference} |")
        print(row, flush=True)
        rows.append(row)
        loads.append(shared_setup.load_average())
        keras.backend.clear_session()
    previous = earlier_runs(FLAGS.out)
    command = f"`python benchmarks/rebuild_speed.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
    settings = (f"Ratio {FLAGS.ratio} per layer, best of {FLAGS.repeats} (lowest analysis + plan + rebuild), "
                f"{os.cpu_count()} CPU cores, Keras {keras.__version__} on {keras.backend.backend()}; load average "
                f"(1, 5, 15 min) before and after each model: {' → '.join(loads)}.")
    shared_setup.write_text(FLAGS.out, f"{command}\n\n{settings}\n\n" + "\n".join(rows) + "\n"
                            + ("\n" + previous if previous else ""))
    print(f"written {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
