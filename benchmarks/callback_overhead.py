"""What the pruning callbacks cost during `fit`: epoch time with NetworkSlimming, GroupLasso or DropNet active over
plain `fit`, and DropNet's measuring pass over an epoch, measured in the same run.

    python benchmarks/callback_overhead.py            # writes benchmarks/results/callback_overhead.md
    KERAS_BACKEND=jax python benchmarks/callback_overhead.py --out=...   # the same on the JAX backend

The table says which Keras backend ran it. A DropNet step changes mask variables only: it retraces nothing on
either backend (before, on JAX, the masks were constants of the step and each step cost one retrace).

Plain, NetworkSlimming, GroupLasso and DropNet fits of the same model and data take turns, `--rounds` times,
`--epochs` epochs each; an epoch's time runs from the start of the epoch to the end of every callback's
`on_epoch_end` (the per-epoch logs and DropNet's pruning step included). The first epoch of each fit (tracing) is
left out; the medians of the others are compared. Goals: ≤ 1.05× for NetworkSlimming and GroupLasso; DropNet's
measuring pass ≤ 10% of an epoch.
"""

import statistics

import keras
from absl import app, flags, logging

import tfprune
from tfprune.callbacks import DropNet, GroupLasso, NetworkSlimming

import shared_setup

FLAGS = flags.FLAGS
shared_setup.define_models(["vgg", "resnet"])
shared_setup.define_fashion_mnist(train_size=8000, train_help="Training images per epoch.")
flags.DEFINE_integer("sample_size", 1024, "Images DropNet measures activations on.")
shared_setup.define_training(batch_size=128, epochs=4, epochs_help="Epochs per fit (the first is not timed).")
flags.DEFINE_integer("rounds", 2, "Rounds of plain / callback fits taking turns.")
shared_setup.define_out("callback_overhead.md", "Output.")


def variants(x_sample):
    return {
        "plain": lambda: [],
        "NetworkSlimming": lambda: [NetworkSlimming(l1=1e-4)],
        "GroupLasso": lambda: [GroupLasso(strength=1e-4, groups=("filter", "channel"))],
        # a small fraction and no target: one pruning step (and measuring pass) at the end of every epoch
        "DropNet": lambda: [DropNet(x_sample, fraction=0.02, rewind=None)],
    }


def measure(name, x, y):
    times = {}
    measuring = []
    for _ in range(FLAGS.rounds):
        for variant, make in variants(x[:FLAGS.sample_size]).items():
            keras.utils.set_random_seed(0)
            model = shared_setup.sgd_compiled(shared_setup.reference_cnn(name)(), 0.05)
            callbacks = make()
            timer = shared_setup.epoch_timer()
            model.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0, callbacks=callbacks + [timer])
            times.setdefault(variant, []).extend(timer.seconds[1:])
            if variant == "DropNet":
                measuring.extend(step["measure_seconds"] for step in callbacks[0].history[1:])
    medians = {variant: statistics.median(seconds) for variant, seconds in times.items()}
    return medians, statistics.median(measuring)


def main(argv):
    del argv
    (x, y), _ = tfprune.datasets.fashion_mnist(train_size=FLAGS.train_size, test_size=1)
    lines = [f"Fashion-MNIST, {FLAGS.train_size} images per epoch, batch {FLAGS.batch_size}, median of "
             f"{FLAGS.rounds} × {FLAGS.epochs - 1} epochs per variant (first epoch of each fit left out), fits taking "
             f"turns; DropNet measures on {FLAGS.sample_size} images. 2 CPU cores "
             f"(`python benchmarks/callback_overhead.py`), load average before: {shared_setup.load_average()}.", "",
             "| backend | model | plain epoch s | NetworkSlimming s (ratio) | GroupLasso s (ratio) | DropNet s (ratio) "
             "| DropNet measuring pass s (share of a plain epoch) |", "|---|---|---|---|---|---|---|"]
    for name in FLAGS.models:
        medians, measuring = measure(name, x, y)
        plain = medians["plain"]
        cells = [f"{medians[v]:.2f} ({medians[v] / plain:.3f}×)" for v in ("NetworkSlimming", "GroupLasso",
                                                                          "DropNet")]
        model_name = shared_setup.reference_cnn(name)().name
        lines.append(f"| {keras.backend.backend()} | {model_name} | {plain:.2f} | " + " | ".join(cells)
                     + f" | {measuring:.2f} ({measuring / plain:.1%}) |")
        logging.info("%s", lines[-1])
    text = "\n".join(lines) + "\n"
    print(text)
    shared_setup.write_text(FLAGS.out, text)


if __name__ == "__main__":
    app.run(main)
