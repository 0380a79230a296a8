"""write_onnx(): a Keras model to an ONNX file, with converter failures reported as errors that name the layer.

Which converter, and why. On the TensorFlow backend, Keras's own `model.export(path, format="onnx")` traces the
model's serving function and hands it to tf2onnx (`tf2onnx.convert.from_function`), after patching tf2onnx for
NumPy 2. tfprune uses that Keras export whenever the installed Keras has it (Keras >= 3.8), so the graph that is
converted is exactly the one Keras serves. Keras refuses models that have never been called ("The model provided has
never called"; a freshly rebuilt slim model is one): tfprune passes the input signature explicitly, which Keras
then accepts. Only where Keras has no ONNX export (Keras < 3.8) does tfprune call tf2onnx itself, on a
`tf.function` of the model with the same signature. Both paths are tested and give the same file.

tf2onnx turns tensors that the traced function captures by value (not variables: e.g. the mean and variance that
`keras.layers.Normalization` keeps as plain tensors, as in EfficientNet) into extra graph inputs, so the file would
ask the caller for them. `write_onnx` puts their values back into the file as constants (initialisers), taken from
the captures of the same model's traced function, matched in order and checked by op name, shape and dtype.

Large models. tf2onnx freezes the model's variables into graph constants and then copies the graph many times
(freezing, importing, Grappler, its own optimiser passes): VGG16's 0.55 GB of weights took over 20 GB of memory.
For a model whose weights exceed `LARGE_MODEL_BYTES` the default is therefore the "stateless" converter: tf2onnx
converts `model.stateless_call` with every weight as a graph *input* (so the graph it copies holds no weights),
the weights are then written into the file as initialisers, and ONNX Runtime's basic graph optimisations
(constant folding, Conv + BatchNormalization fusion; portable across machines) fold them into the same operator
graph the other converters give. VGG16 converts in 7.5 s this way, the whole process peaking at 4.1 GB.

tf2onnx does not raise on an op it cannot convert: it logs "Tensorflow op [...] is not supported" and writes a file
that ONNX Runtime then refuses to load. `write_onnx` captures tf2onnx's log instead, and raises
`tfprune.errors.ExportError` naming the op type, the TensorFlow op and the Keras layer it belongs to.
"""

import logging
import os
import re
import warnings

import keras
import numpy as np

from tfprune.deployment.op_names import layer_of_op
from tfprune.errors import ExportError, RuntimeUnavailableError
from tfprune.graph.keras_nodes import model_inputs

CONVERTERS = ("keras", "tf2onnx", "stateless")
LARGE_MODEL_BYTES = 256 * 2**20  # weights above this take the "stateless" converter by default
_KERAS_ONNX = (3, 8)  # the first Keras release with model.export(format="onnx")
_WEIGHT_INPUT = "tfprune_weight_{}"
_UNSUPPORTED_OP = re.compile(r"Tensorflow op \[(?P<node>[^:\]]+): (?P<type>[^\]]+)\] is not supported")


def default_converter(model=None, large_model_bytes=LARGE_MODEL_BYTES) -> str:
    """"stateless" for a model whose weights take more than `large_model_bytes`, else "keras" when the installed
    Keras can export ONNX (>= 3.8), else "tf2onnx"."""
    if model is not None and sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                                 for v in model.weights) > large_model_bytes:
        return "stateless"
    version = tuple(int(part) for part in re.findall(r"\d+", keras.version())[:2])
    return "keras" if version >= _KERAS_ONNX else "tf2onnx"


def write_onnx(model, path, converter=None, opset=None):
    """Convert a Keras model (TensorFlow backend, float32) to ONNX at `path`.

    Args:
        model: a built Functional or Sequential model; any number of inputs and outputs.
        path: the .onnx file to write.
        converter: "keras" (`model.export(format="onnx")`), "tf2onnx" (`tf2onnx.convert.from_function`),
            "stateless" (tf2onnx with the weights as inputs, for large models; see the module docstring), or None
            for `default_converter(model)`.
        opset: the ONNX opset, or None for the converter's default.

    Returns:
        The converter used.

    Raises:
        ExportError: the converter failed or left ops unconverted; the message names them and their layers.
        RuntimeUnavailableError: tf2onnx or onnx is not installed (the `onnx` extra).

    Example:

    >>> import os, tempfile, keras
    >>> from tfprune.deployment.onnx_conversion import write_onnx
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> write_onnx(model, os.path.join(tempfile.mkdtemp(), "m.onnx"))
    'keras'
    """
    converter = default_converter(model) if converter is None else converter
    if converter not in CONVERTERS:
        raise ValueError(f"Unknown ONNX converter {converter!r}; allowed: {', '.join(map(repr, CONVERTERS))}.")
    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"ONNX export through tf2onnx needs the TensorFlow backend; Keras runs on "
                          f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow.")
    try:
        import onnx  # noqa: F401  (tf2onnx writes through it)
        import tensorflow as tf
        import tf2onnx
    except ImportError as error:
        raise RuntimeUnavailableError(f"ONNX export needs the packages tf2onnx and onnx ({type(error).__name__}: "
                                      f"{error}). Install them with `pip install 'tfprune[onnx]'`.") from error

    inputs = model_inputs(model)
    signature = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=_input_name(t, i)) for i, t in enumerate(inputs)]
    path = str(path)
    records = []
    with _captured_log("tf2onnx", records), warnings.catch_warnings():
        # Keras's NumPy-2 patch of tf2onnx sets np.object, which NumPy announces with a FutureWarning: harmless here.
        warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
        try:
            if converter == "keras":
                model.export(path, format="onnx", verbose=False, opset_version=opset,
                             input_signature=[signature[0]] if len(signature) == 1 else [signature])
            elif converter == "stateless":
                _write_stateless(model, path, signature, opset)
            else:
                function = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False),
                                       input_signature=signature)
                tf2onnx.convert.from_function(function, input_signature=signature, opset=opset, output_path=path)
        except Exception as error:
            _remove(path)
            raise ExportError(f"ONNX conversion ({converter}) failed{_where(model, _failed_nodes(records))}: "
                              f"{type(error).__name__}: {_first_line(error)}") from error
    unsupported = [_UNSUPPORTED_OP.search(r.getMessage()) for r in records if r.levelno >= logging.ERROR]
    unsupported = [m for m in unsupported if m]
    if unsupported:
        _remove(path)
        ops = "; ".join(f"op type {m['type']} (TensorFlow op {m['node']!r}{_layer_clause(model, m['node'])})"
                        for m in unsupported)
        raise ExportError(f"tf2onnx cannot convert {len(unsupported)} op(s) of this model to ONNX: {ops}. Replace "
                          "the layer with one built from supported ops, or export to another format.")
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR and "Unsupported ops" not in r.getMessage()]
    if errors:
        _remove(path)
        raise ExportError(f"ONNX conversion ({converter}) reported errors{_where(model, _failed_nodes(records))}: "
                          f"{_first_line(errors[0])}")
    _fold_captured_inputs(model, path, signature)
    return converter


def _write_stateless(model, path, signature, opset):
    """tf2onnx on `model.stateless_call` with the weights as graph inputs, which become initialisers; then ONNX
    Runtime's basic optimisations fold them into the operators (see the module docstring)."""
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx
    from onnx import numpy_helper

    trainable, frozen = model.trainable_variables, model.non_trainable_variables
    weights = trainable + frozen
    specs = [tf.TensorSpec(v.shape, v.dtype, name=_WEIGHT_INPUT.format(i)) for i, v in enumerate(weights)]

    def call(*tensors):
        x, w = tensors[:len(signature)], tensors[len(signature):]
        outputs, _ = model.stateless_call(list(w[:len(trainable)]), list(w[len(trainable):]),
                                          x[0] if len(x) == 1 else list(x), training=False)
        return outputs

    function = tf.function(call, input_signature=signature + specs)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature + specs, opset=opset)
    inputs = {node.name: node for node in proto.graph.input}
    for i, variable in enumerate(weights):
        node = inputs.get(_WEIGHT_INPUT.format(i))
        if node is not None:  # tf2onnx drops the inputs the outputs do not depend on
            proto.graph.input.remove(node)
            proto.graph.initializer.append(numpy_helper.from_array(np.asarray(variable.numpy()), name=node.name))
    raw = path + ".unoptimized"
    try:
        onnx.save(proto, raw)
        del proto
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = path
        onnxruntime.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    finally:
        _remove(raw)


def _fold_captured_inputs(model, path, signature):
    """Turn the graph inputs that tf2onnx made of captured tensors back into constants (see the module docstring)."""
    import onnx
    import tensorflow as tf
    from onnx import numpy_helper

    proto = onnx.load(path)
    names = {spec.name for spec in signature}
    extra = [node for node in proto.graph.input if node.name.split(":")[0] not in names]
    if not extra:
        return
    traced = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False))
    graph = traced.get_concrete_function(*signature).graph
    captured = [(inner.name, np.asarray(outer)) for outer, inner in graph.captures if outer.dtype != tf.resource]
    if len(captured) != len(extra):
        _remove(path)
        raise ExportError(f"tf2onnx left {len(extra)} extra graph input(s) ({', '.join(n.name for n in extra)}) "
                          f"but the traced model captures {len(captured)} tensor(s); they cannot be matched.")
    inputs = {node.name: node for node in proto.graph.input}
    for node, (name, value) in zip(extra, captured, strict=True):
        shape = [d.dim_value for d in node.type.tensor_type.shape.dim]
        if node.name.split("/")[-2:] != name.split("/")[-2:] or shape != list(value.shape):
            _remove(path)
            raise ExportError(f"tf2onnx made the captured tensor {name!r} {list(value.shape)} an input, matched in "
                              f"order to {node.name!r} {shape}, which does not fit.")
        proto.graph.input.remove(inputs[node.name])
        proto.graph.initializer.append(numpy_helper.from_array(value, name=node.name))
    onnx.save(proto, path)


def _input_name(tensor, index):
    name = getattr(tensor, "name", None) or f"input_{index}"
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


class _captured_log:
    """Collect the records of one logger (and its children) in `records` instead of printing them."""

    def __init__(self, name, records):
        self.logger = logging.getLogger(name)
        self.handler = logging.Handler(level=logging.DEBUG)
        self.handler.emit = records.append

    def __enter__(self):
        self.saved = (self.logger.propagate, self.logger.level)
        self.logger.addHandler(self.handler)
        self.logger.propagate = False
        if self.logger.level == logging.NOTSET or self.logger.level > logging.WARNING:
            self.logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc_info):
        self.logger.removeHandler(self.handler)
        self.logger.propagate, level = self.saved
        self.logger.setLevel(level)
        return False


def _failed_nodes(records):
    return [m["node"] for m in (_UNSUPPORTED_OP.search(r.getMessage()) for r in records) if m]


def _layer_clause(model, op_name):
    layer = layer_of_op(model, op_name)
    return "" if layer is None else f", in layer {layer!r}"


def _where(model, nodes):
    layers = [layer for layer in dict.fromkeys(layer_of_op(model, node) for node in nodes) if layer]
    return f" in layer(s) {', '.join(map(repr, layers))}" if layers else ""


def _first_line(error):
    text = " ".join(str(error).split())
    return text if len(text) <= 500 else text[:497] + "..."


def _remove(path):
    if os.path.isfile(path):
        os.remove(path)
