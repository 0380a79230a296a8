"""The TF Model Optimization side of benchmarks/speedup.py, run by it in a subprocess.

    TF_USE_LEGACY_KERAS=1 python benchmarks/tfmot_twin.py --model=ResNet50 --input_size=224 \\
        --weights=weights.npz --sparsities=0.5,0.75 --out_dir=DIR

tfmot works on tf-keras (Keras 2) models only, and TensorFlow picks tf-keras for `tf.keras` only when
TF_USE_LEGACY_KERAS=1 is set before it is imported, so this runs in its own process. It builds the tf-keras twin of a
keras.applications model (same constructor, same arguments), loads the Keras 3 model's weights into it (saved by
speedup.py as weights.npz, in `model.get_weights()` order), and writes to `out_dir`:

- dense.tflite: the twin itself, converted to TFLite;
- sparse_<s>.tflite for each sparsity s: `tfmot.sparsity.keras.prune_low_magnitude` with `ConstantSparsity(s)` on
  every Conv2D and Dense layer (not depthwise, as tfmot's default; layers tfmot cannot wrap, e.g. Rescaling, stay),
  one optimizer step at learning rate 0 with `UpdatePruningStep` (which applies the magnitude masks; the weights do
  not otherwise move), `strip_pruning`, converted to TFLite;
- twin.json: the files and, for each sparsity, the fraction of zeros in the pruned kernels.
"""

import json
import os

from absl import app, flags, logging

import shared_setup  # imports no Keras: this process must reach tf-keras first

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "keras.applications constructor name.", required=True)
shared_setup.define_input_size(224)
flags.DEFINE_string("weights", None, ".npz of the Keras 3 model's get_weights(), as arr_0, arr_1, ...", required=True)
flags.DEFINE_list("sparsities", ["0.5", "0.75"], "Unstructured sparsities (fractions of zero weights).")
flags.DEFINE_string("out_dir", None, "Where the .tflite files and twin.json go.", required=True)


def main(argv):
    del argv
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise app.UsageError("Set TF_USE_LEGACY_KERAS=1 before running this script: tfmot needs tf-keras.")
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    size = FLAGS.input_size
    with np.load(FLAGS.weights) as stored:
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]

    def make_twin():  # a fresh twin for every use: tfmot's wrappers take over (and mask) the layers they wrap
        twin = getattr(tf_keras.applications, FLAGS.model)(weights=None, input_shape=(size, size, 3))
        expected = [tuple(w.shape) for w in twin.get_weights()]
        if [tuple(w.shape) for w in weights] != expected:
            raise ValueError(f"The tf-keras twin of {FLAGS.model} has {len(expected)} weights whose shapes differ "
                             f"from the Keras 3 model's {len(weights)}; the twin is not the same architecture.")
        twin.set_weights(weights)
        return twin

    def write_tflite(model, name):
        path = os.path.join(FLAGS.out_dir, name)
        with open(path, "wb") as f:
            f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        return path

    result = {"dense": write_tflite(make_twin(), "dense.tflite"), "sparse": {}}
    logging.info("%s: tf-keras twin written", FLAGS.model)
    x = np.zeros((1, size, size, 3), np.float32)
    y = np.zeros((1,), np.int64)
    prunable = (tf_keras.layers.Conv2D, tf_keras.layers.Dense)  # tfmot's default leaves depthwise kernels dense
    for sparsity in map(float, FLAGS.sparsities):
        schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=1)

        def wrap(layer, schedule=schedule):  # tfmot refuses layers it has no pruning rule for (Rescaling, ...)
            if isinstance(layer, prunable) and not isinstance(layer, tf_keras.layers.DepthwiseConv2D):
                return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
            return layer

        pruned = tf_keras.models.clone_model(make_twin(), clone_function=wrap)
        pruned.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=0.0),
                       loss="sparse_categorical_crossentropy")
        pruned.fit(x, y, epochs=1, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
        kernels = [layer.kernel.numpy() for layer in stripped.layers
                   if isinstance(layer, prunable) and not isinstance(layer, tf_keras.layers.DepthwiseConv2D)]
        zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
        if abs(zeros - sparsity) > 0.01:
            raise RuntimeError(f"tfmot left {zeros:.3f} of the pruned kernels' weights zero, not {sparsity}.")
        result["sparse"][str(sparsity)] = {"path": write_tflite(stripped, f"sparse_{sparsity}.tflite"),
                                           "zero_fraction": zeros}
        logging.info("%s: tfmot sparsity %.2f written (%.3f of conv/dense kernel weights are zero)",
                     FLAGS.model, sparsity, zeros)
    with open(os.path.join(FLAGS.out_dir, "twin.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    app.run(main)
