"""Three subclassed Keras models of the kind users write, for the zoo: tfprune traces them (tfprune.trace).

* `UserResNet`: a `keras.Model` whose residual blocks are custom layers.
* `UserSENet`: squeeze-excite and hard-swish written with `keras.ops` inside custom layers.
* `UserUNet`: an encoder-decoder with skip connections and `training`-dependent dropout.
"""

import keras
import numpy as np
from keras import ops

L = keras.layers


class BasicBlock(L.Layer):
    """conv-BN-ReLU-conv-BN plus a shortcut (a 1×1 projection when the shape changes), then ReLU."""

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.strides = filters, strides
        self.conv1 = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name="conv1")
        self.bn1 = L.BatchNormalization(name="bn1")
        self.conv2 = L.Conv2D(filters, 3, padding="same", use_bias=False, name="conv2")
        self.bn2 = L.BatchNormalization(name="bn2")
        self.projection = None
        self.projection_bn = None

    def build(self, input_shape):
        if self.strides != 1 or input_shape[-1] != self.filters:
            self.projection = L.Conv2D(self.filters, 1, strides=self.strides, use_bias=False, name="projection")
            self.projection_bn = L.BatchNormalization(name="projection_bn")

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        shortcut = x if self.projection is None else self.projection_bn(self.projection(x), training=training)
        return ops.relu(y + shortcut)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


class UserResNet(keras.Model):
    """A small ResNet as a subclassed model: a stem, three stages of two `BasicBlock`s, a pooled Dense head."""

    def __init__(self, widths=(16, 32, 64), classes=10, **kwargs):
        super().__init__(**kwargs)
        self.stem = L.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem")
        self.stem_bn = L.BatchNormalization(name="stem_bn")
        self.blocks = [BasicBlock(w, strides=1 if i == 0 or j else 2, name=f"stage{i + 1}_block{j + 1}")
                       for i, w in enumerate(widths) for j in range(2)]
        self.head = L.Dense(classes, name="head")

    def call(self, x, training=None):
        x = ops.relu(self.stem_bn(self.stem(x), training=training))
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(ops.mean(x, axis=(1, 2)))


class SqueezeExcite(L.Layer):
    """x · sigmoid(W2 relu(W1 mean(x))) with keras.ops."""

    def __init__(self, channels, ratio=0.25, **kwargs):
        super().__init__(**kwargs)
        self.reduce = L.Dense(max(1, int(channels * ratio)), name="reduce")
        self.expand = L.Dense(channels, name="expand")

    def call(self, x):
        s = ops.mean(x, axis=(1, 2))
        s = ops.sigmoid(self.expand(ops.relu(self.reduce(s))))
        return x * ops.expand_dims(ops.expand_dims(s, 1), 1)


class InvertedResidual(L.Layer):
    """MobileNetV3-style: 1×1 expand, depthwise 3×3, squeeze-excite, 1×1 project, hard-swish from keras.ops."""

    def __init__(self, filters, expansion=4, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.expansion, self.strides = filters, expansion, strides
        self.expand = None
        self.depthwise = L.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name="depthwise")
        self.bn1 = L.BatchNormalization(name="bn1")
        self.bn2 = L.BatchNormalization(name="bn2")
        self.project = L.Conv2D(filters, 1, use_bias=False, name="project")
        self.bn3 = L.BatchNormalization(name="bn3")

    def build(self, input_shape):
        mid = input_shape[-1] * self.expansion
        self.expand = L.Conv2D(mid, 1, use_bias=False, name="expand")
        self.se = SqueezeExcite(mid, name="se")

    def call(self, x, training=None):
        y = self.bn1(self.expand(x), training=training)
        y = y * ops.relu6(y + 3.0) / 6.0  # hard-swish
        y = self.bn2(self.depthwise(y), training=training)
        y = self.se(y * ops.relu6(y + 3.0) / 6.0)
        y = self.bn3(self.project(y), training=training)
        if self.strides == 1 and x.shape[-1] == self.filters:
            y = y + x
        return y


class UserSENet(keras.Model):
    """A small MobileNetV3-like network of `InvertedResidual` blocks with keras.ops squeeze-excite."""

    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.stem = L.Conv2D(16, 3, strides=2, padding="same", name="stem")
        self.blocks = [InvertedResidual(16, name="block1"), InvertedResidual(24, strides=2, name="block2"),
                       InvertedResidual(24, name="block3"), InvertedResidual(40, strides=2, name="block4")]
        self.last = L.Conv2D(96, 1, name="last")
        self.head = L.Dense(classes, name="head")

    def call(self, x, training=None):
        x = ops.hard_silu(self.stem(x))
        for block in self.blocks:
            x = block(x, training=training)
        x = ops.hard_silu(self.last(x))
        return self.head(ops.mean(x, axis=(1, 2)))


class DoubleConv(L.Layer):
    """(conv 3×3 → BN → ReLU) twice."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv1 = L.Conv2D(filters, 3, padding="same", name="conv1")
        self.bn1 = L.BatchNormalization(name="bn1")
        self.conv2 = L.Conv2D(filters, 3, padding="same", name="conv2")
        self.bn2 = L.BatchNormalization(name="bn2")

    def call(self, x, training=None):
        x = ops.relu(self.bn1(self.conv1(x), training=training))
        return ops.relu(self.bn2(self.conv2(x), training=training))


class UserUNet(keras.Model):
    """A two-level U-Net: skip connections by concatenation, dropout at the bottleneck (active when training)."""

    def __init__(self, widths=(16, 32, 64), classes=3, dropout=0.3, **kwargs):
        super().__init__(**kwargs)
        self.down = [DoubleConv(w, name=f"down{i + 1}") for i, w in enumerate(widths[:-1])]
        self.pool = L.MaxPooling2D(name="pool")
        self.bottleneck = DoubleConv(widths[-1], name="bottleneck")
        self.dropout = L.Dropout(dropout, name="dropout")
        self.up = [L.Conv2DTranspose(w, 2, strides=2, name=f"upconv{i + 1}") for i, w in enumerate(widths[-2::-1])]
        self.decode = [DoubleConv(w, name=f"up{i + 1}") for i, w in enumerate(widths[-2::-1])]
        self.out = L.Conv2D(classes, 1, name="logits")

    def call(self, x, training=None):
        skips = []
        for block in self.down:
            x = block(x, training=training)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x, training=training), training=training)
        for up, decode, skip in zip(self.up, self.decode, reversed(skips), strict=True):
            x = decode(ops.concatenate([up(x), skip], axis=-1), training=training)
        return self.out(x)


def built(model, shape):
    """`model` called once on zeros of `shape` (one example), so that it has its weights."""
    model(np.zeros((1, *shape), "float32"))
    return model


USER_MODELS = {
    "user ResNet (custom blocks)": lambda: built(UserResNet(name="user_resnet"), (32, 32, 3)),
    "user SE-Net (keras.ops squeeze-excite)": lambda: built(UserSENet(name="user_senet"), (32, 32, 3)),
    "user U-Net (skips and dropout)": lambda: built(UserUNet(name="user_unet"), (32, 32, 3)),
}
