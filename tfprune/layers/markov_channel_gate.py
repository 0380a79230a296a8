"""MarkovChannelGate: DMCP's differentiable channel gate (Guo et al., "DMCP: Differentiable Markov Channel Pruning
for Neural Networks", CVPR 2020).

The channels of a layer are taken in a fixed order and cut into a minimum prefix followed by channel groups. Whether
group k+1 is kept, given that group k is, is a Bernoulli draw with probability p_k = sigmoid(alpha_k): a Markov chain
whose marginal q_k = p_1 ... p_k is the probability that group k is kept. The expected width,
min + sum_k q_k * size_k, is differentiable in alpha.
"""

import numbers

import keras
import numpy as np
from keras import ops

MODES = ("markov", "mask")


def width_steps(channels, width_range):
    """The kept channel counts a gate can take: `round(channels * w)` for the widths of `width_range`.

    Args:
        channels: the number of channels.
        width_range: `(min_width, max_width, step)` with 0 < min_width < max_width == 1.0 and step > 0.

    Returns:
        Increasing channel counts, the first at least 1, the last `channels`.
    """
    low, high, step = check_width_range(width_range)
    n = int(np.floor((high - low) / step + 1e-6))
    widths = [low + i * step for i in range(n + 1)] + [high]
    counts = sorted({min(max(1, int(round(channels * w))), channels) for w in widths})
    return tuple(counts)


def check_width_range(width_range):
    """`(min_width, max_width, step)` as floats, or a ValueError saying what is wrong."""
    try:
        low, high, step = (float(v) for v in width_range)
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in width_range)
    except (TypeError, ValueError):
        numeric = False
    if not numeric:
        raise ValueError("width_range must be three numbers (min_width, max_width, step), e.g. (0.1, 1.0, 0.1); "
                         f"got {width_range!r}.")
    if not 0 < low < high:
        raise ValueError(f"width_range must be increasing: 0 < min_width < max_width; got {width_range!r}.")
    if abs(high - 1.0) > 1e-9:
        raise ValueError(f"width_range must end at 1.0 (the full layer is always a candidate); got max_width={high}.")
    if not 0 < step <= high - low + 1e-9:
        raise ValueError(f"width_range step must be in (0, max_width - min_width]; got {step}.")
    return low, 1.0, step


@keras.saving.register_keras_serializable(package="tfprune")
class MarkovChannelGate(keras.layers.Layer):
    """Scales (mode "markov") or masks (mode "mask") the channels of its input, DMCP's architecture parameter.

    The gate holds `alpha`, one trainable logit per channel group above the minimum width. In "markov" mode the
    channels of group k are multiplied by the marginal q_k = prod_{i <= k} sigmoid(alpha_i), the probability that
    the chain keeps them; the first `min_channels` are always kept. In "mask" mode the first `width` channels (in
    the gate's channel order) pass and the others are zeroed, which emulates the pruned layer. The mode and the
    width are non-trainable variables, so one traced training step serves every sub-network: switching with
    `set_mask`/`set_markov`, or assigning `width` inside a step, retraces nothing.

    Args:
        channels: the number of channels of the gated tensor (its last axis).
        width_range: `(min_width, max_width, step)` as fractions of `channels`; `max_width` must be 1.0. The kept
            counts are `round(channels * w)` for w = min_width, min_width + step, ..., 1.0 (duplicates merged, at
            least one channel), and the chain has one group per step above the minimum.
        channel_order: optional permutation of `range(channels)`, most important first: the "prefix" kept is the
            first channels of this order. Default: the channels' own order.
        alpha_initializer: initialiser of the logits (default 0: every transition probability starts at 1/2,
            as in the reference implementation).
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Example:

    >>> import numpy as np
    >>> gate = MarkovChannelGate(10, width_range=(0.2, 1.0, 0.2))
    >>> gate.steps
    (2, 4, 6, 8, 10)
    >>> y = gate(np.ones((1, 10), "float32"))
    >>> np.round(keras.ops.convert_to_numpy(y)[0], 4).tolist()  # marginals 1/2, 1/4, 1/8, 1/16 per group of 2
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625, 0.0625]
    >>> round(float(gate.expected_width()), 4)
    3.875
    >>> gate.set_mask(4)
    >>> keras.ops.convert_to_numpy(gate(np.ones((1, 10), "float32")))[0].tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, channels, width_range=(0.1, 1.0, 0.1), channel_order=None, alpha_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1; got {channels!r}.")
        self.channels = int(channels)
        self.width_range = tuple(float(v) for v in check_width_range(width_range))
        self.steps = width_steps(self.channels, self.width_range)
        if channel_order is None:
            order = np.arange(self.channels)
        else:
            order = np.asarray(channel_order)
            if order.shape != (self.channels,) or not np.array_equal(np.sort(order), np.arange(self.channels)):
                raise ValueError(f"channel_order must be a permutation of range({self.channels}); got "
                                 f"{list(np.asarray(channel_order).ravel()[:10])}...")
        self.channel_order = tuple(int(c) for c in order)
        self.alpha_initializer = keras.initializers.get(alpha_initializer)
        rank = np.empty(self.channels, np.int64)
        rank[order] = np.arange(self.channels)
        self._rank = rank  # position of each channel in the order
        # chain group of each position (0 = the always-kept minimum, k = the k-th group above it)
        boundaries = np.asarray(self.steps)
        position_group = np.searchsorted(boundaries, np.arange(self.channels), side="right")
        self._channel_group = position_group[rank]
        self.group_sizes = tuple(int(s) for s in np.diff(boundaries))

    @property
    def min_channels(self) -> int:
        """The channels every sub-network keeps."""
        return self.steps[0]

    @property
    def n_groups(self) -> int:
        """The number of chain groups above the minimum (the length of `alpha`)."""
        return len(self.steps) - 1

    def build(self, input_shape):
        if input_shape[-1] != self.channels:
            raise ValueError(f"MarkovChannelGate '{self.name}' was made for {self.channels} channels but its input "
                             f"has {input_shape[-1]} on the last axis.")
        self.alpha = self.add_weight(shape=(self.n_groups,), initializer=self.alpha_initializer, name="alpha",
                                     trainable=True)
        self.mode = self.add_weight(shape=(), dtype="int32", initializer="zeros", name="mode", trainable=False)
        self.width = self.add_weight(shape=(), dtype="int32", initializer=keras.initializers.Constant(self.channels),
                                     name="width", trainable=False)

    # ---- the chain ----------------------------------------------------------------------------------------

    def transition_probabilities(self):
        """p_k = sigmoid(alpha_k): the probability of keeping group k given group k-1 is kept."""
        return ops.sigmoid(self.alpha)

    def marginals(self):
        """q_k = p_1 ... p_k: the probability that group k is kept (non-increasing in k)."""
        return ops.cumprod(self.transition_probabilities())

    def expected_width(self):
        """The expected number of kept channels, differentiable in `alpha`."""
        sizes = ops.convert_to_tensor(np.asarray(self.group_sizes, "float32"))
        return self.min_channels + ops.sum(self.marginals() * sizes)

    def keep_probability(self):
        """The probability that each channel is kept, in the channels' own index order (shape `(channels,)`)."""
        with_minimum = ops.concatenate([ops.ones((1,), self.alpha.dtype), self.marginals()])
        return ops.take(with_minimum, ops.convert_to_tensor(self._channel_group, "int32"))

    def sample_width(self, seed=None, samples=None):
        """A width drawn from the chain (an int32 scalar tensor), for sampling sub-networks inside a step; with
        `samples=n`, n independent draws (shape `(n,)`)."""
        shape = (self.n_groups,) if samples is None else (int(samples), self.n_groups)
        draws = keras.random.uniform(shape, seed=seed)
        kept = ops.cumprod(ops.cast(draws < self.transition_probabilities(), "int32"), axis=-1)
        sizes = ops.convert_to_tensor(np.asarray(self.group_sizes, "int32"))
        return self.min_channels + ops.sum(kept * sizes, axis=-1)

    def uniform_width(self, seed=None):
        """A width drawn uniformly from `steps` (an int32 scalar tensor)."""
        index = keras.random.randint((), 0, len(self.steps), seed=seed, dtype="int32")
        return ops.take(ops.convert_to_tensor(np.asarray(self.steps, "int32")), index)

    # ---- modes --------------------------------------------------------------------------------------------

    def set_markov(self):
        """Scale channel groups by their marginals (the architecture step)."""
        self._require_built()
        self.mode.assign(0)

    def set_mask(self, width):
        """Keep the first `width` channels of the order and zero the others (a sub-network)."""
        self._require_built()
        if isinstance(width, numbers.Integral) and not 1 <= width <= self.channels:
            raise ValueError(f"width must be in [1, {self.channels}]; got {width}.")
        self.mode.assign(1)
        self.width.assign(width)

    def set_full(self):
        """Pass every channel (mask mode at full width)."""
        self.set_mask(self.channels)

    def _require_built(self):
        if not self.built:
            raise RuntimeError(f"MarkovChannelGate '{self.name}' is not built yet: call it on a tensor first.")

    # ---- layer --------------------------------------------------------------------------------------------

    def call(self, inputs):
        markov = ops.cast(self.keep_probability(), inputs.dtype)
        rank = ops.convert_to_tensor(self._rank, "int32")
        mask = ops.cast(rank < self.width, inputs.dtype)
        return inputs * ops.where(ops.equal(self.mode, 0), markov, mask)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        order = None if self.channel_order == tuple(range(self.channels)) else list(self.channel_order)
        config.update(channels=self.channels, width_range=list(self.width_range), channel_order=order,
                      alpha_initializer=keras.initializers.serialize(self.alpha_initializer))
        return config
