"""Per-epoch seconds and train-step traces of a plain fit and of a DropNet fit (one pruning step per epoch) of
small_vgg on 2000 Fashion-MNIST images, 5 epochs, batch 128 (a quick check beside benchmarks/callback_overhead.py):

    KERAS_BACKEND=jax python benchmarks/dropnet_traces.py plain,dropnet    # the variants, in turn (the default)

A trace is one Python call of the model's `train_step` (Keras traces the step once per batch shape: 2 here, the
last batch being smaller). Prints one line per variant; results in benchmarks/results/callback_overhead_backends.md.
"""


import keras
from absl import app, flags

import tfprune
from tfprune.callbacks import DropNet

import shared_setup

FLAGS = flags.FLAGS
shared_setup.define_fashion_mnist(train_size=2000)
shared_setup.define_training(batch_size=128, epochs=5)
VARIANTS = ("plain", "dropnet")


class Counting(keras.Model):
    traces = 0

    def train_step(self, *args):
        Counting.traces += 1
        return super().train_step(*args)


def main(argv):
    variants = argv[1].split(",") if len(argv) > 1 else list(VARIANTS)
    if len(argv) > 2 or not set(variants) <= set(VARIANTS):
        raise app.UsageError(f"Give the variants to run as one argument, from {', '.join(VARIANTS)}, e.g. "
                             f"plain,dropnet; got {' '.join(argv[1:])!r}.")
    (x, y), _ = tfprune.datasets.fashion_mnist(train_size=FLAGS.train_size, test_size=1)
    for variant in variants:
        keras.utils.set_random_seed(0)
        base = shared_setup.reference_cnn("vgg")()
        model = Counting(base.inputs, base.outputs)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
        Counting.traces = 0
        timer = shared_setup.epoch_timer()
        cbs = [DropNet(x[:512], fraction=0.02, rewind=None)] if variant == "dropnet" else []
        model.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=0, callbacks=cbs + [timer])
        print(variant, "traces", Counting.traces, "epochs", " ".join(f"{s:.2f}" for s in timer.seconds), flush=True)


if __name__ == "__main__":
    app.run(main)
