"""Small models and synthetic data shared by the training-callback tests."""

import keras
import numpy as np


def classifier(seed=1):
    """conv(10) → BN → ReLU → conv(12) → ReLU → pooling → softmax(3), uncompiled."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(10, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def classes(n=48):
    """Images and one of 3 labels: how many of the two input channels have a positive mean."""
    x = np.random.default_rng(0).normal(size=(n, 6, 6, 2)).astype("float32")
    return x, (x[..., 0].mean(axis=(1, 2)) > 0).astype("int64") + (x[..., 1].mean(axis=(1, 2)) > 0)


def regression(n=64):
    """Images and their mean as the target."""
    x = np.random.default_rng(0).normal(size=(n, 6, 6, 2)).astype("float32")
    return x, x.mean(axis=(1, 2, 3))[:, None]
