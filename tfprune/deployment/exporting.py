"""export(): write a model as .keras, SavedModel, TFLite or ONNX and check the written artefact against the model.

TensorFlow-bound: every format but "keras" needs the Keras TensorFlow backend and raises
`tfprune.backends.BackendError` under another one (no conversion is attempted); "keras" works on every backend.
A model trained under JAX is saved with `model.save("model.keras")` and exported from a TensorFlow process.
"""

import dataclasses
import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfprune.backends import require_backend
from tfprune.deployment.op_names import layer_of_op
from tfprune.deployment.runtimes import (
    LITERT,
    ONNX_RUNTIME,
    litert_interpreter,
    litert_outputs,
    onnx_outputs,
    onnx_session,
    runtime_version,
)
from tfprune.deployment.verification import outputs, random_inputs
from tfprune.errors import ExportError
from tfprune.graph.keras_nodes import model_inputs

FORMATS = ("saved_model", "tflite", "keras", "onnx")
QUANTIZATIONS = (None, "float16", "dynamic", "int8")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `tfprune.export` wrote and how closely the written artefact matches the Keras model.

    Attributes:
        path: where the artefact was written (a file for "keras", "tflite" and "onnx", a directory for
            "saved_model").
        format: "keras", "saved_model", "tflite" or "onnx".
        quantize: the TFLite quantisation applied, or None.
        max_abs_difference: the largest absolute difference between the outputs of the reloaded artefact and
            of the Keras model on the check inputs.
        size_bytes: the size on disk (all files, for a SavedModel directory).
        accuracy: top-1 accuracy of the artefact on the check inputs when `labels` were given, else None.
        reference_accuracy: top-1 accuracy of the Keras model on the same inputs when `labels` were given, else None.
        runtime: what ran the artefact for the check: "Keras", "TensorFlow", "LiteRT <version>" or
            "ONNX Runtime <version>".
        converter: for "onnx", the converter used ("keras" or "tf2onnx", see
            `tfprune.deployment.onnx_conversion`), else None.
    """

    path: str
    format: str
    quantize: str | None
    max_abs_difference: float
    size_bytes: int
    accuracy: float | None = None
    reference_accuracy: float | None = None
    runtime: str | None = None
    converter: str | None = None


def export(model, path, format="saved_model", quantize=None, representative_data=None, labels=None):
    """Write `model` to `path`, load the written artefact back and compare its outputs with the model's.

    The model itself is not modified. The check inputs are `representative_data` (all of its examples) when given,
    else random inputs from `tfprune.deployment.verification.random_inputs(model)`.

    - "keras": `model.save(path)`; `path` must end in ".keras". Reloaded with `keras.models.load_model`.
    - "saved_model": `model.export(path, format="tf_saved_model")`; reloaded with `tf.saved_model.load` and called
      through its `serve` endpoint. Single-input models only.
    - "tflite": a SavedModel is exported to a temporary directory and converted with
      `tf.lite.TFLiteConverter.from_saved_model`; the flatbuffer is written to `path` and run in the LiteRT
      interpreter (`ai_edge_litert`; the deprecated `tf.lite.Interpreter` is not used, and there is no fallback to
      it). Single-input, single-output models only (others raise ValueError). Quantisation:
      "float16" (float16 weights), "dynamic" (int8 weights, float activations), "int8" (full integer: int8 weights
      and activations, calibrated on `representative_data`, every op must have an int8 kernel). With "int8" the
      model keeps float32 input and output (quantise/dequantise happen inside the model), so it is a drop-in
      replacement for the float model.
    - "onnx": written by `tfprune.deployment.onnx_conversion.write_onnx`
      (Keras's own `model.export(format="onnx")`, which
      runs tf2onnx; tf2onnx directly only for Keras < 3.8, which has no ONNX export) and run in ONNX Runtime (CPU).
      Models with several inputs and outputs are supported; the check then uses random inputs
      (`representative_data` is refused), and `labels` score the first output. Needs the `onnx` extra.

    "tflite" and "onnx" need float32 models (inputs and every layer's dtype policy); a mixed-precision or float64
    model is refused with the layers named. A converter that fails raises `tfprune.errors.ExportError`, naming the
    ops and layers it could not convert when the converter says which.

    Args:
        model: a built Keras model.
        path: the file (or, for "saved_model", directory) to write.
        format: one of "saved_model", "tflite", "keras", "onnx".
        quantize: None, or with format="tflite" one of "float16", "dynamic", "int8".
        representative_data: an array of examples (first axis = examples) or an iterable of input batches. Required
            for quantize="int8" (calibration, one example at a time); when given, it is also the check data.
        labels: class labels for the examples of `representative_data` (integer classes, or one-hot / scores whose
            argmax is the class), one per example; not allowed without `representative_data`. When given, the top-1
            accuracy (argmax of the outputs) of the artefact and of the Keras model are both reported, so
            quantisation loss is visible.

    Returns:
        An `ExportResult`.

    Example:

    >>> import os, tempfile, keras, tfprune
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> result = tfprune.export(model, os.path.join(tempfile.mkdtemp(), "model.keras"), format="keras")
    >>> result.max_abs_difference < 1e-5
    True
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; allowed formats are {', '.join(map(repr, FORMATS))}.")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantize value {quantize!r}; allowed values are "
                         f"{', '.join(map(repr, QUANTIZATIONS))}.")
    if quantize is not None and format != "tflite":
        raise ValueError(f"quantize={quantize!r} applies only to format='tflite', not format={format!r}; "
                         "use format='tflite' or quantize=None.")
    if quantize == "int8" and representative_data is None:
        raise ValueError("quantize='int8' (full integer quantisation) needs representative_data to calibrate "
                         "activation ranges: an array of example inputs or an iterable of input batches.")
    if format != "keras":
        require_backend("tensorflow", f"tfprune.export(format={format!r})")
    if format == "keras" and not str(path).endswith(".keras"):
        raise ValueError(f"format='keras' writes a .keras file, so path must end in '.keras'; got {str(path)!r}.")
    n_inputs = len(model_inputs(model))
    if format in ("saved_model", "tflite") and n_inputs != 1:
        raise ValueError(f"format={format!r} export supports single-input models only; this model has "
                         f"{n_inputs} inputs. Use format='keras' or 'onnx' for multi-input models.")
    if format == "onnx" and n_inputs != 1 and representative_data is not None:
        raise ValueError(f"representative_data holds examples for a single input; this model has {n_inputs} "
                         "inputs, so the ONNX file is checked on random inputs: leave representative_data (and "
                         "labels) out.")
    if format == "tflite" and len(model.outputs) != 1:
        raise ValueError(f"format='tflite' export supports single-output models only; this model has "
                         f"{len(model.outputs)} outputs. Use format='keras', 'saved_model' or 'onnx'.")
    if format in ("tflite", "onnx"):
        _check_float32(model, format)
        runtime = runtime_version(LITERT if format == "tflite" else ONNX_RUNTIME)  # missing runtime: fail before work

    path = str(path)
    examples = None if representative_data is None else _examples(representative_data)
    inputs = random_inputs(model) if examples is None else examples
    if labels is not None:
        if examples is None:
            raise ValueError("labels were given without representative_data; the labels must belong to the check "
                             "examples, so pass those examples as representative_data.")
        labels = np.asarray(labels)
        if len(labels) != len(examples):
            raise ValueError(f"labels must give one class per check example: got {len(labels)} labels for "
                             f"{len(examples)} examples in representative_data.")

    converter = None
    if format == "keras":
        model.save(path)
        actual = outputs(keras.models.load_model(path), inputs)
        runtime = "Keras"
    elif format == "saved_model":
        model.export(path, format="tf_saved_model", verbose=False)
        actual = _saved_model_outputs(path, inputs)
        runtime = "TensorFlow"
    elif format == "tflite":
        flatbuffer = _convert_tflite(model, quantize, examples)
        with open(path, "wb") as f:
            f.write(flatbuffer)
        actual = litert_outputs(litert_interpreter(content=flatbuffer), inputs)
    else:
        from tfprune.deployment.onnx_conversion import write_onnx  # imported here: it imports tf2onnx

        converter = write_onnx(model, path)
        actual = onnx_outputs(onnx_session(path), inputs)

    expected = outputs(model, inputs)
    difference = max(float(np.abs(e - a.reshape(e.shape)).max()) for e, a in zip(expected, actual, strict=True))
    accuracy = reference = None
    if labels is not None:
        classes = labels if labels.ndim == 1 else labels.argmax(axis=-1)
        accuracy = float(np.mean(actual[0].reshape(expected[0].shape).argmax(axis=-1) == classes))
        reference = float(np.mean(expected[0].argmax(axis=-1) == classes))
    return ExportResult(path=path, format=format, quantize=quantize, max_abs_difference=difference,
                        size_bytes=_size(path), accuracy=accuracy, reference_accuracy=reference, runtime=runtime,
                        converter=converter)


def _check_float32(model, format):
    """Refuse, naming them, inputs and layers that are not float32: the TFLite builtin kernels and ONNX Runtime's
    CPU kernels used here are float32 (quantisation is the converter's job: quantize="float16" etc.)."""
    inputs = [f"input {t.name!r} ({t.dtype})" for t in model_inputs(model) if str(t.dtype) != "float32"]
    layers = [f"{layer.name!r} ({layer.dtype_policy.name})" for layer in _all_layers(model)
              if not isinstance(layer, keras.layers.InputLayer) and layer.dtype_policy.name != "float32"]
    if inputs or layers:
        listed = ", ".join(inputs + layers[:5]) + (f" and {len(layers) - 5} more layers" if len(layers) > 5 else "")
        raise ValueError(f"format={format!r} needs a float32 model (float32 inputs, every layer with dtype policy "
                         f"'float32'); not float32 here: {listed}. Rebuild the model under "
                         "keras.config.set_dtype_policy('float32') and copy the weights; for smaller TFLite "
                         "files use quantize='float16', 'dynamic' or 'int8'.")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _convert_tflite(model, quantize, examples):
    """The TFLite flatbuffer of `model`; a converter failure raises ExportError naming the ops and layers."""
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        _configure_quantization(converter, quantize, examples)
        try:
            return converter.convert()
        except Exception as error:  # ConverterError and others: say which ops and layers, when the message does
            raise ExportError(f"The TFLite converter failed{_tflite_culprits(model, str(error))}: "
                              f"{type(error).__name__}: {_first_line(error)}") from error


def _tflite_culprits(model, message):
    ops = list(dict.fromkeys(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)))
    nodes = re.findall(r'fused\["(\w+):", "([^"@]+)@', message)
    layers = list(dict.fromkeys(layer for layer in (layer_of_op(model, name) for _, name in nodes) if layer))
    parts = []
    if ops:
        parts.append(f"TensorFlow op(s) without a TFLite builtin kernel: {', '.join(ops)}")
    if layers:
        parts.append(f"in layer(s) {', '.join(map(repr, layers))}")
    return f" ({'; '.join(parts)})" if parts else ""


def _first_line(error):
    text = " ".join(str(error).split())
    return text if len(text) <= 600 else text[:597] + "..."


def _examples(representative_data):
    """All examples of `representative_data` (an array or an iterable of batches) as one float32 array."""
    if isinstance(representative_data, np.ndarray | tf.Tensor):
        return np.asarray(representative_data, dtype=np.float32)
    batches = [np.asarray(batch, dtype=np.float32) for batch in representative_data]
    if not batches:
        raise ValueError("representative_data is empty; give an array of examples or a non-empty iterable of batches.")
    return np.concatenate(batches, axis=0)


def _configure_quantization(converter, quantize, examples):
    if quantize is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        def representative_dataset():
            for example in examples:
                yield [example[None]]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def _saved_model_outputs(path, inputs):
    loaded = tf.saved_model.load(path)  # kept alive while `serve` runs: it owns the variables
    result = loaded.serve(tf.constant(inputs))
    return [np.asarray(y) for y in tf.nest.flatten(result)]


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)
