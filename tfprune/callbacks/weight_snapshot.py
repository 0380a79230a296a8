"""WeightSnapshot: keep a copy of the weights at θ0 or after epoch k, for lottery-ticket rewinding."""

import numbers

import keras
import numpy as np


class WeightSnapshot(keras.callbacks.Callback):
    """Captures the model's weights once: before the first training step (`epoch=0`, θ0) or after epoch `k` (θk).

    The snapshot is what `tfprune.rebuild(model, plan, reinit="lottery", initial_weights=snapshot.weights)` slices
    to rewind the surviving channels (Frankle & Carbin's θ0; "late rewinding" to θk).

    Args:
        epoch: 0 for the weights before training, k >= 1 for the weights after the k-th epoch.
        verbose: 1 prints one line when the snapshot is taken.

    Attributes:
        weights: `{variable.path: numpy array}` for every weight of the model, or None until captured.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d"), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> snapshot = tfprune.callbacks.WeightSnapshot(epoch=0)
    >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=1, verbose=0, callbacks=[snapshot])
    >>> slim = tfprune.rebuild(model, tfprune.plan(model, 0.5), reinit="lottery",
    ...                        initial_weights=snapshot.weights)
    >>> slim.get_layer("d").units
    4
    """

    def __init__(self, epoch=0, verbose=0):
        super().__init__()
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0 (0 = before training, k = after epoch k); got {epoch!r}.")
        self.epoch = int(epoch)
        self.verbose = verbose
        self.weights = None

    def _capture(self, when):
        self.weights = {v.path: np.array(v.numpy()) for v in self.model.weights}
        if self.verbose:
            print(f"WeightSnapshot: captured {len(self.weights)} weights {when}")

    def on_train_begin(self, logs=None):
        if self.epoch == 0 and self.weights is None:
            self._capture("before training (theta_0)")

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch == epoch + 1 and self.weights is None:
            self._capture(f"after epoch {self.epoch}")

    def get_config(self):
        return {"epoch": self.epoch, "verbose": self.verbose}
