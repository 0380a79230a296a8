"""Two small reference CNNs for Fashion-MNIST-sized inputs, shared by the examples, benchmarks and tests so that
results of different methods line up: a VGG-style plain network and a CIFAR-style ResNet."""

import functools

import keras
from keras import layers

# BatchNormalization with momentum 0.9: the moving statistics settle within the few hundred steps of a short run
# (Keras' default 0.99 leaves them near their initial values, and inference accuracy at chance, for thousands).
BatchNorm = functools.partial(layers.BatchNormalization, momentum=0.9)


def _conv_bn_relu(x, filters, name, strides=1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = BatchNorm(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def small_vgg(input_shape=(28, 28, 1), classes=10, widths=(32, 64, 128), convs_per_stage=2, dense=128):
    """A VGG-style CNN: stages of `convs_per_stage` conv-BN-ReLU then 2×2 max pooling, then a Dense head.

    Example:

    >>> model = small_vgg()
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for s, width in enumerate(widths):
        for c in range(convs_per_stage):
            x = _conv_bn_relu(x, width, f"stage{s + 1}_{c + 1}")
        x = layers.MaxPooling2D(name=f"stage{s + 1}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, name="fc")(x)
    x = BatchNorm(name="fc_bn")(x)
    x = layers.ReLU(name="fc_relu")(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="small_vgg")


def small_resnet(input_shape=(28, 28, 1), classes=10, widths=(16, 32, 64), blocks_per_stage=2):
    """A CIFAR-style ResNet (He et al., 2016): a conv stem, then stages of basic blocks (two 3×3 conv-BN) with
    identity shortcuts, a strided 1×1 conv-BN shortcut where the shape changes, global pooling and a classifier.

    With the defaults it is ResNet-14; `blocks_per_stage=3` gives ResNet-20.

    Example:

    >>> model = small_resnet()
    >>> model.output_shape
    (None, 10)
    """
    inputs = keras.Input(input_shape)
    x = _conv_bn_relu(inputs, widths[0], "stem")
    for s, width in enumerate(widths):
        for b in range(blocks_per_stage):
            name = f"stage{s + 1}_block{b + 1}"
            strides = 2 if s > 0 and b == 0 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != width:
                shortcut = layers.Conv2D(width, 1, strides=strides, use_bias=False, name=f"{name}_proj")(x)
                shortcut = BatchNorm(name=f"{name}_proj_bn")(shortcut)
            y = _conv_bn_relu(x, width, f"{name}_1", strides=strides)
            y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
            y = BatchNorm(name=f"{name}_2_bn")(y)
            x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="small_resnet")
