"""LayerInputs: the tensors that chosen layers of a model read, batch by batch, from one traced graph walk.

The model's graph is walked with `keras_nodes.run_nodes` (nested sub-models included) inside one compiled function
(`tfprune.backends.compile_function`: a `tf.function` on TensorFlow, a `jax.jit` on JAX); each batch is one call
that returns the first input tensor of every requested layer, in inference mode
(`training=False`); layers after the last one needed are not computed. Layers are named by their path
("submodel/layer"), as in `ChannelGraph.layers`.
"""

import keras
import numpy as np
from keras.src.trainers import data_adapters

from tfprune import backends
from tfprune.graph.keras_nodes import functional_of, is_graph_model, run_nodes


class NotEnoughData(ValueError):
    """The data has fewer examples than were asked for."""


class LayerInputs:
    """Reads the input tensors of chosen layers of a model on data.

    The walk is traced once; weights changed in place between calls (a reconstruction writing new kernels) are
    seen by the next call without retracing. The model is only read.

    Args:
        model: a Functional or Sequential Keras model.
        paths: the layers whose (first) input is wanted, by path ("layer" or "submodel/layer").

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((4, 4, 3))
    >>> x = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, name="head")(keras.layers.Flatten()(x)))
    >>> taps = LayerInputs(model, ["head"])
    >>> [batch["head"].shape for batch in taps.batches(np.ones((5, 4, 4, 3), "float32"), batch_size=4)]
    [(4, 32), (1, 32)]
    """

    def __init__(self, model, paths):
        functional_of(model)
        self.model = model
        self.paths = tuple(dict.fromkeys(paths))
        if not self.paths:
            raise ValueError("LayerInputs needs at least one layer path.")
        self.calls = {}  # path -> how many times the walk called the layer (filled when traced)
        self._function = backends.compile_function(self._read, lambda: self.model.variables)

    def _walk(self, model, inputs, prefix, found):
        def call(node, values):
            op, path = node.operation, prefix + node.operation.name
            tensors = [values[id(t)] for t in node.arguments.keras_tensors]
            if path in self.calls:
                self.calls[path] += 1
                found.setdefault(path, tensors[0])
            if is_graph_model(op):
                return self._walk(op, tensors, path + "/", found)
            if len(found) == len(self.paths) or any(t is None for t in tensors):
                return [None] * len(node.outputs)  # every tap is read: the rest is only walked to count calls
            args, kwargs = node.arguments.fill_in(values)
            if "training" in getattr(op, "_call_context_args", ()):
                kwargs["training"] = False
            return keras.tree.flatten(op(*args, **kwargs))

        return run_nodes(model, inputs, call)

    def _read(self, *inputs):
        self.calls = dict.fromkeys(self.paths, 0)
        found = {}
        self._walk(self.model, list(inputs), "", found)
        missing = [p for p in self.paths if p not in found]
        if missing:
            raise ValueError(f"Model '{self.model.name}' never calls layers {missing} on its inputs; "
                             "name layers by their path ('layer' or 'submodel/layer').")
        return found

    def batches(self, data, batch_size=32, examples=None):
        """Yield `{path: np.ndarray}` per batch of `data` (at most `examples` examples in all).

        Args:
            data: anything `model.predict` accepts (arrays, a `tf.data.Dataset`, a `keras.utils.PyDataset`);
                `(x, y)` batches are unpacked as `predict` does.
            batch_size: batch size for array data (datasets keep their own batches).
            examples: stop after this many examples; `ValueError` if `data` has fewer. None reads all of it.
        """
        if data is None:
            raise ValueError("No data: pass the inputs to read the layers on (anything model.predict accepts).")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        seen = 0
        for flat in self._input_batches(data, batch_size):
            if examples is not None and seen >= examples:
                break
            if examples is not None and seen + int(flat[0].shape[0]) > examples:
                flat = [v[: examples - seen] for v in flat]
            seen += int(flat[0].shape[0])
            with backends.local_computation():
                found = self._function(*flat)
            yield {path: backends.host_array(value) for path, value in found.items()}
        if examples is not None and seen < examples:
            raise NotEnoughData(f"data has {seen} examples but {examples} were asked for; pass more data or ask "
                                "for fewer examples.")

    @staticmethod
    def _input_batches(data, batch_size):
        """The flat input arrays of each batch of `data`, read on this process alone (not sharded across the
        processes of a multi-process `keras.distribution` run)."""
        with backends.local_computation():
            adapter = data_adapters.get_data_adapter(x=data, batch_size=batch_size, shuffle=False)
            batches = adapter.get_numpy_iterator()
        for batch in batches:
            x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            yield [np.asarray(v) for v in keras.tree.flatten(x)]
