"""Training budgets from "Rethinking the Value of Network Pruning" (Liu et al., ICLR 2019)."""

import math

from tfprune.counting import count_macs


def scratch_b_epochs(epochs, model, slim):
    """Scratch-B: epochs for training the slim model from scratch with the full model's compute budget.

    `epochs × MACs(model) / MACs(slim)`, rounded up (Scratch-E trains the same number of epochs instead).

    Example:

    >>> import keras, tfprune
    >>> model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    >>> slim = tfprune.prune(model, 0.5)
    >>> tfprune.scratch_b_epochs(10, model, slim) > 10
    True
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1; got {epochs!r}.")
    return math.ceil(epochs * count_macs(model) / count_macs(slim))
