"""tfprune.fine_tune: plain fine-tuning and distillation from the unpruned model through keras.distillation."""

import math
import warnings

import keras
import numpy as np
import pytest

import tfprune


def task(n=256, seed=0):
    """A learnable toy problem: the class is the quadrant holding the brightest pixel."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 12, 12, 1)).astype("float32") * 0.2
    y = rng.integers(0, 4, n)
    for i, label in enumerate(y):
        x[i, 6 * (label // 2) + 2, 6 * (label % 2) + 2, 0] = 1.0
    return x, y


def teacher_model():
    keras.utils.set_random_seed(0)
    model = tfprune.models.small_vgg(input_shape=(12, 12, 1), classes=4, widths=(8, 16), convs_per_stage=1, dense=16)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*task(), epochs=3, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def teacher():
    return teacher_model()


def test_distillation_trains_the_student_in_place_and_leaves_the_teacher_alone(teacher):
    x, y = task(seed=1)
    slim = tfprune.prune(teacher, 0.5)
    shapes = [w.shape for w in slim.get_weights()]
    before = [w.copy() for w in slim.get_weights()]
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    slim.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = tfprune.fine_tune(slim, (x, y), epochs=4, teacher=teacher, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert min(history.history["distillation_loss"]) > 1e-3  # the teacher's softened outputs are being fitted
    assert [w.shape for w in slim.get_weights()] == shapes
    assert any(not np.array_equal(a, b) for a, b in zip(before, slim.get_weights(), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(teacher_weights, teacher.get_weights(), strict=True))
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


class _WeightsAtStart(keras.callbacks.Callback):
    def __init__(self, model):
        super().__init__()
        self.student = model

    def on_train_begin(self, logs=None):
        self.weights = [w.copy() for w in self.student.get_weights()]


def test_an_interrupted_distillation_resumes_with_backup_and_restore(teacher, tmp_path):
    x, y = task(seed=4)
    slim = tfprune.prune(teacher, 0.5)
    original = [w.copy() for w in slim.get_weights()]
    settings = dict(teacher=teacher, loss="sparse_categorical_crossentropy", batch_size=32, verbose=0)
    with pytest.raises(KeyboardInterrupt):  # stopped after its first epoch, whose backup is written
        tfprune.fine_tune(slim, (x, y), epochs=3, optimizer=keras.optimizers.SGD(0.05),
                          callbacks=[keras.callbacks.BackupAndRestore(tmp_path), _Interrupt()], **settings)
    interrupted = slim.get_weights()
    assert teacher.trainable
    fresh = tfprune.prune(teacher, 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(original, fresh.get_weights(), strict=True))
    probe = _WeightsAtStart(fresh)
    history = tfprune.fine_tune(fresh, (x, y), epochs=3, optimizer=keras.optimizers.SGD(0.05),
                                callbacks=[keras.callbacks.BackupAndRestore(tmp_path), probe], **settings)
    assert len(history.history["loss"]) == 2  # the two epochs left
    assert all(np.array_equal(a, b) for a, b in zip(interrupted, probe.weights, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(original, probe.weights, strict=True))


def test_model_checkpoints_save_the_student_not_the_distiller(teacher, tmp_path):
    x, y = task(seed=5)
    slim = tfprune.prune(teacher, 0.5)
    slim.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model_file, weights_file = tmp_path / "slim.keras", tmp_path / "slim.weights.h5"

    class Checkpoint(keras.callbacks.ModelCheckpoint):  # a subclass with its own set_model keeps it
        def set_model(self, model):
            self.given = model
            super().set_model(model)

    checkpoints = [keras.callbacks.ModelCheckpoint(model_file), Checkpoint(weights_file, save_weights_only=True)]
    own_optimizer = slim.optimizer
    tfprune.fine_tune(slim, (x, y), epochs=2, teacher=teacher, batch_size=32, callbacks=checkpoints, verbose=0)
    assert slim.optimizer is own_optimizer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = keras.saving.load_model(model_file)
    assert not [w for w in caught if "optimizer" in str(w.message)]  # e.g. "Skipping variable loading for optimizer"
    assert int(saved.optimizer.iterations) == 2 * math.ceil(len(x) / 32)  # the state of the optimizer that trained it
    assert [layer.name for layer in saved.layers] == [layer.name for layer in slim.layers]
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), slim.get_weights(), strict=True))
    twin = tfprune.prune(teacher, 0.5)
    twin.load_weights(weights_file)
    assert all(np.array_equal(a, b) for a, b in zip(twin.get_weights(), slim.get_weights(), strict=True))
    assert checkpoints[1].given is slim
    assert all("set_model" not in vars(c) for c in checkpoints)  # the caller's callbacks are left as they were


def test_softmax_models_are_distilled_through_log_probabilities_exactly():
    x, y = task(seed=2)
    keras.utils.set_random_seed(0)  # the initial weights, and with them the size of the head's logits
    inputs = keras.Input((12, 12, 1))  # no BatchNormalization: training and inference compute the same
    hidden = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(hidden))
    teacher = keras.Model(inputs, outputs)
    twin = tfprune.rebuild(teacher, tfprune.Plan(keep={}, widths={}))  # the same function as the teacher
    frozen = dict(loss="sparse_categorical_crossentropy", batch_size=256, verbose=0)
    history = tfprune.fine_tune(twin, (x, y), teacher=teacher, optimizer=keras.optimizers.SGD(0.0), **frozen)
    assert history.history["distillation_loss"][0] == pytest.approx(0.0, abs=1e-6)
    own = keras.losses.SparseCategoricalCrossentropy()(y, teacher.predict(x, verbose=0))
    assert history.history["student_loss"][0] == pytest.approx(float(own), rel=1e-4)  # CE on log-probabilities
    head = twin.layers[-1]  # a different function: the loss sees it
    head.kernel.assign(np.random.default_rng(0).normal(0, 30, head.kernel.shape).astype("float32"))
    assert np.abs(twin.predict(x, verbose=0) - teacher.predict(x, verbose=0)).max() > 0.1
    history = tfprune.fine_tune(twin, (x, y), teacher=teacher, optimizer=keras.optimizers.SGD(0.0), **frozen)
    assert history.history["distillation_loss"][0] > 1e-2


def test_without_a_teacher_it_is_fit_with_the_compile_settings():
    x, y = task(seed=3)
    model = tfprune.models.small_vgg(input_shape=(12, 12, 1), classes=4, widths=(8, 16), convs_per_stage=1, dense=16)
    history = tfprune.fine_tune(model, (x, y), epochs=3, optimizer=keras.optimizers.Adam(0.01),
                                loss="sparse_categorical_crossentropy", metrics=["accuracy"], verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_bad_input_is_refused_precisely(teacher):
    x, y = task(n=16)
    slim = tfprune.prune(teacher, 0.5)
    with pytest.raises(ValueError, match="is not compiled and no loss was given"):
        tfprune.fine_tune(slim, (x, y), teacher=teacher)
    slim.compile("adam", "sparse_categorical_crossentropy")
    other = tfprune.models.small_vgg(input_shape=(12, 12, 1), classes=3, widths=(8, 16), convs_per_stage=1)
    with pytest.raises(ValueError, match=r"teacher's output shape \(3,\) differs from the student's \(4,\)"):
        tfprune.fine_tune(slim, (x, y), teacher=other)
    inputs = keras.Input((12, 12, 1))
    logits = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(ValueError, match="Only the student ends in a softmax"):
        tfprune.fine_tune(slim, (x, y), teacher=logits)
    with pytest.raises(ValueError, match="needs a cross-entropy loss"):
        tfprune.fine_tune(slim, (x, y), teacher=teacher, loss="mse")
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        tfprune.fine_tune(slim, (x, y), teacher=teacher, temperature=0)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        tfprune.fine_tune(slim, (x, y), epochs=0)
    assert teacher.trainable
