"""Prune while training data-parallel across processes: Keras's distribution API on the JAX backend.

Start one copy per process (per host on a real cluster), the same flags on each except --process_id:

    # two processes on one machine, over loopback
    python examples/train_multiprocess.py --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=0 &
    python examples/train_multiprocess.py --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=1

    # a cluster: process 0's host and a free port as the coordinator, one process per host
    python examples/train_multiprocess.py --coordinator_address=10.0.0.1:12355 --num_processes=4 --process_id=$RANK

Every process trains on its own shard of the training data (`keras.distribution.DataParallel`, weights replicated,
gradients averaged across processes), given one of two ways (--data):

- `arrays`: each process slices its own shard of NumPy arrays and passes it to `fit`, with the distribution's
  `auto_shard_dataset` set to False;
- `dataset`: every process builds the same global `tf.data.Dataset` and passes it to `fit`, and Keras shards it
  (`auto_shard_dataset` left at True), as in Keras's distribution guide. DropNet then measures a `tf.data.Dataset`
  too, of several batches.

The pruning callbacks run on every process with the same state: DropNet measures the same sample on every process
(checked to agree), the masks and penalties are identical, and the `--backup_dir` state is written by process 0 only
(put it on a file system all hosts share). The script trains a
small CNN three times, with `DropNet`, `NetworkSlimming` and `GroupLasso`, and prints each plan; with --out each
process also saves its plans and trained weights (tests/test_multiprocess.py compares them between processes).

TensorFlow's `MultiWorkerMirroredStrategy` is not used: Keras 3's `fit` fails under it ("Attempt to convert a value
(PerReplica...) to a Tensor"; keras-team/keras#20585, tensorflow/tensorflow#72388), so the multi-machine path is JAX.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("coordinator_address", "127.0.0.1:12355", "host:port of process 0 (the coordinator)")
flags.DEFINE_integer("num_processes", 2, "how many processes take part")
flags.DEFINE_integer("process_id", 0, "this process's index, 0 .. num_processes - 1")
flags.DEFINE_integer("epochs", 2, "epochs of each of the three trainings")
flags.DEFINE_integer("examples", 96, "training examples in all (split between the processes)")
flags.DEFINE_enum("data", "arrays", ["arrays", "dataset"], "how the training data reaches fit: "
                  "each process's shard of NumPy arrays, or the same global tf.data.Dataset that Keras shards")
flags.DEFINE_string("backup_dir", None, "a shared directory for the callbacks' state (resume after interruption)")
flags.DEFINE_string("out", None, "save this process's plans and weights to this .npz file")
flags.DEFINE_bool("show_disagreement", False, "at the end, measure activations on different data on each process "
                  "and print how tfprune refuses it")


def small_cnn():
    import keras

    keras.utils.set_random_seed(0)  # the same initial weights on every process
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn2")(x))
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def synthetic_data(n):
    """Images and one of 3 labels (how many of the two channels have a positive mean); the same on every process."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(n, 8, 8, 2)).astype("float32")
    return x, (x[..., 0].mean(axis=(1, 2)) > 0).astype("int64") + (x[..., 1].mean(axis=(1, 2)) > 0)


def main(argv):
    del argv
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"Multi-process training runs on the JAX backend; KERAS_BACKEND is "
                         f"'{keras.backend.backend()}'. Start with KERAS_BACKEND=jax.")
    keras.distribution.initialize(job_addresses=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                                  process_id=FLAGS.process_id)
    import jax
    import numpy as np

    from tfprune.callbacks import DropNet, GroupLasso, NetworkSlimming

    distribution = keras.distribution.DataParallel(devices=jax.devices())
    x, y = synthetic_data(FLAGS.examples)
    if FLAGS.data == "arrays":
        distribution.auto_shard_dataset = False  # each process passes its own shard of the arrays
        shard = slice(FLAGS.process_id, None, FLAGS.num_processes)
        train = {"x": x[shard], "y": y[shard], "batch_size": 8}
        measure = x[:32]  # DropNet's measuring sample: the same on every process
    else:
        import tensorflow as tf

        # the same global dataset on every process, global batches of 8 per process; Keras gives each process its part
        train = {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(8 * FLAGS.num_processes)}
        measure = tf.data.Dataset.from_tensor_slices(x[:32]).batch(8)  # measured whole by every process
    keras.distribution.set_distribution(distribution)

    callbacks = {
        "dropnet": lambda: DropNet(measure, fraction=0.25, rewind=None, seed=0, backup_dir=FLAGS.backup_dir),
        "slimming": lambda: NetworkSlimming(l1=0.05, backup_dir=FLAGS.backup_dir),
        "group_lasso": lambda: GroupLasso(strength=0.02, backup_dir=FLAGS.backup_dir),
    }
    results = {}
    for name, make in callbacks.items():
        model = small_cnn()
        callback = make()
        model.fit(**train, epochs=FLAGS.epochs, verbose=0, callbacks=[callback])
        plan = callback.plan() if name == "dropnet" else callback.plan(ratio=0.5)
        kept = {group: len(k) for group, k in plan.keep.items()}
        print(f"process {FLAGS.process_id}: {name} keeps {kept} channels", flush=True)
        for group, kept in plan.keep.items():
            results[f"{name}/plan/{group}"] = np.asarray(kept)
        for variable in model.weights:
            results[f"{name}/weight/{variable.path}"] = np.asarray(variable.numpy())
    if FLAGS.show_disagreement:
        from tfprune.criteria.activations import channel_statistics

        try:
            channel_statistics(model, x[FLAGS.process_id * 8:][:8])  # a different sample on each process
            results["disagreement"] = np.array("not refused")
        except ValueError as e:
            results["disagreement"] = np.array(str(e))
        print(f"process {FLAGS.process_id}: different measuring data: {results['disagreement']}", flush=True)
    if FLAGS.out:
        np.savez(FLAGS.out, **results)


if __name__ == "__main__":
    app.run(main)
