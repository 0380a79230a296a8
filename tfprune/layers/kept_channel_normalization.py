"""KeptChannelNormalization: a LayerNormalization or RMSNormalization whose statistics cover some channels only."""

import keras
import numpy as np
from keras import ops

NORMALIZATIONS = (keras.layers.LayerNormalization, keras.layers.RMSNormalization)


def _last_axis_only(axis):
    return [int(a) for a in np.atleast_1d(axis).tolist()] == [-1]


@keras.saving.register_keras_serializable(package="tfprune")
class KeptChannelNormalization(keras.layers.Wrapper):
    """A normalisation over the last axis whose mean and variance (or mean square) are taken over the `kept`
    channels only; the other channels output 0.

    This is what `tfprune.mask` puts in place of a norm over a pruned channel-spanning group (a transformer's
    hidden width): the rebuilt model's norm, sliced to the kept channels, normalises over them alone, and the
    original layer cannot leave the removed channels (zero in the masked model) out of its statistics. The wrapped
    layer's own weights are used as they are (shared, not copied), so training the masked model trains them.

    Args:
        layer: a `keras.layers.LayerNormalization` (`center`, `scale` and `rms_scaling` as it has them) or
            `keras.layers.RMSNormalization`, normalising over the last axis alone.
        kept: the indices (on the last axis) of the channels the statistics cover, at least one.
        **kwargs: passed to `keras.layers.Layer` (`name`, ...).

    Example:

    >>> import keras, numpy as np, tfprune
    >>> norm = keras.layers.LayerNormalization(epsilon=1e-6)
    >>> x = np.array([[1.0, 2.0, 0.0, 4.0]], "float32")
    >>> masked = tfprune.layers.KeptChannelNormalization(norm, kept=[0, 1, 3])
    >>> y = np.asarray(masked(x))
    >>> slim = keras.layers.LayerNormalization(epsilon=1e-6)  # what rebuild makes: the norm of the kept channels
    >>> np.allclose(y[:, [0, 1, 3]], np.asarray(slim(x[:, [0, 1, 3]])), atol=1e-6), float(y[0, 2])
    (True, 0.0)
    """

    def __init__(self, layer, kept, **kwargs):
        if type(layer) not in NORMALIZATIONS:
            raise TypeError(f"KeptChannelNormalization wraps a keras.layers.LayerNormalization or RMSNormalization; "
                            f"got {type(layer).__name__}.")
        if not _last_axis_only(layer.axis):
            raise ValueError(f"KeptChannelNormalization needs a norm over the last axis alone (axis=-1); layer "
                             f"'{layer.name}' has axis={layer.axis}.")
        kept = np.asarray(kept)
        if kept.ndim != 1 or not len(kept) or not np.issubdtype(kept.dtype, np.integer) or kept.min() < 0 or \
                len(np.unique(kept)) != len(kept):
            raise ValueError(f"kept must be a non-empty list of distinct channel indices >= 0; got {kept.tolist()}.")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.kept = sorted(int(k) for k in kept)

    def build(self, input_shape):
        width = input_shape[-1]
        if width is not None and self.kept[-1] >= width:
            raise ValueError(f"kept names channel {self.kept[-1]}, but the input has {width} channels.")
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs):
        layer = self.layer
        dtype = keras.backend.result_type(inputs.dtype, "float32")  # statistics in float32 at least, as Keras's
        x = ops.cast(inputs, dtype)
        weights = np.zeros(x.shape[-1], dtype)
        weights[self.kept] = 1.0
        keep = ops.convert_to_tensor(weights, dtype)
        count = float(len(self.kept))
        epsilon = layer.epsilon if layer.epsilon is not None else keras.backend.epsilon()
        if isinstance(layer, keras.layers.RMSNormalization):
            mean_square = ops.sum(ops.square(x) * keep, axis=-1, keepdims=True) / count
            y = x * keep * ops.rsqrt(mean_square + epsilon) * ops.cast(layer.scale, x.dtype)
        else:
            mean = ops.sum(x * keep, axis=-1, keepdims=True) / count
            centred = (x - mean) * keep
            variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / count
            inverse = ops.rsqrt(variance + epsilon)
            y = x * keep * inverse if layer.rms_scaling else centred * inverse  # Keras's rms_scaling: not centred
            if layer.gamma is not None:
                y = y * ops.cast(layer.gamma, x.dtype)
            if layer.beta is not None and not layer.rms_scaling:
                y = y + ops.cast(layer.beta, x.dtype) * keep
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kept": list(self.kept)}
