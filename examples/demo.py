"""The main job: what does pruning cost? An unpruned CNN against the same CNN pruned during training, then fine-tuned.

    python examples/demo.py [--output_dir=demo_output] [--target_macs=0.25] [--epochs=3] [--finetune_epochs=2]
                            [--verbose]

1. Trains `tfprune.models.small_vgg()` unpruned on a subset of the real Fashion-MNIST
   (`tfprune.datasets.fashion_mnist()`, read offline from the Debian package's copy) for `--epochs` +
   `--finetune_epochs` epochs: the reference, with the same training budget as the pruned model gets in all
   (with the defaults, 6,000 images × 5 epochs for each model: the demo takes a few minutes on 2 CPU cores).
2. Trains the same network (same initial weights) for `--epochs` epochs with the `tfprune.callbacks.DropNet`
   callback, which at the end of every epoch masks the channels with the lowest mean activation (a share of the
   remaining ones) until the masked model has `--target_macs` of the MACs; one line per pruning step.
3. Rebuilds: `dropnet.slim_model()` is a physically smaller keras.Model ("pruned, before fine-tuning").
4. Fine-tunes it for `--finetune_epochs` epochs ("pruned + fine-tuned").
5. Exports each of the three models as .keras, TFLite and ONNX with `tfprune.export`, which loads each file back
   (Keras, LiteRT, ONNX Runtime), checks it against the Keras model and scores it on test images.
6. Times the TFLite files in LiteRT and the ONNX files in ONNX Runtime (batch 1, one thread), prints one table with
   ratios against the unpruned model and saves the same figures as demo.png, with the artefacts, in `--output_dir`.

Only progress bars (one line per epoch when stdout is not a terminal), the pruning steps and the table are
printed: TensorFlow's, LiteRT's and the converters' routine log is hidden
(`tfprune.deployment.log_filter.quiet_log`; lines that are not known to be harmless are still shown at the end).
`--verbose` shows everything.
"""

import os
import sys
import time

import numpy as np
from absl import app, flags

from tfprune.deployment.log_filter import (
    quiet_log,  # does not import TensorFlow: the log is hidden before TensorFlow starts
)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Where the models, exports and demo.png go.")
flags.DEFINE_float("target_macs", 0.25, "MACs of the pruned model over the original's, in (0, 1].")
flags.DEFINE_float("fraction", 0.4, "DropNet: share of the remaining channels masked at the end of each epoch.")
flags.DEFINE_integer("train_size", 6000, "Training images (a random subset of the 60,000).")
flags.DEFINE_integer("test_size", 10000, "Test images (a random subset of the 10,000).")
flags.DEFINE_integer("export_check_size", 2000, "Test images the TFLite and ONNX files are checked and scored on.")
flags.DEFINE_integer("epochs", 3, "Training epochs with DropNet; the unpruned model gets epochs + finetune_epochs.")
flags.DEFINE_integer("finetune_epochs", 2, "Fine-tuning epochs of the pruned model.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("runs", 200, "Timed calls per model and runtime (batch 1, one thread).")
flags.DEFINE_integer("seed", 0, "Random seed (data subset, initial weights).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's, LiteRT's and the converters' own log.")

NAMES = ("unpruned", "pruned, before fine-tuning", "pruned + fine-tuned")


def train(model, data, epochs, learning_rate, callbacks=()):
    import keras

    (x_train, y_train), (x_test, y_test) = data
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=FLAGS.batch_size, epochs=epochs,
                        validation_data=(x_test, y_test), verbose=1 if sys.stdout.isatty() else 2,
                        callbacks=list(callbacks))
    return history.history["val_accuracy"]


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=1000, verbose=0), axis=-1) == y))


def measure(model, stem, data, check):
    """Accuracy, size and exports of one model: .keras, .tflite (LiteRT) and .onnx (ONNX Runtime), each checked."""
    import tfprune

    (_, _), (x_test, y_test) = data
    check_x, check_y = check
    model.save(f"{stem}.keras")
    lite = tfprune.export(model, f"{stem}.tflite", format="tflite", representative_data=check_x, labels=check_y)
    onnx = tfprune.export(model, f"{stem}.onnx", format="onnx", representative_data=check_x, labels=check_y)
    return {"accuracy": accuracy(model, x_test, y_test), "litert_accuracy": lite.accuracy,
            "onnx_accuracy": onnx.accuracy, "params": tfprune.count_params(model), "macs": tfprune.count_macs(model),
            "tflite_bytes": lite.size_bytes,
            "onnx_bytes": onnx.size_bytes, "tflite": lite.path, "onnx": onnx.path,
            "differences": (lite.max_abs_difference, onnx.max_abs_difference), "runtimes": (lite.runtime, onnx.runtime)}


def table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                      strict=True)))
             for row in rows]
    lines.insert(1, "─" * len(lines[0]))
    return "\n".join(lines)


RATIO_ROWS = (("parameters", "params"), ("MACs", "macs"), ("LiteRT\nlatency", "litert_ms"),
              ("ONNX\nRuntime\nlatency", "onnx_ms"), (".tflite\nsize", "tflite_bytes"), (".onnx\nsize", "onnx_bytes"))


def plot(curves, figures, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    unpruned, with_dropnet, after_pruning, tuned = curves
    epochs = np.arange(1, len(unpruned) + 1)
    left.plot(epochs, unpruned, "o-", color="C0", label="unpruned")
    left.plot(epochs[: len(with_dropnet)], with_dropnet, "o-", color="C1", label="training with DropNet (masked)")
    left.plot([len(with_dropnet) + 0.5], [after_pruning], "x", markersize=10, color="C3",
              label="rebuilt, before fine-tuning")
    left.plot(len(with_dropnet) + 1 + np.arange(len(tuned)), tuned, "s-", color="C2", label="pruned: fine-tuning")
    left.set_xlabel("epoch")
    left.set_ylabel("test accuracy")
    left.set_title("Fashion-MNIST test accuracy, same training budget")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)

    runtimes = (("Keras", "accuracy"), ("LiteRT", "litert_accuracy"), ("ONNX Runtime", "onnx_accuracy"))
    width = 0.27
    for i, (runtime, key) in enumerate(runtimes):
        bars = middle.bar(np.arange(3) + (i - 1) * width, [figures[name][key] for name in NAMES], width,
                          label=runtime)
        middle.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    middle.set_xticks(np.arange(3), ["unpruned", "pruned,\nbefore fine-tuning", "pruned +\nfine-tuned"])
    middle.set_ylim(0, 1.25)
    middle.set_ylabel("test accuracy")
    middle.set_title("Accuracy in each runtime")
    middle.legend(fontsize=8, loc="upper center", ncol=3)

    base, slim = figures["unpruned"], figures["pruned + fine-tuned"]
    labels = [label for label, _ in RATIO_ROWS]
    bars = right.bar(labels, [slim[key] / base[key] for _, key in RATIO_ROWS],
                     color=["C0", "C1", "C2", "C4", "C5", "C6"])
    right.bar_label(bars, fmt="%.2f")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_ylabel("pruned / unpruned")
    right.tick_params(axis="x", labelsize=8)
    right.set_title(f"DropNet to {FLAGS.target_macs:.0%} of the MACs: pruned / unpruned")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run():
    import keras

    import tfprune
    from tfprune.training.datasets import fashion_mnist
    from tfprune.training.models import small_vgg

    started = time.perf_counter()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    data = fashion_mnist(train_size=FLAGS.train_size, test_size=FLAGS.test_size, seed=FLAGS.seed)
    (x_train, _), (x_test, y_test) = data
    check = (x_test[: FLAGS.export_check_size], y_test[: FLAGS.export_check_size])
    budget = FLAGS.epochs + FLAGS.finetune_epochs
    out = lambda name: os.path.join(FLAGS.output_dir, name)  # noqa: E731

    print(f"1/4  unpruned small_vgg, {budget} epochs on {len(x_train):,} Fashion-MNIST images", flush=True)
    keras.utils.set_random_seed(FLAGS.seed)
    unpruned = small_vgg()
    unpruned_curve = train(unpruned, data, budget, 1e-3)

    print(f"2/4  same network and initial weights, {FLAGS.epochs} epochs with DropNet down to "
          f"{FLAGS.target_macs:.0%} of the MACs", flush=True)
    keras.utils.set_random_seed(FLAGS.seed)
    model = small_vgg()
    dropnet = tfprune.callbacks.DropNet(x_train[:1024], fraction=FLAGS.fraction, target={"macs": FLAGS.target_macs},
                                        rewind=None, seed=FLAGS.seed, verbose=1)
    dropnet_curve = train(model, data, FLAGS.epochs, 1e-3, callbacks=[dropnet])
    slim = dropnet.slim_model()
    print("3/4  rebuilt without the masked channels; exporting, then fine-tuning "
          f"{FLAGS.finetune_epochs} epochs", flush=True)
    figures = {"unpruned": measure(unpruned, out("unpruned"), data, check),
               "pruned, before fine-tuning": measure(slim, out("pruned_before_finetuning"), data, check)}
    pruned_accuracy = figures["pruned, before fine-tuning"]["accuracy"]
    tuned_curve = train(slim, data, FLAGS.finetune_epochs, 5e-4)
    figures["pruned + fine-tuned"] = measure(slim, out("pruned"), data, check)

    print(f"4/4  timing {len(NAMES)} × 2 files, batch 1, one thread, {FLAGS.runs} calls each", flush=True)
    for engine, key, suffix in (("tflite", "litert_ms", "tflite"), ("onnxruntime", "onnx_ms", "onnx")):
        report = tfprune.benchmark({name: figures[name][suffix] for name in NAMES}, batch_sizes=(1,), threads=(1,),
                                   engines=(engine,), runs=FLAGS.runs, warmup=10)
        for name in NAMES:
            figures[name][key] = report.get(name, engine, 1, 1).median_ms

    base = figures["unpruned"]
    check_n = f"{len(check[0]):,}"
    rows = [["", *NAMES, "fine-tuned / unpruned"]]

    def add(label, key, show, compare):
        values = [figures[name][key] for name in NAMES]
        rows.append([label, *map(show, values), compare(values[-1], base[key])])

    difference = lambda a, b: f"{a - b:+.4f}"  # noqa: E731
    ratio = lambda a, b: f"{a / b:.2f}×"  # noqa: E731
    add(f"test accuracy, Keras ({len(x_test):,} images)", "accuracy", "{:.4f}".format, difference)
    add(f"test accuracy, LiteRT ({check_n} images)", "litert_accuracy", "{:.4f}".format, difference)
    add(f"test accuracy, ONNX Runtime ({check_n} images)", "onnx_accuracy", "{:.4f}".format, difference)
    add("parameters", "params", "{:,}".format, ratio)
    add("MACs per image", "macs", "{:,}".format, ratio)
    add("latency, LiteRT, batch 1, 1 thread (ms)", "litert_ms", "{:.3f}".format, ratio)
    add("latency, ONNX Runtime, batch 1, 1 thread (ms)", "onnx_ms", "{:.3f}".format, ratio)
    add(".tflite file (bytes)", "tflite_bytes", "{:,}".format, ratio)
    add(".onnx file (bytes)", "onnx_bytes", "{:,}".format, ratio)
    largest = max(max(figures[name]["differences"]) for name in NAMES)
    print(f"\nsmall_vgg on Fashion-MNIST, {len(x_train):,} training images, {budget} epochs for each model "
          f"(pruned: {FLAGS.epochs} with DropNet + {FLAGS.finetune_epochs} fine-tuning); "
          f"{', '.join(base['runtimes'])}\n")
    print(table(rows))
    print(f"\nEvery .tflite and .onnx file was loaded back and run on {check_n} test images: largest |difference| "
          f"from its Keras model {largest:.1e}. Accuracy rows: difference from unpruned; other rows: ratio.")
    plot((unpruned_curve, dropnet_curve, pruned_accuracy, tuned_curve), figures, out("demo.png"))
    print(f"written to {FLAGS.output_dir}/: unpruned.*, pruned_before_finetuning.*, pruned.* (.keras, .tflite, "
          f".onnx), demo.png ({time.perf_counter() - started:.0f} s in all)", flush=True)


def main(argv):
    del argv
    with quiet_log(verbose=FLAGS.verbose):
        run()


if __name__ == "__main__":
    app.run(main)
