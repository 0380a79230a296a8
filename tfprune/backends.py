"""What differs between Keras backends (TensorFlow, JAX), in one place.

The rest of tfprune is written with `keras.ops`, `keras.Variable` and Keras's own train step, and calls this module
for the few things Keras has no public backend-neutral name for:

* `compile_function`: a compiled, repeatedly callable function that reads a model's weights (`tf.function` on
  TensorFlow; `jax.jit` on JAX, with the weights passed in through a `keras.StatelessScope` so that weights changed
  in place between calls are seen without retracing);
* `gradients_at`: gradients of a loss with respect to tensors computed inside a walk (`tf.GradientTape` on
  TensorFlow; on JAX, gradients with respect to zero perturbations added to those tensors);
* `variable_view`: a weight as a read-only NumPy array without a copy (a view of the CPU buffer);
* multi-process helpers for `keras.distribution` on JAX: `process_index`, `host_array` (a variable's value on this
  process, also when the array spans several processes), `same_on_all_processes` (fail, naming what differs,
  if processes disagree bit for bit), `local_computation` (a scope without the global distribution, for
  per-process passes);
* `require_backend`: the error a TensorFlow-bound function (SavedModel/LiteRT export, the TensorFlow latency
  engine) raises under another backend.

Example:

>>> import keras, numpy as np
>>> v = keras.Variable(np.ones(3, "float32"))
>>> square_sum = compile_function(lambda x: keras.ops.sum(keras.ops.square(x * v)), [v])
>>> float(square_sum(np.array([1.0, 2.0, 3.0], "float32")))
14.0
>>> _ = v.assign(np.full(3, 2.0, "float32"))  # seen by the next call, no retracing
>>> float(square_sum(np.array([1.0, 2.0, 3.0], "float32")))
56.0
"""

import contextlib

import keras
import numpy as np

SUPPORTED = ("tensorflow", "jax")


class BackendError(RuntimeError):
    """A function was called under a Keras backend it does not support."""


def name():
    """The Keras backend in use: "tensorflow", "jax", ... (`keras.backend.backend()`)."""
    return keras.backend.backend()


def require_backend(backend, what):
    """Raise `BackendError` unless the Keras backend is `backend`.

    Args:
        backend: the backend `what` needs, e.g. "tensorflow".
        what: what is being called, for the message (e.g. "tfprune.export(format='saved_model')").

    Example:

    >>> require_backend(name(), "this example")
    >>> try:
    ...     require_backend("numpy", "a numpy-only step")
    ... except BackendError as e:
    ...     print(str(e).split(";")[0])
    a numpy-only step needs the Keras 'numpy' backend
    """
    if name() != backend:
        raise BackendError(
            f"{what} needs the Keras '{backend}' backend; this process runs '{name()}'. Save the model "
            f"(model.save('model.keras')) and run this step in a process started with KERAS_BACKEND={backend}.")


def _check_supported(what):
    if name() not in SUPPORTED:
        raise BackendError(f"{what} runs on the Keras backends {SUPPORTED}; this process runs '{name()}'.")


def float64_available():
    """Whether float64 arithmetic is real here (JAX computes in float32 unless `jax_enable_x64` is set)."""
    if name() == "jax":
        import jax

        return bool(jax.config.jax_enable_x64)
    return True


def compile_function(fn, variables):
    """`fn` compiled for repeated calls; `variables` are the Keras variables it reads (a list, or a callable that
    returns the list when the function is first called).

    The first call traces `fn` (its Python side effects run then); later calls run the compiled function and see the
    current values of `variables`. Every input must be an array or tensor with a leading batch axis, or None (lists
    and tuples of them are fine). On TensorFlow the function is a `tf.function` traced once with the batch axis
    left open, so every batch size shares one trace; on JAX it is a `jax.jit` whose inputs include the variables'
    current values (read on this process, see `host_array`), traced once per distinct input shape (so a smaller last
    batch costs one more trace).

    Returns:
        A callable with the signature of `fn`, returning backend tensors.
    """
    _check_supported("compile_function")
    if name() == "tensorflow":
        import tensorflow as tf

        function = tf.function(fn, reduce_retracing=True, autograph=False)
        traced = []

        def any_batch_size(value):
            return None if value is None else tf.TensorSpec([None, *list(value.shape)[1:]], tf.as_dtype(value.dtype))

        def call_tf(*args):
            if not traced:
                function.get_concrete_function(*tf.nest.map_structure(any_batch_size, args))
                traced.append(True)
            return function(*args)

        return call_tf
    import jax

    found = []

    def stateless(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(found, values, strict=True))):
            return fn(*args)

    jitted = jax.jit(stateless)

    def call(*args):
        if not found:
            found.extend(variables() if callable(variables) else variables)
        return jitted([_local_value(v.value) for v in found], *args)

    return call


def gradients_at(forward):
    """Gradients of a scalar loss with respect to tensors computed inside `forward`.

    Args:
        forward: `forward(hook) -> (loss, tensors)`. `forward` must pass every tensor it computes that may be in
            `tensors` through `hook(key, value)` right where the tensor is made, with a key unique within one call
            (the same key for the same tensor on every call), and use what `hook` returns.

    Returns:
        `(tensors, gradients)`: the tensors `forward` returned and d loss / d tensor for each (zeros where the loss
        does not depend on it).
    """
    _check_supported("gradients_at")
    if name() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:

            def watch(key, value):
                if value is not None and value.dtype.is_floating:
                    tape.watch(value)
                return value

            loss, tensors = forward(watch)
        return tensors, tape.gradient(loss, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    import jax

    made = {}

    def record(key, value):
        if value is not None:
            made[id(value)] = (key, value)  # the value is kept alive, so its id is not reused during the walk
        return value

    _, tensors = forward(record)
    keys = [made[id(t)][0] for t in tensors]
    zeros = {k: jax.numpy.zeros_like(t) for k, t in zip(keys, tensors, strict=True)}

    def loss_of(perturbations):
        loss, _ = forward(lambda key, value: value + perturbations[key] if key in perturbations else value)
        return loss

    grads = jax.grad(loss_of)(zeros)
    return tensors, [grads[k] for k in keys]


# --- multi-process (keras.distribution on JAX) ---------------------------------------------------------------------

def process_index():
    """This process's index among the processes of a multi-process `keras.distribution` run (0 if there is one)."""
    if name() == "jax":
        import jax

        return jax.process_index()
    return 0


def process_count():
    """How many processes take part in the run (1 without multi-process `keras.distribution`)."""
    if name() == "jax":
        import jax

        return jax.process_count()
    return 1


def _local_value(value):
    """A JAX array usable in a computation on this process alone: a replicated array's local copy."""
    if getattr(value, "is_fully_addressable", True):
        return value
    if not value.is_fully_replicated:
        raise BackendError(
            f"A weight of shape {tuple(value.shape)} is sharded across processes ({value.sharding}); tfprune's "
            "measuring passes need every weight whole on every process, as under keras.distribution.DataParallel. "
            "ModelParallel layouts that split weights across processes are not supported.")
    return value.addressable_data(0)


def host_array(value):
    """`value` (a Keras variable or tensor) as a NumPy array on this process (a replicated array's local copy)."""
    if isinstance(value, keras.Variable):
        value = value.value
    if name() == "jax":
        value = _local_value(value)
    return keras.ops.convert_to_numpy(value)


def variable_view(variable):
    """A Keras variable's current value as a read-only NumPy array, without copying it where the backend allows.

    On CPU this is a view of the backend's buffer (copying every weight of a large model costs tens of
    milliseconds). Later assignments to the variable do not show through: TensorFlow copies a variable's buffer
    before writing to it while a read of it is alive, and JAX arrays are immutable. Slice, reduce or copy it; it
    cannot be written to.

    Example:

    >>> import keras, numpy as np
    >>> v = keras.Variable(np.arange(3.0, dtype="float32"))
    >>> view = variable_view(v)
    >>> _ = v.assign(np.zeros(3, "float32"))
    >>> view.tolist(), view.flags.writeable
    ([0.0, 1.0, 2.0], False)
    """
    value = variable.value
    if name() == "tensorflow":
        import tensorflow as tf

        value = tf.convert_to_tensor(value)  # a read of the variable that shares its buffer
    elif name() == "jax":
        value = _local_value(value)
    array = np.asarray(value)
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def same_on_all_processes(tree, what):
    """Check that every process holds the same `tree` of NumPy arrays and numbers, bit for bit; `ValueError` saying
    `what` differs, and naming the first value that does, if not. Free with a single process.

    The values are compared as their bytes, gathered from every process in one all-gather. (Gathered as numbers,
    64-bit values would reach JAX as 32-bit ones unless `jax_enable_x64` is set, and a float64 that float32 cannot
    hold, such as a sum of float32 values over several batches, would seem to differ from itself.) The comparison is
    a collective: every process must call it at the same point with a tree of the same structure, shapes and dtypes.

    Example (with a single process, as here, there is nothing to compare):

    >>> same_on_all_processes({"mean_abs": np.array([0.1, 0.2])}, "The statistics")
    """
    if process_count() == 1:
        return
    import jax
    from jax.experimental import multihost_utils

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays = [np.asarray(value) for _, value in leaves]
    mine = np.frombuffer(b"".join(a.tobytes() for a in arrays), np.uint8)
    every = multihost_utils.process_allgather(mine)  # (processes, bytes)
    other = next((p for p, theirs in enumerate(every) if not np.array_equal(theirs, mine)), None)
    if other is None:
        return
    start = 0
    for (path, _), value in zip(leaves, arrays, strict=True):
        stop = start + value.nbytes
        differs = (every[other][start:stop] != mine[start:stop]).reshape(value.size, value.itemsize).any(axis=1)
        if differs.any():
            first = int(np.flatnonzero(differs)[0])
            theirs = np.frombuffer(every[other][start:stop].tobytes(), value.dtype)[first].item()
            index = [int(i) for i in np.unravel_index(first, value.shape)]
            where = jax.tree_util.keystr(path) + (str(index) if index else "")
            raise ValueError(
                f"{what} differ between the processes of this multi-process run, so they would take different "
                f"decisions: {where or 'the value'} is {value.flat[first].item()!r} on process {process_index()} "
                f"and {theirs!r} on process {other}. Give every process the same data for it.")
        start = stop


@contextlib.contextmanager
def local_computation():
    """A scope in which this process computes on its own: no global `keras.distribution` (so arrays are not
    sharded across processes and data adapters do not shard the data). Restores the distribution on exit."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)
