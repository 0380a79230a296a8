"""He et al.'s channel pruning (LASSO selection + least-squares reconstruction) against L1 on Fashion-MNIST.

    nice -n 10 python benchmarks/lasso.py [--models=small_vgg,small_resnet] [--ratio=0.3] [--epochs=2]

For each reference CNN (`tfprune.models`), trained briefly on real Fashion-MNIST, the same per-layer ratio is
planned by L1 and by LASSO, each rebuilt with and without reconstruction (`tfprune.reconstruct` works with any
plan), plus random selection as the floor. Reported: the relative error of every refitted layer's
linear output against the original network on held-out images (`output_errors`), the relative error of the logits,
and the test accuracy before and after a short fine-tune. Writes benchmarks/results/lasso.md.
"""

import os
import time

import keras
import numpy as np
from absl import app, flags

import tfprune
from tfprune.criteria import LassoSelection
from tfprune.criteria.channel_pruning.reconstruction import output_errors, reconstruct
from tfprune.training.datasets import fashion_mnist

import shared_setup

FLAGS = flags.FLAGS
shared_setup.define_models(["small_vgg", "small_resnet"])
flags.DEFINE_float("ratio", 0.3, "Fraction of channels removed per group (0.3 removes about half the MACs).")
shared_setup.define_fashion_mnist(train_size=12000, test_size=2000)
shared_setup.define_training(epochs=3, finetune_epochs=1, epochs_help="Training epochs of the original model.",
                             finetune_help="Fine-tuning epochs of each pruned model.")
flags.DEFINE_integer("images", 1500, "Images sampled by LASSO selection and reconstruction.")
flags.DEFINE_integer("locations", 10, "Positions sampled per image and layer.")
flags.DEFINE_integer("seed", 0, "Seed of training, sampling and the random floor.")
shared_setup.define_out("lasso.md", "Markdown output.")


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def recalibrate_batchnorm(model, x, batch_size=250):
    """Set every BatchNormalization's moving statistics to their average over `x` (in batches, training mode).

    Brief training with Keras' default momentum (0.99) leaves moving statistics far from the batch statistics
    (small_resnet after 3 epochs: 0.87 training accuracy, 0.20 test accuracy in inference mode), so the original
    models and every fine-tuned model are recalibrated on training images before they are evaluated.
    """
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    for i, start in enumerate(range(0, len(x), batch_size)):
        for layer in norms:
            layer.momentum = i / (i + 1)  # a running mean over the batches
        model(x[start: start + batch_size], training=True)
    for layer, momentum in zip(norms, saved, strict=True):
        layer.momentum = momentum


def accuracy(model, x, y):
    return float((np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y).mean())


def logits_error(model, slim, x):
    """Relative error of the classifier's inputs to softmax, i.e. of the logits (the Dense before softmax)."""
    def logits(m):
        head = m.get_layer("predictions")
        features = keras.Model(m.inputs, head.input)(x[:512], training=False)
        return np.asarray(features) @ head.kernel.numpy() + head.bias.numpy()
    a, b = logits(model), logits(slim)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def run_model(name, data):
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(FLAGS.seed)
    model = compiled(shared_setup.reference_cnn(name)())
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=128, verbose=0)
    train_s = time.perf_counter() - t0
    recalibrate_batchnorm(model, x_train[:5000])
    base_acc = accuracy(model, x_test, y_test)
    sample = x_train[: FLAGS.images]
    options = dict(images=FLAGS.images, locations_per_image=FLAGS.locations, seed=FLAGS.seed)
    t0 = time.perf_counter()
    lasso = LassoSelection(**options)
    plans = {"L1": tfprune.plan(model, FLAGS.ratio),
             "LASSO": tfprune.plan(model, FLAGS.ratio, criterion=lasso, data=sample),
             "random": tfprune.plan(model, FLAGS.ratio, criterion="random", seed=FLAGS.seed)}
    select_s = time.perf_counter() - t0
    rows, layer_rows, timings = [], {}, {"train": train_s, "LASSO selection": select_s}
    for label, plan_name, refit in (("random", "random", False), ("L1", "L1", False),
                                    ("L1 + reconstruction", "L1", True), ("LASSO selection only", "LASSO", False),
                                    ("He et al. (LASSO + reconstruction)", "LASSO", True)):
        plan = plans[plan_name]
        slim = tfprune.rebuild(model, plan)
        if refit:
            t0 = time.perf_counter()
            report = reconstruct(model, slim, plan, sample, **options)
            timings[f"reconstruction ({plan_name})"] = time.perf_counter() - t0
            if report.skipped:
                print(f"{name} {label}: skipped {report.skipped}")
        errors = output_errors(model, slim, plan, x_test, images=min(1000, len(x_test)), seed=FLAGS.seed + 1)
        layer_rows[label] = errors
        macs = tfprune.count_macs(slim) / tfprune.count_macs(model)
        pruned_acc = accuracy(slim, x_test, y_test)
        err = logits_error(model, slim, x_test)
        keras.utils.set_random_seed(FLAGS.seed)
        compiled(slim).fit(x_train, y_train, epochs=FLAGS.finetune_epochs, batch_size=128, verbose=0)
        recalibrate_batchnorm(slim, x_train[:5000])
        tuned_acc = accuracy(slim, x_test, y_test)
        rows.append((label, macs, err, pruned_acc, tuned_acc))
        print(f"{name} | {label} | MACs ×{macs:.2f} | logits error {err:.3f} | acc {pruned_acc:.4f} → "
              f"{tuned_acc:.4f}", flush=True)
    return base_acc, rows, layer_rows, timings


def main(argv):
    del argv
    data = fashion_mnist(train_size=FLAGS.train_size, test_size=FLAGS.test_size, seed=FLAGS.seed)
    lines = [f"Fashion-MNIST ({FLAGS.train_size} train / {FLAGS.test_size} test examples), original models "
             f"trained {FLAGS.epochs} epochs (Adam 1e-3, batch 128); {FLAGS.ratio:.0%} of the channels of every "
             f"prunable group removed; LASSO and reconstruction sample {FLAGS.images} training images × "
             f"{FLAGS.locations} positions per layer; errors measured on held-out test images; fine-tune "
             f"{FLAGS.finetune_epochs} epoch(s). BatchNorm moving statistics of the original models and of every "
             "fine-tuned model are recomputed on 5000 training images before evaluation (short training leaves them "
             "stale); the 'accuracy pruned' column is without any recalibration: the pruning method alone. "
             f"{os.cpu_count()} CPU cores, shared.",
             "", "Command: `nice -n 10 python benchmarks/lasso.py " + " ".join(
                 f"--{k}={getattr(FLAGS, k)}" for k in ("ratio", "epochs", "finetune_epochs", "images")) + "`", ""]
    for name in FLAGS.models:
        base_acc, rows, layer_rows, timings = run_model(name, data)
        lines += [f"## {name} (test accuracy before pruning {base_acc:.4f})", "",
                  "| method | MACs after / before | logits relative error | accuracy pruned | after fine-tune |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | {macs:.2f} | {err:.3f} | {acc:.4f} | {tuned:.4f} |"
                  for label, macs, err, acc, tuned in rows]
        labels = list(layer_rows)
        paths = sorted({p for errors in layer_rows.values() for p in errors},
                       key=lambda p: min(list(errors).index(p) for errors in layer_rows.values() if p in errors))
        lines += ["", "Relative error of each layer's linear output vs the original network (held-out images):", "",
                  "| layer | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for p in paths:
            cells = [f"{layer_rows[label][p]:.3f}" if p in layer_rows[label] else "–" for label in labels]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines += ["", "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), ""]
        keras.backend.clear_session()
    shared_setup.write_text(FLAGS.out, "\n".join(lines))
    print(f"written {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
