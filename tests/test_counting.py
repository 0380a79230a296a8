"""count_macs, count_params and summary: checked against TensorFlow's own profiler and Keras' own count."""

import math

import keras
import pytest
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
from tensorflow.python.framework.function_def_to_graph import function_def_to_graph

import tfprune
from tfprune import UnsupportedModelError
from tfprune.measurement.counting import layer_counts, layer_macs, layer_params

L = keras.layers
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


# ---- TensorFlow's profiler as the reference --------------------------------------------------------------


def profiler_flops(model, input_shape):
    """Float operations TensorFlow's graph profiler counts for one forward pass on a batch of one.

    The model is traced into a graph, its variables frozen to constants (so every shape is static), and the v1
    profiler's "flops" statistics summed. Keras runs grouped convolutions through an XLA-compiled inner function,
    which the profiler does not enter, so the bodies of function calls are profiled too.
    """
    forward = tf.function(lambda x: model(x, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32))
    return _graph_flops(convert_variables_to_constants_v2(concrete).graph)


def _graph_flops(graph):
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    flops = tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    for op in graph.get_operations():
        if op.type in _CALL_OPS:
            body = function_def_to_graph(library[op.get_attr("f").name], input_shapes=[t.shape for t in op.inputs])
            flops += _graph_flops(body)
    return flops


def sequential(input_shape, *layers):
    return keras.Sequential([keras.Input(input_shape), *layers])


def nested_sequential():
    inner = keras.Sequential([keras.Input((8, 8, 6)), L.Conv2D(10, 3, use_bias=False, activation="relu", name="a"),
                              L.Conv2D(4, 1, use_bias=False, name="b")], name="inner")
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(6, 3, use_bias=False, activation="relu", name="stem")(inputs)
    x = inner(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(5, use_bias=False, name="head")(x))


# Only linear layers without biases, BN or non-relu activations: then the profiler counts nothing but the
# convolutions and matrix products (ReLU has no flops statistic), which are 2 FLOPs per MAC.
PROFILED = {
    "Conv2D": lambda: sequential((16, 16, 3), L.Conv2D(8, 3, use_bias=False, activation="relu"),
                                 L.Conv2D(12, 3, strides=2, padding="same", use_bias=False)),
    "Conv2D grouped": lambda: sequential((16, 16, 8), L.Conv2D(12, 3, groups=4, use_bias=False, activation="relu")),
    "Conv2D dilated": lambda: sequential((16, 16, 3), L.Conv2D(8, 3, dilation_rate=2, use_bias=False)),
    "DepthwiseConv2D x2": lambda: sequential((16, 16, 4), L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)),
    "DepthwiseConv1D x2": lambda: sequential((20, 4), L.DepthwiseConv1D(3, depth_multiplier=2, use_bias=False)),
    "SeparableConv2D": lambda: sequential((16, 16, 4), L.SeparableConv2D(8, 3, depth_multiplier=2, use_bias=False)),
    "SeparableConv1D": lambda: sequential((20, 4), L.SeparableConv1D(8, 3, use_bias=False)),
    "Conv2DTranspose same": lambda: sequential((8, 8, 4), L.Conv2DTranspose(6, 3, strides=2, padding="same",
                                                                            use_bias=False)),
    "Conv1DTranspose same": lambda: sequential((8, 4), L.Conv1DTranspose(6, 3, strides=2, padding="same",
                                                                         use_bias=False)),
    "Conv1D": lambda: sequential((20, 3), L.Conv1D(8, 5, use_bias=False, activation="relu")),
    "Conv3D": lambda: sequential((6, 6, 6, 2), L.Conv3D(4, 3, use_bias=False)),
    "Dense on flattened": lambda: sequential((6, 6, 3), L.Conv2D(4, 3, use_bias=False, activation="relu"),
                                             L.Flatten(), L.Dense(7, use_bias=False)),
    "Dense on 3D input": lambda: sequential((5, 7), L.Dense(4, use_bias=False)),
    "nested Sequential": nested_sequential,
}


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("case", sorted(PROFILED))
def test_macs_agree_with_tensorflow_profiler(case):
    model = PROFILED[case]()
    macs = tfprune.count_macs(model)
    reference = profiler_flops(model, model.inputs[0].shape[1:]) / 2
    assert reference > 0, "the profiler counted nothing: the reference would be meaningless"
    assert macs == pytest.approx(reference, rel=0.01), f"{case}: count_macs {macs} vs profiler {reference}"


# ---- by hand where the profiler has another convention or no count ----------------------------------------


@pytest.mark.tensorflow_only
def test_transposed_conv_counts_one_kernel_per_input_position():
    # The profiler's Conv2DBackpropInput count is output positions / strides · kernel · C_in · filters: exact for
    # "same" padding (output = input · stride), but for "valid" padding the output has k - s extra rows and
    # columns and the profiler counts a fractional 17·17/4 = 72.25 input positions instead of the 8·8 = 64 that
    # each scatter one 3x3x4x6 kernel. We count the actual multiply-adds.
    model = sequential((8, 8, 4), L.Conv2DTranspose(6, 3, strides=2, padding="valid", use_bias=False))
    assert model.outputs[0].shape == (None, 17, 17, 6)
    assert tfprune.count_macs(model) == 8 * 8 * 3 * 3 * 4 * 6
    assert profiler_flops(model, (8, 8, 4)) / 2 == pytest.approx(17 * 17 / 4 * 3 * 3 * 4 * 6)


def test_conv3d_transpose_by_hand():
    # The profiler has no statistic for Conv3DBackpropInputV2 (it counts 0), so this one is by hand.
    model = sequential((4, 4, 4, 2), L.Conv3DTranspose(3, 3, strides=2, padding="same"))
    assert tfprune.count_macs(model) == 4 * 4 * 4 * 27 * 2 * 3


def test_channels_first_conv_by_hand():
    model = sequential((3, 10, 10), L.Conv2D(4, 3, data_format="channels_first"))
    assert tfprune.count_macs(model) == 8 * 8 * 9 * 3 * 4


def test_weightless_layers_count_zero():
    model = sequential((8, 8, 3), L.BatchNormalization(), L.ReLU(), L.MaxPooling2D(), L.GlobalAveragePooling2D())
    assert tfprune.count_macs(model) == 0


# ---- walking the graph ------------------------------------------------------------------------------------


def test_shared_layer_counts_every_call():
    shared = L.Dense(3, use_bias=False, name="shared")
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], L.Add()([shared(a), shared(b)]))
    counts = layer_counts(model)
    assert counts["shared"].calls == 2
    assert counts["shared"].macs == 2 * 4 * 3
    assert counts["shared"].params == 12
    assert tfprune.count_macs(model) == 24


def test_nested_layers_are_keyed_by_path():
    model = nested_sequential()
    macs = layer_macs(model)
    assert macs == {"stem": 8 * 8 * 27 * 6, "inner/a": 6 * 6 * 54 * 10, "inner/b": 6 * 6 * 10 * 4,
                    "head": 6 * 6 * 4 * 5}
    assert sum(macs.values()) == tfprune.count_macs(model)
    assert set(layer_params(model)) == set(macs)


def test_backbone_without_fixed_size_is_counted_at_the_size_it_is_called_with():
    def backbone(size):
        inputs = keras.Input((size, size, 3))
        x = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
        x = L.DepthwiseConv2D(3, padding="same", name="dw")(L.BatchNormalization()(x))
        return keras.Model(inputs, L.Conv2D(16, 1, name="pw")(x), name="backbone")

    def classifier(base):
        inputs = keras.Input((32, 32, 3))
        x = L.GlobalAveragePooling2D()(base(inputs))
        return keras.Model(inputs, L.Dense(2)(x))

    flexible, fixed = classifier(backbone(None)), classifier(backbone(32))
    assert tfprune.count_macs(flexible) == tfprune.count_macs(fixed) == 16 * 16 * (27 * 8 + 9 * 8 + 8 * 16) + 32
    assert "backbone/dw" in layer_macs(flexible)


# ---- parameters -------------------------------------------------------------------------------------------


def test_count_params_matches_keras_on_mobilenet_v2():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    assert tfprune.count_params(model) == model.count_params()
    assert sum(layer_params(model).values()) == model.count_params()


def test_count_params_counts_shared_weights_once():
    shared = L.Dense(3, name="shared")
    a = keras.Input((3,))
    model = keras.Model(a, shared(shared(a)))
    assert tfprune.count_params(model) == model.count_params() == 12
    assert layer_params(model) == {"shared": 12}


# ---- after pruning, and the summary -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet_and_slim():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    return model, tfprune.prune(model, 0.5)


def test_pruning_lowers_macs_and_params(mobilenet_and_slim):
    model, slim = mobilenet_and_slim
    assert tfprune.count_macs(slim) < 0.5 * tfprune.count_macs(model)
    assert tfprune.count_params(slim) < 0.5 * tfprune.count_params(model)
    assert tfprune.count_params(slim) == slim.count_params()


def test_summary_of_model_and_slim(mobilenet_and_slim):
    model, slim = mobilenet_and_slim
    printed = []
    text = tfprune.summary(model, slim, print_fn=printed.append)
    assert text == "\n".join(printed)
    params, slim_params = tfprune.count_params(model), tfprune.count_params(slim)
    macs, slim_macs = tfprune.count_macs(model), tfprune.count_macs(slim)
    assert f"Total params: {params:,} → {slim_params:,} (after/before = {slim_params / params:.3f})" in printed
    assert f"Total MACs: {macs:,} → {slim_macs:,} (after/before = {slim_macs / macs:.3f})" in printed
    conv1 = next(line for line in printed if line.startswith("Conv1 "))
    assert "32 → 16" in conv1 and "864 → 432" in conv1
    assert not any(line.startswith(("out_relu ", "block_1_pad ", "input_layer")) for line in printed)


def test_summary_of_one_model_defaults_to_print(capsys):
    model = sequential((8, 8, 3), L.Conv2D(4, 3, name="c"), L.ReLU(), L.Flatten(), L.Dense(2, name="d"))
    text = tfprune.summary(model)
    assert capsys.readouterr().out == text + "\n"
    lines = text.splitlines()
    assert [line.split()[:2] for line in lines[4:-3]] == [["c", "Conv2D"], ["d", "Dense"]]
    assert lines[-2:] == ["Total params: 402", "Total MACs: 4,176 (4.18K, one input example)"]


# ---- clear errors -----------------------------------------------------------------------------------------


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(4, 3)

    def call(self, x):
        return self.conv(x)


def test_subclassed_model_is_counted_through_its_trace():
    model = Subclassed()
    model(keras.ops.zeros((1, 8, 8, 3)))
    assert tfprune.count_macs(model) == 6 * 6 * 3 * 3 * 3 * 4
    assert list(layer_params(model).values()) == [3 * 3 * 3 * 4 + 4]
    assert "Total MACs: 3,888" in tfprune.summary(model, print_fn=lambda line: None)
    with pytest.raises(UnsupportedModelError, match="never built"):
        tfprune.count_macs(Subclassed())


def test_count_params_needs_no_graph():
    model = Subclassed()
    model(keras.ops.zeros((1, 8, 8, 3)))
    assert tfprune.count_params(model) == model.count_params() == 3 * 3 * 3 * 4 + 4


def test_sequential_without_input_is_refused():
    with pytest.raises(UnsupportedModelError, match="input shape"):
        tfprune.count_macs(keras.Sequential([L.Dense(2)]))
    with pytest.raises(ValueError, match="not built"):
        tfprune.count_params(keras.Sequential([L.Dense(2)]))


def test_unknown_input_size_names_the_layer():
    model = sequential((None, None, 3), L.Conv2D(4, 3, name="stem"), L.GlobalAveragePooling2D(), L.Dense(2))
    with pytest.raises(ValueError, match=r"'stem' \(Conv2D\).*fixed input size"):
        tfprune.count_macs(model)
    assert tfprune.count_params(model) == model.count_params()


def test_unknown_sequence_length_before_dense_names_the_layer():
    model = sequential((None, 6), L.Dense(4, name="proj"))
    with pytest.raises(ValueError, match="'proj'"):
        tfprune.count_macs(model)
    assert math.prod((6, 4)) + 4 == tfprune.count_params(model)
