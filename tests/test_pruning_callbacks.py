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


class StopAt(keras.callbacks.Callback):
    """Stops `fit` at the second batch of the second epoch (after DropNet's first step): `how` is "exception" (raised
    in `on_train_batch_end`), "keyboard" (a KeyboardInterrupt in `on_train_batch_begin`) or "stop_training"."""

    def __init__(self, how):
        super().__init__()
        self.how, self.epoch = how, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.how == "keyboard" and (self.epoch, batch) == (1, 1):
            raise KeyboardInterrupt

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (1, 1):
            if self.how == "exception":
                raise RuntimeError("stopped in a callback")
            if self.how == "stop_training":
                self.model.stop_training = True


def batches_failing_at(epoch, batch, x, y, batch_size=16):
    """A generator of `(x, y)` batches that raises at `batch` of `epoch` (the data of a `fit` failing mid-epoch)."""
    steps = len(x) // batch_size
    for e in range(epoch + 1):
        for b in range(steps):
            if (e, b) == (epoch, batch):
                raise RuntimeError("stopped by the data")
            yield x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]


PRUNING_CALLBACKS = {
    "DropNet": lambda x: DropNet(x[:16], fraction=0.3, rewind=None, seed=0),  # masks (and constraints on TF)
    "NetworkSlimming": lambda x: NetworkSlimming(1e-2, proximal=False),  # a penalty: regularizers, a loss term
    "GroupLasso": lambda x: GroupLasso(1e-2, groups=("filter", "channel")),  # proximal steps: constraints
}


def user_state(model):
    """What the user's model holds that a pruning callback must leave as it found it."""
    own = [float(v.regularizer(v)) for v in model.weights if v.regularizer is not None]
    np.testing.assert_allclose([float(loss) for loss in model.losses], own, rtol=1e-6)  # no other loss term
    return ([(v.path, v.constraint, v.regularizer) for v in model.weights], len(model.variables),
            "train_step" in vars(model))


@pytest.mark.parametrize("how", ["data", "exception", "keyboard", "stop_training"])
@pytest.mark.parametrize("name", sorted(PRUNING_CALLBACKS))
def test_every_exit_from_fit_leaves_the_model_as_it_was(name, how):
    x, y = data()
    model, twin = compiled(cnn()), compiled(cnn())
    model.get_layer("conv1").kernel.constraint = keras.constraints.MaxNorm(3.0)  # the user's own, kept
    model.get_layer("conv2").kernel.regularizer = keras.regularizers.L2(1e-3)
    before = user_state(model)
    callback = PRUNING_CALLBACKS[name](x)
    if how == "data":
        with pytest.raises(Exception, match="stopped by the data"):
            model.fit(batches_failing_at(1, 1, x, y), epochs=3, steps_per_epoch=3, shuffle=False, verbose=0,
                      callbacks=[callback])
    elif how == "stop_training":
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback, StopAt(how)])
    else:
        with pytest.raises(KeyboardInterrupt if how == "keyboard" else RuntimeError):
            model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback, StopAt(how)])
    assert user_state(model) == before
    steps = len(getattr(callback, "history", ()))
    if name == "DropNet":
        assert steps >= 1  # stopped after a pruning step

    # a plain fit after it trains as the model alone would: no update or penalty of the callback left in its step
    twin.get_layer("conv1").kernel.constraint = model.get_layer("conv1").kernel.constraint
    twin.get_layer("conv2").kernel.regularizer = model.get_layer("conv2").kernel.regularizer
    twin.set_weights(model.get_weights())
    for m in (model, twin):
        m.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(model.weights, twin.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)

    # and the same callback goes on in a new fit
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    assert user_state(model) == before
    if name == "DropNet":
        assert len(callback.history) == steps + 1
        variables = {v.path: v for v in model.weights}
        for path, keep in weight_masks(model, callback.plan()).items():
            assert np.all(variables[path].numpy()[~keep] == 0), path


def test_train_on_batch_after_a_stopped_fit_is_the_models_own_step():
    x, y = data()
    model, twin = compiled(cnn()), compiled(cnn())
    with pytest.raises(RuntimeError):
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[NetworkSlimming(1.0, proximal=False),
                                                                       StopAt("exception")])
    twin.set_weights(model.get_weights())
    losses = [m.train_on_batch(x[:16], y[:16]) for m in (model, twin)]  # no penalty in either
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(model.weights, twin.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
