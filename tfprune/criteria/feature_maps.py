"""Criteria that rank channels by their post-activation feature maps on data: mean activation, APoZ, HRank, Taylor.

Each is a small callable object `criterion(graph, group, model, data) -> one score per channel` (higher = keep),
usable by name in `tfprune.plan(model, ratio, criterion=NAME, data=...)` or as an object with its own settings.
The feature maps are those that the layers consuming each group read (see `tfprune.criteria.activations`); an
attention layer's heads and head widths are scored by its heads' outputs (the input of its output projection), so
`MeanActivation` ranks heads by the magnitude of their attention output and `Taylor` by the first-order change of
the loss when a head's output is removed, and `scope="global"` ranks heads of every layer together. (`APoZ` is
defined there too, but attention outputs are almost never exactly zero.)

**One pass, cached per object.** `plan` calls a criterion once per group; the first call measures every group in
one batched pass over `data` and later calls read the stored scores. The cache belongs to the object and is keyed
on the identity of `model` and `data` (the very same objects, not equal ones): passing one object to several
`plan` calls measures once (e.g. plans at several ratios); a criterion given by name is a fresh object in every
`plan` call. Weights changed in place are not noticed: call `reset()` after training or masking the model.
"""

import numbers

from tfprune.criteria.activations import ActivationTaps


class FeatureMapCriterion:
    """Base class: measures one statistic of every group's feature maps once per (model, data) and caches it.

    Args:
        batch_size: batch size for array data.
        steps: measure on at most this many batches (None: all of `data`).
        verbose: 1 shows a progress bar during the measurement, 0 is silent.

    Attributes:
        measurements: how many passes over data this object has run.
    """

    statistic = None
    name = None

    def __init__(self, batch_size=32, steps=None, verbose=1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
            raise ValueError(f"steps must be None or an integer >= 1; got {steps!r}.")
        if verbose not in (0, 1):
            raise ValueError(f"verbose must be 0 or 1; got {verbose!r}.")
        self.batch_size, self.steps, self.verbose = int(batch_size), steps, verbose
        self.measurements = 0
        self._taps = None
        self._scores = None  # (model, data, {group name: scores})

    def statistics_options(self):
        """Extra keyword arguments of `ActivationTaps.channel_statistics` (e.g. the loss)."""
        return {}

    def to_scores(self, values):
        """Scores (higher = keep) from the measured statistic of one group."""
        return values

    def reset(self):
        """Forget the stored measurement (call it after the model's weights changed)."""
        self._scores = None

    def measure(self, model, data, graph=None):
        """`{group name: scores}` for every measured group of `model` on `data` (from the cache when it has them)."""
        if model is None:
            raise ValueError(f"The {self.name!r} criterion measures the model's feature maps: it needs the model.")
        if data is None:
            raise ValueError(f"The {self.name!r} criterion ranks channels by their feature maps on data: pass "
                             "data=... (anything model.predict accepts" +
                             (", with labels: (x, y)" if self.statistic == "taylor" else "") + ") to tfprune.plan.")
        cached = self._scores
        if cached is not None and cached[0] is model and cached[1] is data:
            return cached[2]
        if self._taps is None or self._taps.source is not model:
            self._taps = ActivationTaps(model, graph if graph is not None and graph.source is model else None)
        stats = self._taps.channel_statistics(data, (self.statistic,), batch_size=self.batch_size, steps=self.steps,
                                              verbose=self.verbose, **self.statistics_options())
        self.measurements += 1
        scores = {name: self.to_scores(values[self.statistic]) for name, values in stats.items()}
        self._scores = (model, data, scores)
        return scores

    def __call__(self, graph, group, model=None, data=None):
        scores = self.measure(model, data, graph)
        if group.name not in scores:
            raise ValueError(f"Group '{group.name}' has channels that no convolution, Dense or attention layer "
                             "reads (they reach a model output, or only layers tfprune does not measure read them), "
                             f"so the {self.name!r} criterion has no feature maps to rank them by; score it with a "
                             "weight criterion such as 'l1', or leave it out of the plan (ratio={group name: "
                             "ratio} for the other groups).")
        return scores[group.name]

    def __repr__(self):
        return f"{type(self).__name__}(batch_size={self.batch_size}, steps={self.steps})"


class MeanActivation(FeatureMapCriterion):
    """Mean |post-activation| of each channel over data (DropNet's metric): low mean activation = less important.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((6, 6, 1))
    >>> x = keras.layers.Conv2D(3, 1, use_bias=False, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> model.get_layer("conv").set_weights([np.array([[[[2.0, -1.0, 1.0]]]])])
    >>> tfprune.plan(model, 0.34, criterion=MeanActivation(verbose=0), data=np.ones((4, 6, 6, 1))).keep["conv"]
    (0, 2)
    """

    statistic = "mean_abs"
    name = "mean_activation"


class APoZ(FeatureMapCriterion):
    """Average Percentage of Zeros (Hu et al., 2016): the fraction of a channel's post-activation values that are
    exactly zero. A high APoZ marks an unimportant channel, so the score is 1 − APoZ. Meaningful after ReLU-like
    activations (other activations are almost never exactly zero).

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((6, 6, 1))
    >>> x = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> model.get_layer("conv").set_weights([np.array([[[[1.0, -1.0]]]])])
    >>> tfprune.plan(model, 0.5, criterion=APoZ(verbose=0), data=np.ones((2, 6, 6, 1))).keep["conv"]
    (0,)
    """

    statistic = "zero_fraction"
    name = "apoz"

    def to_scores(self, values):
        return 1.0 - values


class HRank(FeatureMapCriterion):
    """HRank (Lin et al., CVPR 2020): the average matrix rank of each channel's H×W post-activation map.

    Low-rank maps carry less information, so they are removed first. The ranks are computed in TensorFlow on the
    whole batch at once (`tf.linalg.matrix_rank` of [batch, channels, H, W]); the default measures 5 batches of 128
    images, as the paper's code does. Maps that are not 2-D (Conv1D, Dense inputs) are ranked as described in
    `tfprune.criteria.activations` (rank 1 if non-zero, else 0). Per-layer ratios as in the paper's configurations
    are given to `tfprune.plan` as a dict `{group name: ratio}`.

    Args:
        batch_size: images per batch (default 128).
        steps: batches to measure (default 5; None: all of `data`).
        verbose: progress bar (default 1).
    """

    statistic = "rank"
    name = "hrank"

    def __init__(self, batch_size=128, steps=5, verbose=1):
        super().__init__(batch_size=batch_size, steps=steps, verbose=verbose)


class Taylor(FeatureMapCriterion):
    """First-order Taylor importance (Molchanov et al., ICLR 2017): for each example, |mean over the map of
    activation × ∂loss/∂activation|, averaged over examples. A channel whose removal would change the loss little
    scores low.

    Needs labels: `data` as `(x, y)` arrays or a dataset of `(x, y)` batches. The loss is `loss` when given (a name,
    a `keras.losses.Loss` or a callable `(y_true, y_pred)`), else the loss the model was compiled with; it is
    evaluated per example in inference mode (BatchNormalization uses its moving statistics).

    Args:
        loss: the loss to differentiate; None uses `model.loss`.
        batch_size, steps, verbose: as in `FeatureMapCriterion`.
    """

    statistic = "taylor"
    name = "taylor"

    def __init__(self, loss=None, batch_size=32, steps=None, verbose=1):
        super().__init__(batch_size=batch_size, steps=steps, verbose=verbose)
        self.loss = loss

    def statistics_options(self):
        return {"loss": self.loss}
