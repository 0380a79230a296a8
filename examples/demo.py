"""The main job: train a small CNN on Fashion-MNIST, prune it, fine-tune, export and compare before/after.

    python examples/demo.py [--output_dir=demo_output] [--target_macs=0.25] [--epochs=3] [--finetune_epochs=2]

1. Trains `tfprune.models.small_vgg()` on a subset of the real Fashion-MNIST (`tfprune.datasets.fashion_mnist()`,
   read offline from the Debian package's copy).
   While it trains, the `tfprune.callbacks.DropNet` callback masks, at the end of every epoch, the channels with the
   lowest mean activation (a share of the remaining ones), until the masked model has `--target_macs` of the MACs.
2. Rebuilds: `dropnet.slim_model()` returns a physically smaller keras.Model without the masked channels.
3. Fine-tunes the slim model.
4. Exports both models as SavedModel and TFLite with `tfprune.export`, which reloads each artefact and checks it
   (the TFLite accuracy on test images is reported).
5. Times both TFLite files with `tfprune.benchmark` and prints one before/after table; saves demo.png (training
   curves and the after/before ratios) and the artefacts in `--output_dir`.
"""

import os
import time

import keras
import numpy as np
from absl import app, flags, logging

import tfprune
from tfprune.datasets import fashion_mnist
from tfprune.models import small_vgg

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Where the models, exports and demo.png go.")
flags.DEFINE_float("target_macs", 0.25, "MACs of the pruned model over the original's, in (0, 1].")
flags.DEFINE_float("fraction", 0.4, "DropNet: share of the remaining channels masked at the end of each epoch.")
flags.DEFINE_integer("train_size", 12000, "Training images (a random subset of the 60,000).")
flags.DEFINE_integer("test_size", 10000, "Test images (a random subset of the 10,000).")
flags.DEFINE_integer("export_check_size", 2000, "Test images the TFLite files are checked and scored on.")
flags.DEFINE_integer("epochs", 3, "Training epochs of the original model.")
flags.DEFINE_integer("finetune_epochs", 2, "Fine-tuning epochs of the pruned model.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("runs", 200, "Timed TFLite calls per model (batch 1, one thread).")
flags.DEFINE_integer("seed", 0, "Random seed (data subset, initial weights).")


def train(model, data, epochs, learning_rate, callbacks=()):
    (x_train, y_train), (x_test, y_test) = data
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=FLAGS.batch_size, epochs=epochs,
                        validation_data=(x_test, y_test), verbose=2, callbacks=list(callbacks))
    return history.history["val_accuracy"]


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=1000, verbose=0), axis=-1) == y))


def export_both(model, name, check_x, check_y):
    saved_model = tfprune.export(model, os.path.join(FLAGS.output_dir, f"{name}_saved_model"), format="saved_model",
                                 representative_data=check_x[:64])
    tflite = tfprune.export(model, os.path.join(FLAGS.output_dir, f"{name}.tflite"), format="tflite",
                            representative_data=check_x, labels=check_y)
    logging.info("%s: SavedModel max |difference| %.1e, TFLite max |difference| %.1e", name,
                 saved_model.max_abs_difference, tflite.max_abs_difference)
    return saved_model, tflite


def table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                      strict=True)))
             for row in rows]
    lines.insert(1, "─" * len(lines[0]))
    return "\n".join(lines)


def plot(curves, ratios, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    trained, after_pruning, tuned = curves
    epochs = np.arange(1, len(trained) + 1)
    left.plot(epochs, trained, "o-", label="original: training")
    left.plot([epochs[-1] + 0.5], [after_pruning], "x", markersize=10, color="C3", label="right after pruning")
    left.plot(epochs[-1] + 1 + np.arange(len(tuned)), tuned, "s-", color="C2", label="pruned: fine-tuning")
    left.set_xlabel("epoch")
    left.set_ylabel("test accuracy")
    left.set_title("Fashion-MNIST test accuracy")
    left.legend()
    left.grid(alpha=0.3)
    names, values = zip(*ratios.items(), strict=True)
    bars = right.bar(names, values, color=["C0", "C1", "C2", "C4", "C5"][: len(values)])
    right.bar_label(bars, fmt="%.2f")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_ylabel("pruned / original")
    right.set_title(f"DropNet to {FLAGS.target_macs:.0%} of the MACs, then fine-tuning")
    right.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    started = time.perf_counter()
    keras.utils.set_random_seed(FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    data = fashion_mnist(train_size=FLAGS.train_size, test_size=FLAGS.test_size, seed=FLAGS.seed)
    (x_train, _), (x_test, y_test) = data
    logging.info("Fashion-MNIST: %d training and %d test images", len(x_train), len(x_test))

    model = small_vgg()
    dropnet = tfprune.callbacks.DropNet(x_train[:1024], fraction=FLAGS.fraction, target={"macs": FLAGS.target_macs},
                                        rewind=None, seed=FLAGS.seed, verbose=1)
    trained_curve = train(model, data, FLAGS.epochs, 1e-3, callbacks=[dropnet])
    slim = dropnet.slim_model()
    pruned_accuracy = accuracy(slim, x_test, y_test)
    logging.info("pruned: test accuracy %.4f before fine-tuning", pruned_accuracy)
    tuned_curve = train(slim, data, FLAGS.finetune_epochs, 5e-4)
    model.save(os.path.join(FLAGS.output_dir, "original.keras"))
    slim.save(os.path.join(FLAGS.output_dir, "pruned.keras"))

    check_x, check_y = x_test[: FLAGS.export_check_size], y_test[: FLAGS.export_check_size]
    exports = {name: export_both(m, name, check_x, check_y) for name, m in (("original", model), ("pruned", slim))}
    latency = tfprune.benchmark({name: tflite.path for name, (_, tflite) in exports.items()}, batch_sizes=(1,),
                                threads=(1,), engines=("tflite",), runs=FLAGS.runs, warmup=10)

    figures = {}
    for name, m in (("original", model), ("pruned", slim)):
        saved_model, tflite = exports[name]
        figures[name] = {"accuracy": accuracy(m, x_test, y_test), "tflite_accuracy": tflite.accuracy,
                         "params": tfprune.count_params(m), "macs": tfprune.count_macs(m),
                         "latency": latency.get(name, "tflite", 1, 1).median_ms, "tflite_bytes": tflite.size_bytes,
                         "saved_model_bytes": saved_model.size_bytes}
    before, after = figures["original"], figures["pruned"]

    def row(label, key, show, ratio=True):
        return [label, show(before[key]), show(after[key]), f"{after[key] / before[key]:.2f}" if ratio else ""]

    rows = [["", "trained (full size, masked)", "rebuilt + fine-tuned", "after/before"],
            row(f"test accuracy (Keras, {len(x_test):,} images)", "accuracy", "{:.4f}".format, ratio=False),
            row(f"test accuracy (TFLite, {len(check_x):,} images)", "tflite_accuracy", "{:.4f}".format, ratio=False),
            row("parameters", "params", "{:,}".format),
            row("MACs per image", "macs", "{:,}".format),
            row("TFLite latency, batch 1, 1 thread (ms)", "latency", "{:.3f}".format),
            row(".tflite file (bytes)", "tflite_bytes", "{:,}".format),
            row("SavedModel (bytes)", "saved_model_bytes", "{:,}".format)]
    print(f"\nsmall_vgg on Fashion-MNIST ({len(x_train):,} training images, {FLAGS.epochs} epochs; "
          f"DropNet during training, {FLAGS.finetune_epochs} fine-tuning epochs; "
          f"accuracy right after pruning, before fine-tuning: {pruned_accuracy:.4f})\n")
    print(table(rows))
    ratios = {key: after[key] / before[key] for key in ("params", "macs", "latency", "tflite_bytes")}
    ratios = dict(zip(["parameters", "MACs", "TFLite latency", ".tflite size"], ratios.values(), strict=True))
    plot((trained_curve, pruned_accuracy, tuned_curve), ratios, os.path.join(FLAGS.output_dir, "demo.png"))
    print(f"\nwritten to {FLAGS.output_dir}/: original.keras, pruned.keras, *_saved_model/, *.tflite, demo.png "
          f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    app.run(main)
