"""Layer rules: how each Keras layer type moves, ties and indexes channels. A new layer type is one rule here."""

import keras
from keras.src.activations import activations as activation_ops
from keras.src.applications.convnext import LayerScale as ConvNeXtLayerScale
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer as InceptionResNetScaledAdd
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.ops import core as core_ops
from keras.src.ops import nn as nn_ops
from keras.src.ops import numpy as numpy_ops

from tfprune.graph.rules import (
    attention,
    einsum,
    embeddings,
    gemma_attention,
    keras_hub_attention,
    merging,
    normalization,
    passthrough,
    producers,
    reshaping,
)
from tfprune.graph.rules.base import Boundary, LambdaBoundary, LayerRule, NotUnderstood

L = keras.layers

_PER_CHANNEL_PASS_THROUGH = (
    L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.Identity, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Resizing, L.CenterCrop,
    L.RandomFlip, L.RandomRotation, L.RandomTranslation, L.RandomZoom, L.RandomCrop,
)
_ELEMENTWISE_OPS = (
    numpy_ops.Abs, numpy_ops.Negative, numpy_ops.Square, numpy_ops.Sqrt, numpy_ops.Exp, numpy_ops.Tanh,
    numpy_ops.Clip, nn_ops.Relu, nn_ops.Relu6, nn_ops.Sigmoid, nn_ops.HardSigmoid, nn_ops.Silu, nn_ops.HardSilu,
    nn_ops.Gelu, nn_ops.Elu, nn_ops.Selu, nn_ops.Celu, nn_ops.LeakyRelu, nn_ops.Softplus, nn_ops.Softsign,
    nn_ops.HardTanh, nn_ops.Softmax, nn_ops.LogSoftmax, numpy_ops.Pad, activation_ops.ReLU, activation_ops.Mish,
    core_ops.Cast,
)
_BINARY_OPS = (numpy_ops.Add, numpy_ops.Subtract, numpy_ops.Multiply, numpy_ops.Divide, numpy_ops.TrueDivide,
               numpy_ops.Maximum, numpy_ops.Minimum, numpy_ops.Power)

# Checked in order: subclasses before their bases.
_RULES = (
    (BaseSeparableConv, producers.SeparableConv()),
    (BaseDepthwiseConv, producers.DepthwiseConv()),
    (BaseConvTranspose, producers.ConvTranspose()),
    (BaseConv, producers.Conv()),
    (L.Dense, producers.Dense()),
    (L.EinsumDense, einsum.EinsumDense()),
    (L.MultiHeadAttention, attention.MultiHeadAttention()),
    (L.GroupQueryAttention, attention.GroupedQueryAttention()),
    (L.BatchNormalization, normalization.BatchNormalization()),
    ((L.LayerNormalization, L.RMSNormalization), normalization.LayerNormalization()),
    (L.Embedding, embeddings.Embedding()),
    (L.GroupNormalization, normalization.GroupNormalization()),
    (L.PReLU, normalization.PReLU()),
    (L.Normalization, normalization.Normalization()),
    (L.Rescaling, normalization.Rescaling()),
    (ConvNeXtLayerScale, normalization.LayerScale()),
    (L.Activation, passthrough.ActivationLayer()),
    ((L.Softmax, L.UnitNormalization), passthrough.AxisSpanningLayer()),
    (_PER_CHANNEL_PASS_THROUGH, passthrough.PassThrough()),
    (L.Permute, passthrough.PermuteLayer()),
    ((L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, InceptionResNetScaledAdd),
     merging.ElementwiseMerge()),
    ((L.Concatenate, numpy_ops.Concatenate), merging.Concatenate()),
    ((L.Flatten, L.Reshape, numpy_ops.Reshape), reshaping.Reshape()),
    (_BINARY_OPS, merging.BinaryOp()),
    (_ELEMENTWISE_OPS, passthrough.ElementwiseOp()),
    (numpy_ops.Split, passthrough.SplitOp()),
    (numpy_ops.GetItem, reshaping.GetItemOp()),
    ((numpy_ops.Mean, numpy_ops.Max, numpy_ops.Min, numpy_ops.Sum), passthrough.ReductionOp()),
)


# KerasHub's layers with rules of their own, by exact class ("module.Class"), so that keras-hub is not imported.
_KERAS_HUB_RULES = {**embeddings.KERAS_HUB_RULES, **gemma_attention.RULES, **keras_hub_attention.RULES}


def rule_for(operation) -> LayerRule:
    """The rule for a Keras layer or keras.ops operation, or a `Boundary` for anything else.

    Only classes defined by Keras itself match (and the KerasHub classes named in `_KERAS_HUB_RULES`, exactly): a
    user's subclass of, say, `Conv2D` may compute something else in `call`, so it is a boundary until it gets a
    rule of its own.
    """
    if isinstance(operation, keras.layers.Lambda):
        return LambdaBoundary()
    keras_hub_rule = _KERAS_HUB_RULES.get(keras_hub_attention.class_path(operation))
    if keras_hub_rule is not None:
        return keras_hub_rule
    if type(operation).__module__.startswith("keras."):
        for types, rule in _RULES:
            if isinstance(operation, types):
                return rule
    return Boundary()


__all__ = ["Boundary", "LayerRule", "NotUnderstood", "rule_for"]
