"""What every pruning callback promises: tf.distribute, resume after interruption, logs, other Keras callbacks."""

import csv
import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training_problems import classes as data
from tests.training_problems import classifier
from tfprune.callbacks import DropNet, GroupLasso, NetworkSlimming
from tfprune.pruning.masking import weight_masks


def cnn():
    return classifier(seed=2)


def compiled(model, optimizer=None):
    model.compile(optimizer or keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.tensorflow_only
def test_mirrored_strategy_on_two_cpus():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = compiled(cnn(), keras.optimizers.Adam(0.01))
    x, y = data()
    bn = model.get_layer("bn1")
    bn.gamma.assign(np.r_[np.full(3, 1e-4), np.ones(7)].astype("float32"))
    dropnet = DropNet(x[:16], fraction=0.3, rewind=None)
    slimming = NetworkSlimming(l1=0.5)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[dropnet, slimming])
    plan = dropnet.plan()
    assert len(plan.keep["conv1"]) == 10 - 3 - 2 - 1
    variables = {v.path: v for v in model.weights}
    for path, keep in weight_masks(model, plan).items():
        assert np.all(variables[path].numpy()[~keep] == 0)
    assert np.count_nonzero(bn.gamma.numpy() == 0) >= 5  # the masked ones and the small ones
    assert len(history.history["dropnet_channels"]) == 3


def interrupted_at(epoch):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, e, logs=None):
            if e == epoch:
                raise RuntimeError("interrupted")
    return Interrupt()


def run(backup_dir, epochs, interrupt=None):
    x, y = data()
    model = compiled(cnn())
    dropnet = DropNet(x[:16], fraction=0.3, scope="global", seed=5, backup_dir=backup_dir)
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir), dropnet] + ([interrupt] if interrupt else [])
    model.fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0, callbacks=callbacks)
    return model, dropnet


def test_resume_after_interruption_gives_the_same_plan_and_weights(tmp_path):
    reference, reference_dropnet = run(str(tmp_path / "straight"), 4)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(str(tmp_path / "resumed"), 4, interrupt=interrupted_at(1))
    assert glob.glob(str(tmp_path / "resumed" / "tfprune_DropNet.npz"))
    resumed, resumed_dropnet = run(str(tmp_path / "resumed"), 4)  # a new model and a new callback
    assert [h["epoch"] for h in resumed_dropnet.history] == [1, 2, 3, 4]
    assert {n: list(k) for n, k in resumed_dropnet.plan().keep.items()} == {
        n: list(k) for n, k in reference_dropnet.plan().keep.items()}
    for a, b in zip(resumed.weights, reference.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    for path, value in reference_dropnet.snapshot.items():
        np.testing.assert_array_equal(resumed_dropnet.snapshot[path], value)
    assert not glob.glob(str(tmp_path / "resumed" / "tfprune_DropNet.npz"))  # deleted after a completed fit


def test_logs_reach_csv_logger_and_tensorboard(tmp_path):
    x, y = data()
    model = compiled(cnn())
    callbacks = [DropNet(x[:16], fraction=0.3), NetworkSlimming(1e-3), GroupLasso(1e-3),
                 keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
                 keras.callbacks.TensorBoard(str(tmp_path / "tb"))]
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_data=(x, y), callbacks=callbacks)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for key in ("dropnet_channels", "dropnet_macs", "slimming_penalty", "group_lasso_zero_groups"):
        assert float(rows[-1][key]) >= 0
    assert float(rows[-1]["dropnet_channels"]) < float(rows[0]["dropnet_channels"]) < 1
    tags = set()
    for path in glob.glob(str(tmp_path / "tb" / "train" / "*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    assert {"epoch_dropnet_channels", "epoch_slimming_penalty"} <= tags


def test_alongside_early_stopping_and_model_checkpoint(tmp_path):
    x, y = data()
    model = compiled(cnn())
    dropnet = DropNet(x[:16], fraction=0.3, rewind=None)
    path = str(tmp_path / "best.keras")
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_data=(x, y),
              callbacks=[dropnet, keras.callbacks.ModelCheckpoint(path),
                         keras.callbacks.EarlyStopping(monitor="val_loss", patience=5)])
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(x[:4]), model(x[:4]), rtol=1e-6)
    kernel = reloaded.get_layer("conv1").kernel.numpy()
    removed = sorted(set(range(10)) - set(dropnet.plan().keep["conv1"]))
    assert np.all(kernel[..., removed] == 0) and all(v.constraint is None for v in reloaded.weights)
