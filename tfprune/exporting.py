"""export(): write a model as .keras, SavedModel or TFLite and check the written artefact against the model.

TensorFlow-bound: "saved_model" and "tflite" need the Keras TensorFlow backend and raise
`tfprune.backends.BackendError` under another one (no conversion is attempted); "keras" works on every backend.
A model trained under JAX is saved with `model.save("model.keras")` and exported from a TensorFlow process.
"""

import dataclasses
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfprune.backends import require_backend
from tfprune.graph.keras_nodes import model_inputs
from tfprune.verification import outputs, random_inputs

FORMATS = ("saved_model", "tflite", "keras")
QUANTIZATIONS = (None, "float16", "dynamic", "int8")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `tfprune.export` wrote and how closely the written artefact matches the Keras model.

    Attributes:
        path: where the artefact was written (a file for "keras" and "tflite", a directory for "saved_model").
        format: "keras", "saved_model" or "tflite".
        quantize: the TFLite quantisation applied, or None.
        max_abs_difference: the largest absolute difference between the outputs of the reloaded artefact and
            of the Keras model on the check inputs.
        size_bytes: the size on disk (all files, for a SavedModel directory).
        accuracy: top-1 accuracy of the artefact on the check inputs when `labels` were given, else None.
        reference_accuracy: top-1 accuracy of the Keras model on the same inputs when `labels` were given, else None.
    """

    path: str
    format: str
    quantize: str | None
    max_abs_difference: float
    size_bytes: int
    accuracy: float | None = None
    reference_accuracy: float | None = None


def export(model, path, format="saved_model", quantize=None, representative_data=None, labels=None):
    """Write `model` to `path`, load the written artefact back and compare its outputs with the model's.

    The model itself is not modified. The check inputs are `representative_data` (all of its examples) when given,
    else random inputs from `tfprune.verification.random_inputs(model)`.

    - "keras": `model.save(path)`; `path` must end in ".keras". Reloaded with `keras.models.load_model`.
    - "saved_model": `model.export(path, format="tf_saved_model")`; reloaded with `tf.saved_model.load` and called
      through its `serve` endpoint. Single-input models only.
    - "tflite": a SavedModel is exported to a temporary directory and converted with
      `tf.lite.TFLiteConverter.from_saved_model`; the flatbuffer is written to `path` and run in `tf.lite.Interpreter`.
      Single-input, single-output models only (others raise ValueError). Quantisation:
      "float16" (float16 weights), "dynamic" (int8 weights, float activations), "int8" (full integer: int8 weights
      and activations, calibrated on `representative_data`, every op must have an int8 kernel). With "int8" the
      model keeps float32 input and output (quantise/dequantise happen inside the model), so it is a drop-in
      replacement for the float model.

    Args:
        model: a built Keras model.
        path: the file (or, for "saved_model", directory) to write.
        format: one of "saved_model", "tflite", "keras".
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
                         f"{n_inputs} inputs. Use format='keras' for multi-input models.")
    if format == "tflite" and len(model.outputs) != 1:
        raise ValueError(f"format='tflite' export supports single-output models only; this model has "
                         f"{len(model.outputs)} outputs. Use format='keras' or 'saved_model'.")

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

    if format == "keras":
        model.save(path)
        actual = outputs(keras.models.load_model(path), inputs)
    elif format == "saved_model":
        model.export(path, format="tf_saved_model", verbose=False)
        actual = _saved_model_outputs(path, inputs)
    else:
        with tempfile.TemporaryDirectory() as saved:
            model.export(saved, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)
            _configure_quantization(converter, quantize, examples)
            flatbuffer = converter.convert()
        with open(path, "wb") as f:
            f.write(flatbuffer)
        actual = [_tflite_outputs(flatbuffer, inputs)]

    expected = outputs(model, inputs)
    difference = max(float(np.abs(e - a.reshape(e.shape)).max()) for e, a in zip(expected, actual, strict=True))
    accuracy = reference = None
    if labels is not None:
        classes = labels if labels.ndim == 1 else labels.argmax(axis=-1)
        accuracy = float(np.mean(actual[0].reshape(expected[0].shape).argmax(axis=-1) == classes))
        reference = float(np.mean(expected[0].argmax(axis=-1) == classes))
    return ExportResult(path=path, format=format, quantize=quantize, max_abs_difference=difference,
                        size_bytes=_size(path), accuracy=accuracy, reference_accuracy=reference)


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


def _tflite_outputs(flatbuffer, inputs):
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    (input_detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(input_detail["index"], inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], inputs.astype(input_detail["dtype"]))
    interpreter.invoke()
    (output_detail,) = interpreter.get_output_details()
    return np.array(interpreter.get_tensor(output_detail["index"]))


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)
