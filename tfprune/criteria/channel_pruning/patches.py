"""LinearPatches: a convolution or Dense layer seen as a matrix product on sampled input patches.

For a plain convolution (`Conv1D/2D/3D`, `groups=1`, channels_last) or a `Dense` layer, the output at one position
is `patch · kernel + bias`, where the patch is the window of input values the kernel covers. Sampling output
positions and extracting their patches turns the layer into a least-squares problem: the core of He et al.'s
channel selection and reconstruction (Channel Pruning, ICCV 2017). A `Dense` layer is a convolution with a
1-wide kernel over every leading axis (one position per example for a rank-2 input).
"""

import zlib

import numpy as np
from keras import layers as L

from tfprune.graph.rules import producers

_PLAIN_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D)


def why_not_linear(layer, rule):
    """None if `layer` (with its graph rule) is a plain convolution or Dense layer, else the reason it is not."""
    if type(rule) is producers.Dense and isinstance(layer, L.Dense):
        return None
    if type(rule) is producers.Conv and isinstance(layer, _PLAIN_CONVS):
        if layer.groups != 1:
            return f"a grouped convolution (groups={layer.groups})"
        return None
    return f"not a plain convolution or Dense layer ({type(layer).__name__})"


class LinearPatches:
    """Output positions and input patches of a plain convolution or Dense layer.

    Args:
        layer: a `Conv1D/2D/3D` with `groups=1` or a `Dense` layer, channels_last.
        input_shape: the shape of the layer's input without the batch axis, e.g. `(28, 28, 32)`.

    Example:

    >>> import keras, numpy as np
    >>> conv = keras.layers.Conv2D(2, 3, padding="same")
    >>> _ = conv(np.zeros((1, 5, 5, 4), "float32"))
    >>> geometry = LinearPatches(conv, (5, 5, 4))
    >>> geometry.output_spatial, geometry.kernel_size
    ((5, 5), (3, 3))
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype("float32")
    >>> where = geometry.sample_positions(2, 3, np.random.default_rng(0))
    >>> patches = geometry.extract(x, where)
    >>> y = np.asarray(conv(x))[np.arange(2)[:, None], where[..., 0], where[..., 1]].reshape(6, 2)
    >>> bool(np.allclose(geometry.linear_output(patches, *geometry.weights(conv)), y, atol=1e-5))
    True
    """

    def __init__(self, layer, input_shape):
        self.input_shape = tuple(int(d) for d in input_shape)
        spatial = self.input_shape[:-1]
        if isinstance(layer, L.Dense):
            n = len(spatial)
            self.kernel_size, self.strides, self.dilation = (1,) * n, (1,) * n, (1,) * n
            self.padding = "valid"
        else:
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                raise ValueError(f"Layer '{layer.name}': only channels_last convolutions are supported.")
            self.kernel_size, self.strides = tuple(layer.kernel_size), tuple(layer.strides)
            self.dilation, self.padding = tuple(layer.dilation_rate), layer.padding
        self.pad_before, out = [], []
        for size, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation, strict=True):
            span = (k - 1) * d + 1
            if self.padding == "valid":
                n_out, pad = (size - span) // s + 1, 0
            elif self.padding == "same":
                n_out = -(-size // s)
                pad = max((n_out - 1) * s + span - size, 0) // 2
            elif self.padding == "causal":
                n_out, pad = size, span - 1
            else:
                raise ValueError(f"Layer '{layer.name}': unknown padding {self.padding!r}.")
            self.pad_before.append(pad)
            out.append(n_out)
        self.output_spatial = tuple(out)
        self.positions = int(np.prod(out, dtype=np.int64))

    @property
    def kernel_positions(self) -> int:
        return int(np.prod(self.kernel_size, dtype=np.int64))

    def sample_positions(self, n_examples, per_example, rng):
        """`(n_examples, m, spatial rank)` output positions, `m = min(per_example, positions)` distinct per example."""
        if not self.output_spatial:  # a Dense layer on vectors: one position per example
            return np.zeros((n_examples, 1, 0), np.int64)
        m = min(int(per_example), self.positions)
        flat = np.argsort(rng.random((n_examples, self.positions)), axis=1)[:, :m]
        return np.stack(np.unravel_index(flat, self.output_spatial), axis=-1).astype(np.int64)

    def extract(self, x, where):
        """The input patches at output positions `where`: `(examples · m, kernel positions, input channels)`."""
        x = np.asarray(x)
        n, m = where.shape[:2]
        if not self.output_spatial:
            return x.reshape(n, 1, x.shape[-1])
        pads = [(0, 0)] + [(p, max((o - 1) * s + (k - 1) * d + 1 - size - p, 0))
                           for p, o, s, k, d, size in zip(self.pad_before, self.output_spatial, self.strides,
                                                          self.kernel_size, self.dilation, self.input_shape[:-1],
                                                          strict=True)] + [(0, 0)]
        if any(p != (0, 0) for p in pads):
            x = np.pad(x, pads)
        rank = len(self.output_spatial)
        offsets = np.stack(np.meshgrid(*[np.arange(k) for k in self.kernel_size], indexing="ij"), -1).reshape(-1, rank)
        index = [np.arange(n)[:, None, None]]
        for axis in range(rank):
            index.append(where[:, :, None, axis] * self.strides[axis]
                         + offsets[None, None, :, axis] * self.dilation[axis])
        patches = x[tuple(index)]  # (n, m, kernel positions, channels)
        return patches.reshape(n * m, self.kernel_positions, x.shape[-1])

    def weights(self, layer):
        """The layer's kernel as `(kernel positions, input channels, filters)` and its bias (or None)."""
        kernel = np.asarray(layer.kernel)
        kernel = kernel.reshape(self.kernel_positions, kernel.shape[-2], kernel.shape[-1])
        bias = np.asarray(layer.bias) if layer.use_bias else None
        return kernel, bias

    def linear_output(self, patches, kernel, bias=None):
        """`patches · kernel + bias` (before any fused activation): `(samples, filters)`."""
        flat = patches.reshape(len(patches), -1).astype(np.float64)
        out = flat @ kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
        return out if bias is None else out + bias


def sampling_seed(seed, path):
    """A seed for the sampled positions of layer `path`, the same in every process for the same `seed`."""
    return np.random.default_rng([int(seed), zlib.crc32(path.encode())])
