"""What runs on every Keras backend, and the errors of what does not (run under both TensorFlow and JAX)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tfprune
from tests.training_problems import classes as data
from tests.training_problems import classifier
from tfprune.backends import BackendError, require_backend
from tfprune.callbacks import DropNet, GroupLasso, NetworkSlimming

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()


def test_a_backend_bound_function_names_the_backend_it_needs_and_the_one_running():
    other = "jax" if BACKEND == "tensorflow" else "tensorflow"
    with pytest.raises(BackendError, match=f"needs the Keras '{other}' backend; this process runs '{BACKEND}'"):
        require_backend(other, "this step")


@pytest.mark.skipif(BACKEND == "tensorflow", reason="export and latency are TensorFlow-bound: they work here")
def test_export_and_latency_refuse_other_backends_and_say_how_to_go_on(tmp_path):
    model = classifier()
    for fmt in ("tflite", "saved_model"):
        with pytest.raises(BackendError, match=rf"tfprune.export\(format='{fmt}'\) needs the Keras 'tensorflow'.*"
                                               r"KERAS_BACKEND=tensorflow"):
            tfprune.export(model, tmp_path / f"m.{fmt}", format=fmt)
    with pytest.raises(BackendError, match="tfprune.benchmark needs the Keras 'tensorflow' backend"):
        tfprune.benchmark([model], engines=("tensorflow",), runs=1, warmup=0)
    result = tfprune.export(model, str(tmp_path / "m.keras"), format="keras")  # .keras works everywhere
    assert result.max_abs_difference < 1e-5


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution layouts are exercised on JAX")
@pytest.mark.parametrize("make", [lambda x: DropNet(x[:8], rewind=None), lambda x: NetworkSlimming(l1=0.01),
                                  lambda x: GroupLasso(strength=0.01)], ids=["DropNet", "NetworkSlimming",
                                                                            "GroupLasso"])
def test_callbacks_refuse_a_distribution_that_shards_weights(make):
    import jax

    devices = jax.devices()
    mesh = keras.distribution.DeviceMesh((len(devices),), ["model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["conv1/kernel"] = (None, None, None, "model")
    distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="model")
    x, y = data(16)
    with distribution.scope():
        model = classifier()
        model.compile("sgd", "sparse_categorical_crossentropy")
        callback = make(x)
        with pytest.raises(ValueError, match=r"runs under no keras.distribution or under "
                                             r"keras.distribution.DataParallel.*this fit runs under ModelParallel"):
            model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_masks_and_proximal_steps_give_exact_zeros_inside_the_compiled_step(optimizer):
    x, y = data()
    model = classifier()
    opt = {"sgd": keras.optimizers.SGD(0.05), "momentum": keras.optimizers.SGD(0.05, momentum=0.9),
           "adam": keras.optimizers.Adam(0.01)}[optimizer]
    model.compile(opt, "sparse_categorical_crossentropy")
    dropnet = DropNet(x[:16], fraction=0.3, rewind=None, seed=0)
    slimming = NetworkSlimming(l1=2.0)  # strong: the proximal step drives BN scales to exactly zero
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[dropnet, slimming])
    kernel = model.get_layer("conv1").kernel.numpy()
    removed = sorted(set(range(10)) - set(dropnet.plan().keep["conv1"]))
    assert len(removed) >= 3 and (kernel[..., removed] == 0).all()
    assert (model.get_layer("bn1").gamma.numpy() == 0).sum() >= 1


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX-to-TensorFlow hand-over")
def test_a_model_pruned_on_jax_loads_and_exports_to_tflite_in_a_tensorflow_process(tmp_path):
    x, y = data()
    model = classifier()
    model.compile("adam", "sparse_categorical_crossentropy")
    dropnet = DropNet(x[:16], fraction=0.3, rewind=None, seed=0)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[dropnet])
    slim = dropnet.slim_model()
    assert slim.get_layer("conv1").filters < 10
    slim.save(tmp_path / "slim.keras")
    np.savez(tmp_path / "check.npz", x=x[:8], y=keras.ops.convert_to_numpy(slim(x[:8])))
    script = f"""
import json, keras, numpy as np, tfprune
assert keras.backend.backend() == "tensorflow"
check = np.load({str(tmp_path / "check.npz")!r})
model = keras.models.load_model({str(tmp_path / "slim.keras")!r})
keras_difference = float(np.abs(model.predict(check["x"], verbose=0) - check["y"]).max())
result = tfprune.export(model, {str(tmp_path / "slim.tflite")!r}, format="tflite", representative_data=check["x"])
print(json.dumps({{"keras": keras_difference, "tflite": result.max_abs_difference,
                   "filters": model.get_layer("conv1").filters}}))
"""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["filters"] == slim.get_layer("conv1").filters
    assert report["keras"] < 1e-5 and report["tflite"] < 1e-4
    assert (tmp_path / "slim.tflite").stat().st_size > 0
