"""fine_tune(): train a slim model after pruning, optionally distilling from the unpruned model (Keras' Distiller)."""

import numbers

import keras

_CROSS_ENTROPIES = {"sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
                    "categorical_crossentropy": keras.losses.CategoricalCrossentropy}


def fine_tune(model, data, epochs=1, teacher=None, *, temperature=3.0, student_loss_weight=0.5, optimizer=None,
              loss=None, metrics=None, batch_size=None, validation_data=None, callbacks=None, verbose="auto"):
    """Fine-tune a pruned model, with knowledge distillation from a teacher if one is given.

    Without a teacher this is `model.fit`. With one (typically the unpruned model), the student is trained by
    `keras.distillation.Distiller` on `student_loss_weight` × its own loss + (1 − `student_loss_weight`) × the
    `LogitsDistillation` loss (KL divergence between the teacher's and the student's outputs softened by
    `temperature`). Models whose output is a softmax are distilled through their log-probabilities, which are
    logits up to a constant, so the tempered distributions are exact; their own loss (a cross-entropy) is then
    taken on those log-probabilities too, which gives the same value.

    The student's weights are trained in place; the teacher is not modified (the Distiller freezes it, and its
    `trainable` flag is restored afterwards).

    Args:
        model: the slim `keras.Model` to train, compiled (its loss, a fresh optimizer of the same settings and its
            metrics are used) or given `loss` (and `optimizer`, `metrics`).
        data: `(x, y)` arrays or a dataset of `(x, y)` batches.
        epochs: training epochs.
        teacher: a trained `keras.Model` with the same inputs and output shape, or None.
        temperature: the distillation temperature (> 0).
        student_loss_weight: weight of the student's own loss, in [0, 1]; the distillation loss gets the rest.
        optimizer, loss, metrics: compile settings overriding the model's own (`loss` is required for an
            uncompiled model).
        batch_size, validation_data, callbacks, verbose: as in `model.fit`. With a teacher, the callbacks see the
            `Distiller` (its optimizer, its logs), except `keras.callbacks.ModelCheckpoint`s: they save `model`, the
            student, not the Distiller with the teacher inside; a whole-model checkpoint holds the state of the
            optimizer that trains it (`model` gets its own optimizer back when `fine_tune` returns).

    Returns:
        The `keras.callbacks.History` of the training.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> x, y = np.random.rand(64, 28, 28, 1), np.random.randint(0, 10, 64)
    >>> teacher = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    >>> slim = tfprune.prune(teacher, 0.5)
    >>> slim.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> history = tfprune.fine_tune(slim, (x, y), epochs=1, teacher=teacher, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'distillation_loss', 'loss', 'student_loss', 'total_loss']
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise TypeError(f"model must be a built keras.Model; got {type(model).__name__}.")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1; got {epochs!r}.")
    settings = _compile_settings(model, optimizer, loss, metrics)
    x, y = (data[0], data[1]) if isinstance(data, tuple | list) and len(data) == 2 else (data, None)
    fit = dict(epochs=int(epochs), batch_size=batch_size, validation_data=validation_data, callbacks=callbacks,
               verbose=verbose)
    if teacher is None:
        model.compile(**settings)
        return model.fit(x, y, **fit)
    student_view, teacher_view, settings = _distillation_views(model, teacher, settings)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0; got {temperature!r}.")
    if isinstance(student_loss_weight, bool) or not isinstance(student_loss_weight, numbers.Real) or \
            not 0 <= student_loss_weight <= 1:
        raise ValueError(f"student_loss_weight must be a number in [0, 1]; got {student_loss_weight!r}.")
    trainable, own_optimizer = teacher.trainable, getattr(model, "optimizer", None)
    checkpoints = [c for c in callbacks if isinstance(c, keras.callbacks.ModelCheckpoint)] \
        if isinstance(callbacks, list | tuple) else []  # not in a keras.callbacks.CallbackList, which fit takes as is
    for checkpoint in checkpoints:  # fit hands every callback the Distiller; these get the student instead
        checkpoint.set_model = lambda _, checkpoint=checkpoint: type(checkpoint).set_model(checkpoint, model)
    try:
        distiller = keras.distillation.Distiller(
            teacher=teacher_view, student=student_view,
            # A KLDivergence instance, not the default "kl_divergence" string: Keras 3.15 resolves the string to a
            # plain function, which LogitsDistillation then applies to the raw logits (clipped to [1e-7, 1]) instead
            # of the softened probabilities; on log-probabilities, all negative, that loss is about 0.
            distillation_losses=keras.distillation.LogitsDistillation(temperature=float(temperature),
                                                                      loss=keras.losses.KLDivergence()),
            student_loss_weight=float(student_loss_weight))
        # Its weights are the two built models', so it is built: `fit` callbacks that read or restore weights when
        # training begins (keras.callbacks.BackupAndRestore) refuse an unbuilt model.
        distiller.build(keras.tree.map_structure(lambda t: t.shape, student_view.input))
        distiller.compile(**settings)
        if own_optimizer is not None:  # a checkpoint of the student saves the optimizer that trains it
            model.optimizer = distiller.optimizer
        return distiller.fit(x, y, **fit)
    finally:
        teacher.trainable = trainable
        if own_optimizer is not None:
            model.optimizer = own_optimizer
        for checkpoint in checkpoints:  # pop: the same callback may be in the list twice
            vars(checkpoint).pop("set_model", None)


def _compile_settings(model, optimizer, loss, metrics):
    """`{optimizer, loss, metrics}` for compiling: the arguments given, the rest from the model's compile config."""
    if loss is None and not getattr(model, "compiled", False):
        raise ValueError(f"Model '{model.name}' is not compiled and no loss was given: compile it (loss, optimizer, "
                         "metrics) or pass loss=... (and optimizer=..., metrics=...).")
    config = model.get_compile_config() if getattr(model, "compiled", False) else {}
    own = {}
    if config:
        own = {key: keras.saving.deserialize_keras_object(config[key]) if config.get(key) is not None else None
               for key in ("optimizer", "loss", "metrics")}
    return {"optimizer": optimizer if optimizer is not None else own.get("optimizer") or "adam",
            "loss": loss if loss is not None else own["loss"],
            "metrics": metrics if metrics is not None else own.get("metrics")}


def _distillation_views(student, teacher, settings):
    """The models the Distiller sees (logits) and the compile settings that go with them."""
    if not isinstance(teacher, keras.Model) or not teacher.built:
        raise TypeError(f"teacher must be a built keras.Model; got {type(teacher).__name__}.")
    if len(student.outputs) != 1 or len(teacher.outputs) != 1:
        raise ValueError("Distillation needs a student and a teacher with one output each; got "
                         f"{len(student.outputs)} and {len(teacher.outputs)}.")
    student_shape, teacher_shape = tuple(student.outputs[0].shape[1:]), tuple(teacher.outputs[0].shape[1:])
    if student_shape != teacher_shape:
        raise ValueError(f"The teacher's output shape {teacher_shape} differs from the student's {student_shape}: "
                         "distillation compares the two outputs class by class.")
    softmax = [_ends_in_softmax(m) for m in (student, teacher)]
    if softmax[0] != softmax[1]:
        which = "student" if softmax[0] else "teacher"
        raise ValueError(f"Only the {which} ends in a softmax: give both models logits, or both probabilities.")
    if not softmax[0]:
        return student, teacher, settings
    loss = settings["loss"]
    name = loss if isinstance(loss, str) else getattr(loss, "name", None)
    from_logits = loss.get_config().get("from_logits") if hasattr(loss, "get_config") else False
    if name not in _CROSS_ENTROPIES or from_logits:
        raise ValueError(f"The models end in a softmax and are distilled through their log-probabilities, which needs "
                         f"a cross-entropy loss ({sorted(_CROSS_ENTROPIES)}); got {loss!r}.")
    settings = {**settings, "loss": _CROSS_ENTROPIES[name](from_logits=True)}
    return _log_probabilities(student), _log_probabilities(teacher), settings


def _ends_in_softmax(model):
    layer = model.outputs[0]._keras_history.operation
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Softmax) or getattr(activation, "__name__", None) == "softmax"


def _log_probabilities(model):
    """A model sharing `model`'s layers whose output is the log of its softmax output (logits up to a constant)."""
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), model.input)
    probabilities = model(inputs)
    return keras.Model(inputs, keras.ops.log(keras.ops.maximum(probabilities, 1e-7)), name=f"{model.name}_logits")
