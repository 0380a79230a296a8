"""The real models tfprune is checked on: every CNN constructor in keras.applications, built offline with random
weights at its smallest valid input size, and the keras-hub / keras-cv backbones that build offline."""

import keras
import numpy as np

APPLICATIONS = sorted(name for name in dir(keras.applications) if name[0].isupper())
SMALLEST_INPUT = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


def application(name, classes=10):
    """A keras.applications model with random weights, its smallest input and a small head of logits."""
    size = SMALLEST_INPUT.get(name, 32)
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=classes,
                                            classifier_activation=None)


def randomize_channel_parameters(model, seed=0):
    """Give normalisation and layer-scale parameters non-trivial values, so that every channel matters.

    Freshly initialised models have gamma=1, beta=0, mean=0, variance=1 and ConvNeXt's layer scales at 1e-6,
    which would let an equivalence check pass for the wrong reasons."""
    rng = np.random.default_rng(seed)
    # Scales stay at most 1 (gamma <= 1 <= variance): random scales above 1 make a 100-block network chaotic, and
    # float rounding alone would then grow into output differences of order one.
    ranges = {"gamma": (0.5, 1.0), "moving_variance": (1.0, 2.0)}
    for layer in _leaf_layers(model):
        for variable in layer.weights:
            if type(layer).__name__ == "LayerScale":  # ConvNeXt's, initialised to 1e-6, its weight unnamed
                variable.assign(rng.uniform(0.5, 1.0, variable.shape).astype(variable.dtype))
            elif variable.name in ranges:
                variable.assign(rng.uniform(*ranges[variable.name], variable.shape).astype(variable.dtype))
            elif variable.name in ("beta", "moving_mean"):
                variable.assign(rng.normal(0, 0.1, variable.shape).astype(variable.dtype))
    return model


def _leaf_layers(model):
    """Every layer inside `model`, custom layers' and subclassed models' sub-layers included."""
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, keras.Model):
            yield layer


def _hub(name, **kwargs):
    import keras_hub

    return lambda: getattr(keras_hub.models, name)(**kwargs)


def _cv(name, **kwargs):
    import keras_cv

    return lambda: getattr(keras_cv.models, name)(include_rescaling=False, **kwargs)


_RESNET = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256],
               stackwise_num_blocks=[2, 2, 2], stackwise_num_strides=[1, 2, 2], image_shape=(64, 64, 3))
_CV_RESNET = dict(stackwise_filters=[64, 128, 256], stackwise_blocks=[2, 2, 2], stackwise_strides=[1, 2, 2],
                  input_shape=(64, 64, 3))
_EFFICIENTNETV2 = dict(stackwise_kernel_sizes=[3, 3, 3, 3], stackwise_num_repeats=[1, 2, 2, 2],
                       stackwise_input_filters=[16, 16, 32, 48], stackwise_output_filters=[16, 32, 48, 96],
                       stackwise_expansion_ratios=[1, 4, 4, 4], stackwise_squeeze_and_excite_ratios=[0, 0, 0.25, 0.25],
                       stackwise_strides=[1, 2, 2, 2])

# Small but complete backbones, from explicit constructor arguments (presets would download).
BACKBONES = {
    "keras_hub ResNet (basic)": _hub("ResNetBackbone", block_type="basic_block", use_pre_activation=False, **_RESNET),
    "keras_hub ResNet (bottleneck)": _hub("ResNetBackbone", block_type="bottleneck_block", use_pre_activation=False,
                                          **_RESNET),
    "keras_hub ResNetV2": _hub("ResNetBackbone", block_type="bottleneck_block", use_pre_activation=True, **_RESNET),
    "keras_hub DenseNet": _hub("DenseNetBackbone", stackwise_num_repeats=[2, 2, 2], compression_ratio=0.5,
                               growth_rate=32, image_shape=(64, 64, 3)),
    "keras_hub MobileNetV3": _hub(
        "MobileNetBackbone", stackwise_expansion=[[40, 56], [64, 144, 144], [72, 72], [144, 288, 288]],
        stackwise_num_blocks=[2, 3, 2, 3], stackwise_num_filters=[[16, 16], [24, 24, 24], [24, 24], [48, 48, 48]],
        stackwise_kernel_size=[[3, 3], [5, 5, 5], [5, 5], [5, 5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1, 1], [1, 1], [2, 1, 1]],
        stackwise_se_ratio=[[None, None], [0.25] * 3, [0.25] * 2, [0.25] * 3],
        stackwise_activation=[["relu"] * 2, ["hard_swish"] * 3, ["hard_swish"] * 2, ["hard_swish"] * 3],
        stackwise_padding=[[1, 1], [2, 2, 2], [2, 2], [2, 2, 2]], output_num_filters=1024, depthwise_filters=8,
        depthwise_stride=2, depthwise_residual=False, squeeze_and_excite=0.5, last_layer_filter=288,
        input_num_filters=16, input_activation="hard_swish", output_activation="hard_swish", image_shape=(64, 64, 3)),
    "keras_hub EfficientNetV2": _hub(
        "EfficientNetBackbone", stackwise_width_coefficients=[1.0] * 4, stackwise_depth_coefficients=[1.0] * 4,
        stackwise_block_types=["fused", "fused", "unfused", "unfused"], stackwise_force_input_filters=[0] * 4,
        stackwise_nores_option=[False] * 4, activation="silu", dropout=0.0, min_depth=None,
        include_stem_padding=True, use_depth_divisor_as_min_depth=True, cap_round_filter_decrease=True,
        stem_conv_padding="valid", input_shape=(64, 64, 3), **_EFFICIENTNETV2),
    "keras_hub CSPDarkNet": _hub(
        "CSPNetBackbone", stem_filters=32, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 2, 2],
        stackwise_strides=[2, 2, 2], stackwise_num_filters=[64, 128, 256], block_type="dark_block", stage_type="csp",
        bottle_ratio=[0.5, 1.0], block_ratio=[1.0, 0.5], expand_ratio=[2.0, 1.0], stem_padding="same",
        stem_pooling=None, down_growth=True, avg_down=False, cross_linear=False, groups=1, image_shape=(64, 64, 3)),
    "keras_hub VGG": _hub("VGGBackbone", stackwise_num_repeats=[2, 2, 3], stackwise_num_filters=[64, 128, 256],
                          image_shape=(64, 64, 3)),
    "keras_cv ResNet": _cv("ResNetBackbone", block_type="block", **_CV_RESNET),
    "keras_cv ResNetV2": _cv("ResNetV2Backbone", block_type="block", **_CV_RESNET),
    "keras_cv DenseNet": _cv("DenseNetBackbone", stackwise_num_repeats=[2, 2, 2], compression_ratio=0.5,
                             growth_rate=32, input_shape=(64, 64, 3)),
    "keras_cv MobileNetV3": _cv(
        "MobileNetV3Backbone", stackwise_expansion=[1, 72.0 / 16, 88.0 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
        stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
        stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5], stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
        stackwise_se_ratio=[0.25, None, None] + [0.25] * 8, stackwise_activation=["relu"] * 3 + ["hard_swish"] * 8,
        alpha=1.0, input_shape=(64, 64, 3)),
    "keras_cv EfficientNetV2": _cv("EfficientNetV2Backbone", width_coefficient=1.0, depth_coefficient=1.0,
                                   stackwise_conv_types=["fused", "fused", "unfused", "unfused"],
                                   skip_connection_dropout=0.0, input_shape=(64, 64, 3), **_EFFICIENTNETV2),
    "keras_cv CSPDarkNet": _cv("CSPDarkNetBackbone", stackwise_channels=[32, 64, 128, 256],
                               stackwise_depth=[1, 1, 1, 1], use_depthwise=False, input_shape=(64, 64, 3)),
    "keras_cv VGG16": _cv("VGG16Backbone", include_top=False, pooling=None, input_shape=(32, 32, 3)),
    # Built from custom layers (opened by tracing) or added with tracing: the smallest configurations that build.
    "keras_hub HGNetV2": _hub(
        "HGNetV2Backbone", depths=[1, 1, 2], embedding_size=16, hidden_sizes=[32, 64, 128], stem_channels=[3, 16, 16],
        hidden_act="relu", use_learnable_affine_block=True,
        stackwise_stage_filters=[(16, 16, 32, 1, 1, 3), (32, 16, 64, 1, 1, 3), (64, 32, 128, 2, 1, 3)],
        apply_downsample=[False, True, True], use_lightweight_conv_block=[False, False, True],
        image_shape=(32, 32, 3)),
    "keras_hub Xception": _hub("XceptionBackbone", stackwise_conv_filters=[[32, 64], [64, 128], [128, 128]],
                               stackwise_pooling=[True, True, False], image_shape=(64, 64, 3)),
    "keras_hub EfficientNet (v1)": _hub(
        "EfficientNetBackbone", stackwise_width_coefficients=[1.0] * 3, stackwise_depth_coefficients=[1.0] * 3,
        stackwise_kernel_sizes=[3, 3, 5], stackwise_num_repeats=[1, 2, 2], stackwise_input_filters=[32, 16, 24],
        stackwise_output_filters=[16, 24, 40], stackwise_expansion_ratios=[1, 6, 6],
        stackwise_squeeze_and_excite_ratios=[0.25] * 3, stackwise_strides=[1, 2, 2], stackwise_block_types=["v1"] * 3,
        stackwise_force_input_filters=[0] * 3, stackwise_nores_option=[False] * 3, dropout=0.0,
        input_shape=(64, 64, 3), num_features=256),
    "keras_hub MobileNetV5": _hub(
        "MobileNetV5Backbone", stackwise_block_types=[["er"], ["uir", "uir"]], stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[24], [48, 48]], stackwise_strides=[[2], [2, 1]],
        stackwise_act_layers=[["relu"], ["relu", "relu"]], stackwise_exp_ratios=[[4.0], [6.0, 6.0]],
        stackwise_se_ratios=[[0.0], [0.0, 0.0]], stackwise_dw_kernel_sizes=[[0], [5, 5]],
        stackwise_dw_start_kernel_sizes=[[0], [0, 0]], stackwise_dw_end_kernel_sizes=[[0], [0, 0]],
        stackwise_exp_kernel_sizes=[[3], [0, 0]], stackwise_pw_kernel_sizes=[[1], [0, 0]],
        stackwise_num_heads=[[0], [0, 0]], stackwise_key_dims=[[0], [0, 0]], stackwise_value_dims=[[0], [0, 0]],
        stackwise_kv_strides=[[0], [0, 0]], stackwise_use_cpe=[[False], [False, False]], use_msfa=False,
        num_features=128, image_shape=(64, 64, 3)),
    "keras_hub ResNet ImageClassifier": lambda: _task("ResNetImageClassifier", _hub(
        "ResNetBackbone", block_type="basic_block", use_pre_activation=False, **_RESNET)(), num_classes=10),
    "keras_hub DeepLabV3 segmenter": lambda: _task("DeepLabV3ImageSegmenter", _hub(
        "DeepLabV3Backbone", image_encoder=_hub("ResNetBackbone", block_type="basic_block", use_pre_activation=False,
                                                **_RESNET)(),
        spatial_pyramid_pooling_key="P4", upsampling_size=4, dilation_rates=[2, 4], low_level_feature_key="P2",
        projection_filters=16, image_shape=(64, 64, 3))(), num_classes=3),
    "keras_hub RetinaNet detector": lambda: _task("RetinaNetObjectDetector", _hub(
        "RetinaNetBackbone", image_encoder=_hub(
            "ResNetBackbone", block_type="basic_block", use_pre_activation=False, input_conv_filters=[64],
            input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64, 64, 128], stackwise_num_blocks=[1, 1, 1, 1],
            stackwise_num_strides=[1, 2, 2, 2], image_shape=(64, 64, 3))(),
        min_level=3, max_level=5, use_p5=False, image_shape=(64, 64, 3))(), num_classes=3,
        pre_logits_num_conv_layers=1),
}


def _task(name, backbone, **kwargs):
    import keras_hub

    return getattr(keras_hub.models, name)(backbone=backbone, **kwargs)

# Backbones whose every channel touches a layer tfprune cannot see into, with the layer that stops it (before
# tracing, keras_hub MobileNetV3 and EfficientNetV2, keras_cv EfficientNetV2 and CSPDarkNet were here too).
# They are still analysed and copied (rebuilt with an empty plan) and must say why nothing is prunable.
NOTHING_PRUNABLE = {
    "keras_hub MobileNetV5": "RmsNorm2d",  # a per-channel weight over all channels (no rule), in every block
}

# keras_cv backbones reload through their own class's from_config (constructor arguments). As plain Functional
# models — which is what a rebuilt model is — Keras cannot reload them, pruned or not, for these reasons.
RELOAD_FAILS = {  # (keras_cv CSPDarkNet's and keras_hub MobileNetV5's Python-lambda activations used to be here: they
    # are now opened into keras.ops nodes)
    "keras_cv MobileNetV3": "HardSigmoidActivation",  # its get_config() gives a 'name' its __init__ refuses
}
