"""Training budgets from "Rethinking the Value of Network Pruning" (Liu et al., ICLR 2019)."""

import math
import numbers

from tfprune.measurement.counting import count_macs


def scratch_b_epochs(epochs, model, slim, max_factor=None):
    """Scratch-B: epochs for training the slim model from scratch with the full model's compute budget.

    `epochs × MACs(model) / MACs(slim)`, rounded up (Scratch-E trains the same number of epochs instead).
    `max_factor` caps the result at `epochs × max_factor`: Liu et al. used the full ratio on CIFAR and capped it at 2
    on ImageNet (their reference code trains at most 180 epochs where the full model trained 90).

    Example:

    >>> import keras, tfprune
    >>> model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    >>> slim = tfprune.prune(model, 0.5)
    >>> tfprune.scratch_b_epochs(10, model, slim) > 10
    True
    >>> tfprune.scratch_b_epochs(10, model, slim, max_factor=1.5)
    15
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1; got {epochs!r}.")
    if max_factor is not None and (isinstance(max_factor, bool) or not isinstance(max_factor, numbers.Real)
                                   or not max_factor >= 1):
        raise ValueError(f"max_factor must be None or a number >= 1; got {max_factor!r}.")
    ratio = count_macs(model) / count_macs(slim)
    if max_factor is not None:
        ratio = min(ratio, max_factor)
    return math.ceil(epochs * ratio)
