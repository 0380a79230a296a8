"""The runtimes that run exported files: LiteRT (`ai_edge_litert`) for .tflite and ONNX Runtime for .onnx.

Each is imported when first needed. A runtime that is missing or fails to import raises
`tfprune.errors.RuntimeUnavailableError` naming the package to install: there is no fallback to another
interpreter (such as the deprecated `tf.lite.Interpreter`), so a figure always comes from the runtime it names.
"""

import importlib
import importlib.metadata

import numpy as np

from tfprune.errors import RuntimeUnavailableError

LITERT = "LiteRT"
ONNX_RUNTIME = "ONNX Runtime"
_PACKAGES = {LITERT: ("ai_edge_litert.interpreter", "ai-edge-litert", "pip install ai-edge-litert"),
             ONNX_RUNTIME: ("onnxruntime", "onnxruntime", "pip install 'tfprune[onnx]'")}


def _import(runtime):
    module, distribution, install = _PACKAGES[runtime]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RuntimeUnavailableError(
            f"{runtime} is needed here but the Python package {distribution!r} could not be imported "
            f"({type(error).__name__}: {error}). Install it with `{install}`; tfprune does not fall back to "
            "another runtime.") from error


def runtime_version(runtime) -> str:
    """`"LiteRT 2.3.0"` or `"ONNX Runtime 1.32.0"`: the runtime and its installed version (the name alone if the
    package metadata is missing)."""
    _import(runtime)
    try:
        return f"{runtime} {importlib.metadata.version(_PACKAGES[runtime][1])}"
    except importlib.metadata.PackageNotFoundError:
        return runtime


def litert_interpreter(path=None, content=None, threads=None):
    """A LiteRT interpreter (`ai_edge_litert.interpreter.Interpreter`, XNNPACK on CPU) for a .tflite file or its bytes.

    Args:
        path: a .tflite file; or
        content: the flatbuffer as bytes.
        threads: CPU threads (None: LiteRT's default).

    Example:

    >>> import os, tempfile, keras, tfprune
    >>> from tfprune.deployment.runtimes import litert_interpreter
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> path = tfprune.export(model, os.path.join(tempfile.mkdtemp(), "m.tflite"), format="tflite").path
    >>> [int(d) for d in litert_interpreter(path).get_input_details()[0]["shape"]]
    [1, 4]
    """
    if (path is None) == (content is None):
        raise ValueError("Give exactly one of path (a .tflite file) and content (its bytes).")
    interpreter = _import(LITERT).Interpreter
    return interpreter(model_path=None if path is None else str(path), model_content=content, num_threads=threads)


def litert_outputs(interpreter, inputs):
    """Run a single-input LiteRT interpreter on a batch `inputs` (resized to it); the outputs as a list of arrays."""
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.asarray(inputs).astype(detail["dtype"]))
    interpreter.invoke()
    return [np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()]


def onnx_session(path, threads=None, profile_prefix=None):
    """An ONNX Runtime `InferenceSession` on the CPU for an .onnx file.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core). Inter-op parallelism is
            off (operators run one after another), as in LiteRT.
        profile_prefix: if given, ONNX Runtime profiles every run, its operators' times included, into a JSON
            file whose path starts with it (`session.end_profiling()` writes it and returns its path).

    Example:

    >>> import os, tempfile, keras, tfprune
    >>> from tfprune.deployment.runtimes import onnx_session
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> path = tfprune.export(model, os.path.join(tempfile.mkdtemp(), "m.onnx"), format="onnx").path
    >>> [i.shape[1:] for i in onnx_session(path, threads=1).get_inputs()]
    [[4]]
    """
    ort = _import(ONNX_RUNTIME)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ONNX Runtime's warnings about unused initialisers are noise here
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_outputs(session, inputs):
    """Run an ONNX Runtime session on `inputs` (an array, or a list of arrays in the order of the session's
    inputs); the outputs as a list of arrays."""
    inputs = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"The ONNX model takes {len(names)} input(s) ({', '.join(names)}); got {len(inputs)}.")
    return [np.asarray(y) for y in session.run(None, {n: np.asarray(x) for n, x in zip(names, inputs,
                                                                                      strict=True)})]
