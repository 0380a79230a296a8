"""Deployment: `export` to .keras, SavedModel, TFLite and ONNX, the ONNX conversion, the runtimes that run the files
(LiteRT, ONNX Runtime), the equivalence checks, and the filter that quiets the converters' routine log."""
