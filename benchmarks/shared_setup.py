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

import os
import time

from absl import flags

flags.disclaim_key_flags()  # the flags the define_* functions make belong to the benchmark calling them (its --help)

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCHMARKS_DIR, "results")
CACHE_DIR = os.path.join(os.path.dirname(BENCHMARKS_DIR), ".bench_cache")  # not committed

# The reference CNNs of the Fashion-MNIST benchmarks, by short name; their tfprune.models names are accepted too.
REFERENCE_CNNS = {"vgg": "small_vgg", "resnet": "small_resnet"}


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
    """Write `text` to `path`, making its folder first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


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
