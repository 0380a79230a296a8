"""tfprune.export: every format and quantisation mode is written, reloaded (Keras, TensorFlow, LiteRT, ONNX Runtime)
and numerically checked; bad input is refused precisely."""

import dataclasses

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

import tfprune
from tfprune.deployment.exporting import ExportResult
from tfprune.deployment.onnx_conversion import default_converter, write_onnx
from tfprune.deployment.runtimes import litert_interpreter, onnx_outputs, onnx_session
from tfprune.errors import ExportError


def tiny_convnet():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ])


@pytest.fixture(scope="module")
def model():
    return tiny_convnet()


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(1).standard_normal((32, 16, 16, 3)).astype("float32")


def output_scale(model, x):
    return float(np.abs(model(x, training=False)).max())


def test_keras_round_trip(model, tmp_path):
    result = tfprune.export(model, tmp_path / "m.keras", format="keras")
    assert isinstance(result, ExportResult)
    assert (result.format, result.quantize) == ("keras", None)
    assert result.max_abs_difference < 1e-5
    assert result.size_bytes == (tmp_path / "m.keras").stat().st_size > 0
    assert result.accuracy is None and result.reference_accuracy is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.path = "elsewhere"


def test_saved_model_round_trip(model, tmp_path):
    result = tfprune.export(model, tmp_path / "sm")
    assert result.format == "saved_model"
    assert result.max_abs_difference < 1e-5
    assert (tmp_path / "sm" / "saved_model.pb").exists()
    assert result.size_bytes > 0


def test_tflite_float(model, tmp_path):
    result = tfprune.export(model, tmp_path / "m.tflite", format="tflite")
    assert result.max_abs_difference < 1e-4
    assert result.size_bytes == (tmp_path / "m.tflite").stat().st_size
    assert result.runtime.startswith("LiteRT ") and result.converter is None


def test_onnx_round_trip_with_labels(model, data, tmp_path):
    labels = np.asarray(model(data, training=False)).argmax(axis=-1)
    labels[:4] = (labels[:4] + 1) % 4
    result = tfprune.export(model, tmp_path / "m.onnx", format="onnx", representative_data=data, labels=labels)
    assert (result.format, result.quantize, result.converter) == ("onnx", None, "keras")
    assert result.runtime.startswith("ONNX Runtime ")
    assert result.max_abs_difference < 1e-5
    assert result.size_bytes == (tmp_path / "m.onnx").stat().st_size > 0
    assert result.accuracy == result.reference_accuracy == pytest.approx(28 / 32)
    session = onnx_session(tmp_path / "m.onnx", threads=1)
    assert session.get_inputs()[0].shape[1:] == [16, 16, 3]
    np.testing.assert_allclose(onnx_outputs(session, data[:3])[0], model(data[:3]), atol=1e-5)


def test_onnx_converters_agree(tmp_path):
    """Keras's export (a never-called model: the signature is passed explicitly), tf2onnx called directly, and the
    large-model path (weights as inputs, then initialisers folded by ONNX Runtime) give the same graph and outputs."""
    model = tfprune.prune(tiny_convnet(), 0.5)  # a rebuilt model has never been called
    x = tfprune.deployment.verification.random_inputs(model, batch_size=4)
    results, operators = {}, {}
    for converter in ("keras", "tf2onnx", "stateless"):
        assert write_onnx(model, tmp_path / f"{converter}.onnx", converter=converter) == converter
        results[converter] = onnx_outputs(onnx_session(tmp_path / f"{converter}.onnx"), x)[0]
        np.testing.assert_allclose(results[converter], model(x), atol=1e-5)
        graph = onnx.load(tmp_path / f"{converter}.onnx").graph
        operators[converter] = [n.op_type for n in graph.node]
        assert len(graph.input) == 1 and not any(i.name.startswith("tfprune_weight") for i in graph.input)
    np.testing.assert_allclose(results["keras"], results["tf2onnx"], atol=1e-6)
    np.testing.assert_allclose(results["keras"], results["stateless"], atol=1e-6)
    # BatchNormalization folded into the convolutions, the Dense a Gemm (MatMul + bias) in ONNX Runtime's hands
    assert operators["stateless"] == [{"MatMul": "Gemm"}.get(op, op) for op in operators["keras"]]
    with pytest.raises(ValueError, match="Unknown ONNX converter 'torch'"):
        write_onnx(model, tmp_path / "m.onnx", converter="torch")


def test_large_models_take_the_stateless_converter():
    model = tiny_convnet()
    weight_bytes = 4 * model.count_params()
    assert default_converter(model, large_model_bytes=weight_bytes - 1) == "stateless"
    assert default_converter(model, large_model_bytes=weight_bytes) == default_converter() == "keras"


def test_onnx_folds_captured_tensors(tmp_path):
    """keras.layers.Normalization keeps mean and variance as plain tensors, which tf2onnx makes graph inputs (as in
    EfficientNet); the exported file takes the image only, and computes the same outputs."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 1.0])(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    for converter in ("keras", "tf2onnx", "stateless"):
        write_onnx(model, tmp_path / f"{converter}.onnx", converter=converter)
        session = onnx_session(tmp_path / f"{converter}.onnx")
        assert len(session.get_inputs()) == 1
        x = tfprune.deployment.verification.random_inputs(model, batch_size=3)
        np.testing.assert_allclose(onnx_outputs(session, x)[0], model(x), atol=1e-5)
    assert tfprune.export(model, tmp_path / "m.onnx", format="onnx").max_abs_difference < 1e-5


def test_onnx_multi_input_multi_output(tmp_path):
    keras.utils.set_random_seed(0)
    vector, image = keras.Input((4,), name="vector"), keras.Input((8, 8, 2), name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 3)(image))
    joined = keras.layers.Concatenate()([vector, features])
    model = keras.Model([vector, image], [keras.layers.Dense(2)(joined), keras.layers.Dense(3)(joined)])
    result = tfprune.export(model, tmp_path / "m.onnx", format="onnx")
    assert result.max_abs_difference < 1e-5
    session = onnx_session(tmp_path / "m.onnx")
    assert [i.name for i in session.get_inputs()] == ["vector", "image"]
    assert [o.shape[1:] for o in session.get_outputs()] == [[2], [3]]
    with pytest.raises(ValueError, match="model has 2 inputs, so the ONNX file is checked on random inputs"):
        tfprune.export(model, tmp_path / "m2.onnx", format="onnx", representative_data=np.zeros((2, 4)))


# Tolerances relative to the largest |output|. float16 weights carry a relative error of 2^-11 ≈ 5e-4 each, so
# outputs stay within ~1e-3 of scale. "dynamic" stores int8 weights (step = max|w|/127 per channel) and quantises
# activations on the fly, ~0.5-1% per layer; 3% leaves margin. Full "int8" also rounds every activation to one of
# 256 calibrated levels (step ≈ range/255 ≈ 0.4%) at four quantised stages; the errors add up to a few steps, so 5%.
@pytest.mark.parametrize("quantize, relative_tolerance", [("float16", 2e-3), ("dynamic", 3e-2), ("int8", 5e-2)])
def test_tflite_quantized(model, data, tmp_path, quantize, relative_tolerance):
    float_size = tfprune.export(model, tmp_path / "float.tflite", format="tflite").size_bytes
    result = tfprune.export(model, tmp_path / f"{quantize}.tflite", format="tflite", quantize=quantize,
                            representative_data=data if quantize == "int8" else None)
    assert result.quantize == quantize
    scale = output_scale(model, data if quantize == "int8" else tfprune.deployment.verification.random_inputs(model))
    assert result.max_abs_difference < relative_tolerance * scale
    assert result.max_abs_difference > 0  # quantisation was really applied
    assert result.size_bytes < float_size


def test_int8_is_full_integer_with_float_io(model, data, tmp_path):
    path = tmp_path / "int8.tflite"
    tfprune.export(model, path, format="tflite", quantize="int8", representative_data=data)
    interpreter = litert_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    assert any(detail["dtype"] == np.int8 for detail in interpreter.get_tensor_details())


def test_int8_reports_accuracy_of_both(model, data, tmp_path):
    labels = np.asarray(model(data, training=False)).argmax(axis=-1)
    labels[:4] = (labels[:4] + 1) % 4  # four wrong labels: the reference accuracy is exactly 28/32
    batches = [data[:16], data[16:]]  # an iterable of batches works as well as an array
    result = tfprune.export(model, tmp_path / "int8.tflite", format="tflite", quantize="int8",
                            representative_data=batches, labels=labels)
    assert result.reference_accuracy == pytest.approx(28 / 32)
    assert abs(result.accuracy - result.reference_accuracy) <= 4 / 32
    one_hot = tfprune.export(model, tmp_path / "m.keras", format="keras", representative_data=data,
                             labels=np.eye(4)[labels])
    assert one_hot.accuracy == one_hot.reference_accuracy == pytest.approx(28 / 32)


def test_pruned_model_is_smaller_on_disk(model, tmp_path):
    slim = tfprune.prune(model, 0.5)
    for name, format in [("m.keras", "keras"), ("m.tflite", "tflite"), ("m.onnx", "onnx")]:
        full = tfprune.export(model, tmp_path / f"full_{name}", format=format)
        pruned = tfprune.export(slim, tmp_path / f"slim_{name}", format=format)
        assert pruned.max_abs_difference < 1e-4
        assert pruned.size_bytes < full.size_bytes


def test_model_is_not_modified(tmp_path):
    model = tiny_convnet()
    before = [w.copy() for w in model.get_weights()]
    x = tfprune.deployment.verification.random_inputs(model)
    y = np.asarray(model(x))
    tfprune.export(model, tmp_path / "sm")
    tfprune.export(model, tmp_path / "m.tflite", format="tflite", quantize="dynamic")
    tfprune.export(model, tmp_path / "m.onnx", format="onnx")
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y, np.asarray(model(x)))


def test_errors(model, data, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'pt'; allowed formats are 'saved_model', 'tflite', "
                                         "'keras', 'onnx'"):
        tfprune.export(model, tmp_path / "m.pt", format="pt")
    with pytest.raises(ValueError, match="quantize='float16' applies only to format='tflite', not format='onnx'"):
        tfprune.export(model, tmp_path / "m.onnx", format="onnx", quantize="float16")
    with pytest.raises(ValueError, match="allowed values are None, 'float16', 'dynamic', 'int8'"):
        tfprune.export(model, tmp_path / "m.tflite", format="tflite", quantize="int4")
    with pytest.raises(ValueError, match="applies only to format='tflite'"):
        tfprune.export(model, tmp_path / "sm", format="saved_model", quantize="float16")
    with pytest.raises(ValueError, match="needs representative_data"):
        tfprune.export(model, tmp_path / "m.tflite", format="tflite", quantize="int8")
    with pytest.raises(ValueError, match="must end in '.keras'"):
        tfprune.export(model, tmp_path / "m.h5", format="keras")
    with pytest.raises(ValueError, match="one class per check example"):
        tfprune.export(model, tmp_path / "m.keras", format="keras", representative_data=data, labels=[0, 1])
    with pytest.raises(ValueError, match="labels were given without representative_data"):
        tfprune.export(model, tmp_path / "m.keras", format="keras", labels=[0, 1])
    assert not any(tmp_path.iterdir())  # nothing was written by a refused call


def test_multi_input_tflite_is_refused(tmp_path):
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="single-input models only; this model has 2 inputs"):
        tfprune.export(model, tmp_path / "m.tflite", format="tflite")
    assert tfprune.export(model, tmp_path / "m.keras", format="keras").max_abs_difference < 1e-5


@keras.saving.register_keras_serializable(package="tfprune_export_test")
class SingularValues(keras.layers.Layer):
    """An op (SVD) that neither TFLite's builtin kernels nor tf2onnx can convert."""

    def call(self, x):
        return tf.linalg.svd(x, compute_uv=False)


@pytest.mark.parametrize("format, message", [
    ("tflite", r"The TFLite converter failed \(TensorFlow op\(s\) without a TFLite builtin kernel: Svd; "
               r"in layer\(s\) 'singular_values'\)"),
    ("onnx", r"tf2onnx cannot convert 1 op\(s\) of this model to ONNX: op type Svd \(TensorFlow op '[^']*Svd', "
             r"in layer 'singular_values'\)"),
])
def test_converter_failure_names_op_and_layer(tmp_path, format, message):
    inputs = keras.Input((4, 4))
    model = keras.Model(inputs, keras.layers.Dense(2)(SingularValues(name="singular_values")(inputs)))
    with pytest.raises(ExportError, match=message):
        tfprune.export(model, tmp_path / f"m.{format}", format=format)
    assert not any(tmp_path.iterdir())  # no half-converted file is left behind


def test_unsupported_dtypes_are_refused(tmp_path):
    def convnet(policy, input_dtype="float32"):
        inputs = keras.Input((8, 8, 3), dtype=input_dtype)
        x = keras.layers.Conv2D(4, 3, dtype=policy, name="conv")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, dtype=policy, name="head")(x))

    mixed = convnet("mixed_float16")
    for format in ("tflite", "onnx"):
        with pytest.raises(ValueError, match=rf"format='{format}' needs a float32 model .* not float32 here: "
                                             r"'conv' \(mixed_float16\), 'head' \(mixed_float16\)"):
            tfprune.export(mixed, tmp_path / f"m.{format}", format=format)
    with pytest.raises(ValueError, match=r"not float32 here: input '[^']+' \(float64\), 'conv' \(float64\)"):
        tfprune.export(convnet("float64", "float64"), tmp_path / "m.onnx", format="onnx")
    assert not any(tmp_path.iterdir())
    assert tfprune.export(mixed, tmp_path / "m.keras", format="keras").max_abs_difference < 1e-2  # .keras keeps it
