"""Fashion-MNIST from the local copy that Debian's `dataset-fashion-mnist` package installs (no download)."""

import os
import pathlib

import keras
import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
          "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")


def fashion_mnist(directory=None, train_size=None, test_size=None, seed=0):
    """Fashion-MNIST as float32 images in [0, 1] of shape (N, 28, 28, 1) and int labels, read offline.

    The four `*.gz` files of `directory` (default `$TFPRUNE_FASHION_MNIST` or the Debian copy in
    /usr/share/datasets/fashion-mnist) are put into the Keras dataset cache and read by the standard
    `keras.datasets.fashion_mnist.load_data()`, which then finds them and downloads nothing.

    Args:
        directory: folder holding the four files under their usual names.
        train_size, test_size: keep a random subset of this many examples (a stratified-enough shuffle with
            `seed`); None keeps all (60,000 and 10,000).
        seed: seed of the subset.

    Returns:
        `((x_train, y_train), (x_test, y_test))`.

    Raises:
        FileNotFoundError: the files are missing; the message says how to install them.
    """
    directory = pathlib.Path(directory or os.environ.get("TFPRUNE_FASHION_MNIST", FASHION_MNIST_DIR))
    missing = [name for name in _FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {directory}. Install them with "
            "`apt-get install dataset-fashion-mnist` (Debian) or point TFPRUNE_FASHION_MNIST at a folder "
            "holding the four *.gz files.")
    for name in _FILES:  # a file:// origin: get_file copies the local file into the cache once
        keras.utils.get_file(name, origin=(directory / name).resolve().as_uri(),
                             cache_subdir=os.path.join("datasets", "fashion-mnist"))
    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    rng = np.random.default_rng(seed)

    def prepare(x, y, size):
        if size is not None:
            if not 0 < size <= len(x):
                raise ValueError(f"subset size must be in [1, {len(x)}]; got {size}.")
            chosen = np.sort(rng.permutation(len(x))[:size])
            x, y = x[chosen], y[chosen]
        return (x[..., None] / np.float32(255)).astype("float32"), y.astype("int64")

    return prepare(x_train, y_train, train_size), prepare(x_test, y_test, test_size)
