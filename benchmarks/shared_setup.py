"""The absl flags and the set-up the benchmarks share, defined once: the reference CNNs, the Fashion-MNIST training
settings, MACs targets and seeds, timing runs, where results are written, and the machine's load.

Every benchmark is a script (`python benchmarks/NAME.py`), so this folder is on `sys.path` and the scripts import
this module by name. A benchmark calls the `define_*` functions it needs at import time, with its own defaults, and
reads the values from `absl.flags.FLAGS` as usual. Keras and tfprune are imported only by the functions that use
them: `tfmot_twin.py` runs under TF_USE_LEGACY_KERAS=1 and must not import Keras 3 on the way.

Example:

    from absl import app, flags

    import shared_setup

    FLAGS = flags.FLAGS
    shared_setup.define_fashion_mnist(train_size=8000, test_size=2000)
    shared_setup.define_out("my_benchmark.md", "Markdown output.")

    def main(argv):
        shared_setup.write_text(FLAGS.out, f"{FLAGS.train_size} training images\\n")

    if __name__ == "__main__":
        app.run(main)
"""

import json
import os
import time

from absl import flags

flags.disclaim_key_flags()  # the flags the define_* functions make belong to the benchmark calling them (its --help)

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCHMARKS_DIR, "results")
CACHE_DIR = os.path.join(os.path.dirname(BENCHMARKS_DIR), ".bench_cache")  # not committed

# The reference CNNs of the Fashion-MNIST benchmarks, by short name; their tfprune.models names are accepted too.
REFERENCE_CNNS = {"vgg": "small_vgg", "resnet": "small_resnet"}
LOSS = "sparse_categorical_crossentropy"  # of every Fashion-MNIST classifier here (integer labels, softmax output)


# ---- flags ----------------------------------------------------------------------------------------------------

def define_models(default, help="Reference CNNs: vgg (tfprune.models.small_vgg), resnet (small_resnet)."):
    """`--models`: reference CNNs by short name ("vgg", "resnet") or tfprune.models name ("small_vgg", ...)."""
    flags.DEFINE_list("models", list(default), help)
    known = sorted(REFERENCE_CNNS) + sorted(REFERENCE_CNNS.values())
    flags.register_validator("models", lambda names: all(name in known for name in names),
                             message=f"--models takes reference CNNs from {', '.join(known)}.")


def define_fashion_mnist(train_size, test_size=None, train_help="Training images (of 60,000).",
                         test_help="Test images (of 10,000)."):
    """`--train_size` (and `--test_size` if given a default): how many Fashion-MNIST images a benchmark uses."""
    flags.DEFINE_integer("train_size", train_size, train_help, lower_bound=1)
    if test_size is not None:
        flags.DEFINE_integer("test_size", test_size, test_help, lower_bound=1)


def define_training(batch_size=None, learning_rate=None, epochs=None, finetune_epochs=None,
                    learning_rate_help="SGD learning rate (momentum 0.9).", epochs_help="Training epochs.",
                    finetune_help="F: epochs of fine-tuning."):
    """`--batch_size`, `--learning_rate`, `--epochs` and `--finetune_epochs`: those given a default."""
    if batch_size is not None:
        flags.DEFINE_integer("batch_size", batch_size, "Batch size.", lower_bound=1)
    if learning_rate is not None:
        flags.DEFINE_float("learning_rate", learning_rate, learning_rate_help, lower_bound=0)
    if epochs is not None:
        flags.DEFINE_integer("epochs", epochs, epochs_help, lower_bound=0)
    if finetune_epochs is not None:
        flags.DEFINE_integer("finetune_epochs", finetune_epochs, finetune_help, lower_bound=0)


def define_targets(default=("0.5", "0.25"), help="MACs ratios (slim / original) to reach."):
    """`--targets`: a list of MACs targets, each a number in (0, 1]."""
    flags.DEFINE_list("targets", list(default), help)
    flags.register_validator("targets", lambda values: all(_is_ratio(v) for v in values),
                             message="--targets takes numbers in (0, 1], e.g. --targets=0.5,0.25.")


def define_seeds(default=("0", "1", "2"), help="Seeds of the runs."):
    """`--seeds`: a list of integer seeds."""
    flags.DEFINE_list("seeds", list(default), help)
    flags.register_validator("seeds", lambda values: all(v.strip().isdigit() for v in values),
                             message="--seeds takes integers >= 0, e.g. --seeds=0,1,2.")


def define_timing(runs, runs_help="Timed calls per model.", warmup=3):
    """`--runs` and `--warmup` of a latency measurement."""
    flags.DEFINE_integer("runs", runs, runs_help, lower_bound=1)
    flags.DEFINE_integer("warmup", warmup, "Untimed calls before them.", lower_bound=0)


def define_input_size(default=224):
    """`--input_size` of a keras.applications model."""
    flags.DEFINE_integer("input_size", default, "Height and width of the input.", lower_bound=32)


def define_out(name, help):
    """`--out`, defaulting to `benchmarks/results/<name>` (a file, or a path prefix for several files)."""
    flags.DEFINE_string("out", results_path(name), help)


def apply_smoke(settings, smoke):
    """With `--smoke`, set each flag of `settings` ({flag name: value}) that the command line did not give; then
    make the folder of `--out`."""
    if smoke:
        for name, value in settings.items():
            if not flags.FLAGS[name].present:
                flags.FLAGS[name].value = value
    os.makedirs(os.path.dirname(os.path.abspath(flags.FLAGS.out)), exist_ok=True)


def define_work_dir(name, help):
    """`--work_dir`, defaulting to `.bench_cache/<name>` at the top of the repository (not committed)."""
    flags.DEFINE_string("work_dir", os.path.join(CACHE_DIR, name), help)


def _is_ratio(value):
    try:
        return 0 < float(value) <= 1
    except ValueError:
        return False


# ---- set-up -----------------------------------------------------------------------------------------------------

def results_path(name):
    """`benchmarks/results/<name>`."""
    return os.path.join(RESULTS_DIR, name)


def write_text(path, text):
    """Write `text` to `path` atomically, making its folder first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def reference_cnn_name(name):
    """The tfprune.models name of a reference CNN named by `define_models` ("vgg" or "small_vgg": "small_vgg")."""
    return REFERENCE_CNNS.get(name, name)


def reference_cnn(name):
    """The tfprune.models constructor of a reference CNN named by `define_models` ("vgg" or "small_vgg", ...)."""
    import tfprune

    return getattr(tfprune.models, reference_cnn_name(name))


def sgd_compiled(model, learning_rate):
    """`model` compiled as the Fashion-MNIST benchmarks train it: SGD with momentum 0.9, sparse categorical
    cross-entropy, accuracy."""
    import keras

    model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def augmented(x, y, seed, batch_size):
    """Shuffled, augmented (pad 2 + random crop + horizontal flip) batches of (x, y), the same for the same seed.

    The crops and flips are stateless, drawn from a per-image key of a seeded `Dataset.random` stream (new each
    epoch), so that the parallel map gives the same batches in every run; stateful random ops there do not."""
    import tensorflow as tf

    def augment(pair, key):
        image, label = pair
        keys = tf.random.experimental.stateless_split(tf.stack([key, seed]), 2)
        image = tf.image.resize_with_crop_or_pad(image, x.shape[1] + 4, x.shape[2] + 4)
        image = tf.image.stateless_random_crop(image, x.shape[1:], keys[0])
        return tf.image.stateless_random_flip_left_right(image, keys[1]), label

    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    data = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed), keys)
    return data.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def fit_augmented(model, train_data, epochs, optimizer, seed, batch_size, callbacks=(), teacher=None, verbose=0):
    """Train `model` in place on `augmented` batches of `train_data` (x, y) with `optimizer` and sparse categorical
    cross-entropy, distilling from `teacher` (`tfprune.fine_tune`) if one is given; return it."""
    import tfprune

    data = augmented(*train_data, seed, batch_size)
    if teacher is not None:
        tfprune.fine_tune(model, data, epochs, teacher=teacher, optimizer=optimizer, loss=LOSS, metrics=["accuracy"],
                          callbacks=list(callbacks), verbose=verbose)
    else:
        model.compile(optimizer, LOSS, metrics=["accuracy"])
        if epochs:
            model.fit(data, epochs=epochs, callbacks=list(callbacks), verbose=verbose)
    return model


def accuracy(model, data):
    """The accuracy of `model` on `data` (x, y) (it is compiled again, with the loss and metric only)."""
    model.compile(loss=LOSS, metrics=["accuracy"])
    return float(model.evaluate(*data, batch_size=512, verbose=0, return_dict=True)["accuracy"])


def epoch_timer():
    """A Keras callback to put last in `callbacks`: its `seconds` lists the time of each epoch, from the epoch's start
    to the end of every callback's `on_epoch_end`."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def load_average():
    """The machine's load average over 1, 5 and 15 minutes, as "0.52 0.58 0.59" (timings are only as good as the
    machine is quiet)."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


# ---- resumable runs: JSON files written atomically, one row per finished run in a .jsonl ----------------------

def read_json(path, default=None):
    """The JSON value in `path`; `default` if given and the file does not exist."""
    if default is not None and not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    """Write `value` as JSON to `path` atomically (a run killed mid-write leaves the old file)."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def write_weights(path, model):
    """`model`'s weights as JSON `{variable path: nested lists}` (a snapshot such as θ0)."""
    import numpy as np

    write_json(path, {v.path: np.asarray(v.numpy()).tolist() for v in model.weights})


def read_rows(paths, key):
    """The rows of the .jsonl files `paths` (those that exist), one per `key(row)`: a later row replaces an earlier."""
    rows = {}
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        rows[key(row)] = row
    return list(rows.values())


def append_row(rows, row, path):
    """Add a finished run's `row` to `rows` and as one line to the .jsonl file `path`."""
    rows.append(row)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def progress_callback(prefix, rewind_epoch=None):
    """A Keras callback that keeps on disk, across interrupted runs, the seconds (wall-clock and CPU) of the finished
    epochs in `<prefix>_progress.json` and, given `rewind_epoch` k, θk (the weights after epoch k) in
    `<prefix>_thetak.json`, beside `keras.callbacks.BackupAndRestore`, which resumes the training itself."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            progress = read_json(prefix + "_progress.json", {"seconds": 0.0, "cpu_seconds": 0.0, "sittings": 1})
            progress["seconds"] += time.perf_counter() - self.start
            progress["cpu_seconds"] += time.process_time() - self.cpu
            if epoch + 1 == rewind_epoch:
                write_weights(prefix + "_thetak.json", self.model)
            write_json(prefix + "_progress.json", progress)

        def on_train_begin(self, logs=None):
            path = prefix + "_progress.json"
            if os.path.exists(path):  # a resumed run
                write_json(path, dict(read_json(path), sittings=read_json(path)["sittings"] + 1))

    return Progress()
