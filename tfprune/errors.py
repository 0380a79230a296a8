"""Exceptions raised by tfprune, each saying what was wrong and what is allowed."""


class UnsupportedModelError(TypeError):
    """The model is not one tfprune can read (for example a subclassed model with no functional graph)."""


class PlanError(ValueError):
    """A plan does not fit the model: unknown or non-prunable group, emptied group, bad indices."""


class UnknownMACsError(ValueError):
    """A layer has weights but its multiply-accumulate operations cannot be known (its call cannot be traced)."""


class RuntimeUnavailableError(ImportError):
    """The runtime an artefact needs (LiteRT for .tflite, ONNX Runtime or the ONNX converter for .onnx) is not
    installed or failed to import; the message names the package to install."""


class ExportError(ValueError):
    """A converter (TFLite, ONNX) could not convert a model; the message names the layer or op when the converter
    said which one."""


class OutputChangeWarning(UserWarning):
    """Pruning changed the values of the channels kept, not only removed some: a plan that prunes a channel-spanning
    group (a transformer's hidden width, which LayerNorms normalise over as a whole). `change` is the measured
    difference between the original and the slim model's outputs on random inputs, relative to the output scale
    (None when it could not be measured)."""

    def __init__(self, message, change=None):
        super().__init__(message)
        self.change = change
