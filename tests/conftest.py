import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices, for the tf.distribute.MirroredStrategy tests; must happen before TensorFlow starts.
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def pytest_collection_modifyitems(config, items):
    """Tests marked `tensorflow_only` (tf.distribute, the TF profiler, ...) are skipped under other backends."""
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow-only; this run uses the Keras '{keras.backend.backend()}' backend")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)
