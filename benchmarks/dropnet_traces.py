"""Per-epoch seconds and train-step traces of a plain fit and of a DropNet fit (one pruning step per epoch) of
small_vgg on 2000 Fashion-MNIST images, 5 epochs, batch 128 (a quick check beside benchmarks/callback_overhead.py):

    KERAS_BACKEND=jax python benchmarks/dropnet_traces.py plain,dropnet

A trace is one Python call of the model's `train_step` (Keras traces the step once per batch shape: 2 here, the
last batch being smaller). Prints one line per variant; results in benchmarks/results/callback_overhead_backends.md.
"""

import sys
import time

import keras

import tfprune
from tfprune.callbacks import DropNet


class Counting(keras.Model):
    traces = 0

    def train_step(self, *args):
        Counting.traces += 1
        return super().train_step(*args)



class EpochSeconds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.s = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.s.append(time.perf_counter() - self.t)


def main(variants):
    (x, y), _ = tfprune.datasets.fashion_mnist(train_size=2000, test_size=1)
    for variant in variants.split(","):
        keras.utils.set_random_seed(0)
        base = tfprune.models.small_vgg()
        model = Counting(base.inputs, base.outputs)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
        Counting.traces = 0
        t = EpochSeconds()
        cbs = [DropNet(x[:512], fraction=0.02, rewind=None)] if variant == "dropnet" else []
        model.fit(x, y, epochs=5, batch_size=128, verbose=0, callbacks=cbs + [t])
        print(variant, "traces", Counting.traces, "epochs", " ".join(f"{s:.2f}" for s in t.s), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "plain,dropnet")
