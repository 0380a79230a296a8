"""PruningCallback: what the training-time pruning callbacks share.

During `fit` a pruning callback may change weights after every optimizer step (a mask, a proximal step) and add
penalties to the loss. Both run inside the compiled train step, not in per-batch Python: the updates are Keras
variable constraints (which the optimizer applies right after each update, in the same compiled step, on every
backend, with `jit_compile` and under `tf.distribute` strategies or `keras.distribution`) and the penalties variable
regularizers (which Keras adds to the loss). What may change between epochs (the masks) lives in non-trainable
`keras.Variable`s, changed by `assign`, never in constants of the compiled step, so changing a mask retraces nothing
on either backend:

- on TensorFlow the masking constraint reads the mask variables, which the compiled step reads like any variable;
- on JAX the step is a pure function of its inputs, so the masks are handed to it with every batch, and the model's
  `train_step` multiplies each masked weight by its mask right after the optimizer update (after the variable's
  constraints).

**Nothing is left on the model, however `fit` ends.** Keras calls `on_train_end` only when `fit` ends normally, and
offers no hook for the other ends (an exception in a step, in the data or in any callback, a `KeyboardInterrupt`).
So nothing of the callbacks is put on the model for the length of the fit: while the callbacks train it,
`model.train_function` is a `_TrainingWindow`, which puts their constraints and regularizers on the variables only
while it runs a step (the step traced then includes them) and takes them off when the step returns or raises; the
user's own constraints and regularizers stay under them and are back as they were. The window serves only the steps
of the fit it was made for, which the callbacks announce in `on_train_batch_begin` (a subclass that overrides it calls
`super().on_train_batch_begin`); a call from anywhere else (a later `fit` or `train_on_batch` after that fit stopped
with an exception) gets the model's own train step, which replaces the window. Penalties are therefore part of the
training loss only, not of `evaluate` (nor of the validation loss).

**Multi-process runs** (`keras.distribution.DataParallel` on JAX, one process per host): every process holds the
same masks and state and takes the same decisions (measurements are made on the same data everywhere and checked
to agree, see `tfprune.criteria.activations`); JAX itself refuses to assign a variable values that differ between
processes. The `backup_dir` state is written by process 0 only and read by every process, so `backup_dir` must
be on a file system all processes share. Distributions that split weights across processes (`ModelParallel`)
are refused.
"""

import json
import numbers
import os

import keras
import numpy as np

from tfprune import backends
from tfprune.graph import ChannelGraph
from tfprune.measurement.macs_model import MacsModel
from tfprune.pruning.masking import weight_masks
from tfprune.pruning.planning import check_positive_int
from tfprune.pruning.plans import Plan
from tfprune.pruning.rebuilding import rebuild


def check_non_negative(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 or np.isinf(value):
        raise ValueError(f"{what} must be a finite number >= 0; got {value!r}.")
    return float(value)


class ChainedConstraint:
    """A variable constraint: the variable's original constraint (if any), then each of `updates` (value -> value) in
    turn; what the callbacks and the structure search's masked fine-tuning install."""

    def __init__(self, original, updates):
        self.original, self.updates = original, updates

    def __call__(self, value):
        if self.original is not None:
            value = self.original(value)
        for update in self.updates:
            value = update(value)
        return value


class _MaskedTrainStep:
    """The JAX `train_step` of a model being pruned: the model's own step on the batch, then every masked trainable
    variable multiplied by its mask. The masks come with the batch (`_BatchesWithMasks`), as inputs of the compiled
    step, so a mask change needs no retrace. A new one for every fit, also without masks: JAX reuses a trace made
    for an equal function while that one lives, and the model's own `train_step` must not get this one's.

    Args:
        step: the model's `train_step(state, data) -> (logs, state)`.
        indices: for each mask, the index of its variable in `model.trainable_variables`.
    """

    def __init__(self, step, indices):
        self.step, self.indices = step, indices

    def __call__(self, state, data):
        data, masks = data
        logs, (trainable, non_trainable, optimizer_variables, metrics_variables) = self.step(state, data)
        trainable = list(trainable)
        for index, mask in zip(self.indices, masks, strict=True):
            trainable[index] = trainable[index] * mask
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


class _BatchesWithMasks:
    """The batches `fit` hands the JAX train function, each paired with the masks' current values."""

    def __init__(self, batches, masks):
        self.batches, self.masks = batches, masks

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.batches), [mask.value for mask in self.masks]


class _TrainingWindow:
    """`model.train_function` while pruning callbacks train the model (see the module docstring): the model's compiled
    train step, run with the callbacks' constraints and regularizers on the variables only for as long as it runs and,
    on JAX, with their masks handed to it with each batch.

    Args:
        model: the model being fitted.
    """

    def __init__(self, model):
        self.model = model
        self.fit = getattr(model, "history", None)  # the History of the fit it serves: Keras makes one per fit
        self.entries = []  # (variable, "constraint", updates) or (variable, "regularizer", penalty)
        self.masks = []  # (index in model.trainable_variables, mask variable), on JAX
        self.jax = backends.name() == "jax"
        self.step = None
        self.announced = False  # set by the callbacks' on_train_batch_begin, for the next step only

    @classmethod
    def of(cls, model):
        """The window of the fit now running on `model` (another pruning callback's), or a new one."""
        window = model.train_function
        if isinstance(window, cls) and window.fit is getattr(model, "history", None):
            return window
        return cls(model)

    def add(self, callback):
        """Apply `callback`'s updates, penalties and masks in the steps from now on (traces the step anew)."""
        variables = {v.path: v for v in self.model.trainable_weights}
        self.entries += [(variables[path], "constraint", updates)
                         for path, updates in callback.variable_updates().items()]
        self.entries += [(variables[path], "regularizer", penalty)
                         for path, penalty in callback.variable_penalties().items()]
        if self.jax and callback._mask_variables:
            if keras.config.is_nnx_enabled():
                raise ValueError(f"{type(callback).__name__} applies its masks in the model's train_step, which "
                                 "Keras bypasses with Flax NNX enabled (keras.config.is_nnx_enabled()); train "
                                 "without NNX.")
            index = {id(v): i for i, v in enumerate(self.model.trainable_variables)}
            self.masks += [(index[id(variables[path])], mask) for path, mask in callback._mask_variables.items()
                           if path in variables]
        model, own = self.model, self.model.__dict__.get("train_step")
        if self.jax:  # the compiled step calls the train_step the model has when it is made
            model.train_step = _MaskedTrainStep(model.train_step, [i for i, _ in self.masks])
        try:
            model.make_train_function(force=True)  # a step traced before would not apply the new updates
        finally:
            if own is not None:
                model.train_step = own
            elif "train_step" in model.__dict__:
                del model.train_step
        self.step, model.train_function = model.train_function, self

    def __call__(self, *args):
        announced, self.announced = self.announced, False
        if not announced or self.fit is not getattr(self.model, "history", None):
            # not a step of the fit this window was made for, which stopped with an exception: the model's own step
            self.model.train_function = None
            self.model.make_train_function()
            return self.model.train_function(*args)
        saved = [(variable, variable.constraint, variable.regularizer) for variable, _, _ in self.entries]
        try:
            for variable, attribute, value in self.entries:
                if attribute == "constraint":
                    variable.constraint = ChainedConstraint(variable.constraint, value)
                else:
                    variable.regularizer = _Sum(variable.regularizer, value)
            if self.jax:
                state, batches = args
                return self.step(state, _BatchesWithMasks(batches, [mask for _, mask in self.masks]))
            return self.step(*args)
        finally:
            for variable, constraint, regularizer in reversed(saved):
                variable.constraint, variable.regularizer = constraint, regularizer

    def close(self):
        """The fit has ended: the next one traces the model's own step."""
        if self.model.train_function is self:
            self.model.train_function = None


class _Sum:
    """The regularizer installed on a variable: the original regularizer (if any) plus the callback's penalty."""

    def __init__(self, original, penalty):
        self.original, self.penalty = original, penalty

    def __call__(self, value):
        total = self.penalty(value)
        return total if self.original is None else total + self.original(value)


def check_distribution(callback):
    """Refuse a `keras.distribution` the pruning callbacks cannot follow: one that splits weights across devices.

    The callbacks keep whole masks and read whole weights on every process, which `DataParallel` (weights
    replicated, the batch split) allows; `ModelParallel` shards weights, and is refused with a `ValueError`.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or isinstance(distribution, keras.distribution.DataParallel):
        return
    raise ValueError(
        f"{type(callback).__name__} runs under no keras.distribution or under keras.distribution.DataParallel "
        f"(weights replicated on every device); this fit runs under {type(distribution).__name__}, which may "
        "split weights across devices. Train with DataParallel to prune, then use ModelParallel for the slim model.")


class PruningCallback(keras.callbacks.Callback):
    """Base class of the pruning callbacks (`DropNet`, `NetworkSlimming`, `GroupLasso`).

    Subclasses say what to do during training through `variable_updates()` and `variable_penalties()`, keep their
    own state in `get_state()`/`set_state()` (saved to `backup_dir` after every epoch, so that a fit interrupted
    and resumed with `keras.callbacks.BackupAndRestore` continues where it stopped), and turn what they learned into
    a `Plan` with `plan()`. A subclass that overrides a Keras hook calls this class's too (`on_train_begin`,
    `on_train_batch_begin`, `on_epoch_end`, `on_train_end`).

    Args:
        min_channels: no group is planned below this many channels.
        prune_outputs: also prune groups that reach a model output.
        backup_dir: a directory for the callback's state (use the `backup_dir` of your `BackupAndRestore`): the state
            is written after every epoch, read back when `fit` starts, and deleted when `fit` ends normally.
        verbose: 1 prints one line per pruning step or per epoch summary.
    """

    log_prefix = "pruning"

    def __init__(self, min_channels=1, prune_outputs=False, backup_dir=None, verbose=0):
        super().__init__()
        self.min_channels = check_positive_int(min_channels, "min_channels")
        self.prune_outputs = bool(prune_outputs)
        if backup_dir is not None and not isinstance(backup_dir, (str, os.PathLike)):
            raise ValueError(f"backup_dir must be a directory path or None; got {backup_dir!r}.")
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        if verbose not in (0, 1, False, True):
            raise ValueError(f"verbose must be 0 or 1; got {verbose!r}.")
        self.verbose = int(verbose)
        self.graph = None
        self._mask_variables = {}
        self._window = None

    # --- what subclasses provide -------------------------------------------------------------------------------

    def variable_updates(self):
        """`{variable.path: [fn(value) -> value, ...]}` applied after every optimizer step, inside the train step."""
        return {}

    def variable_penalties(self):
        """`{variable.path: fn(value) -> scalar}` added to the training loss."""
        return {}

    def get_state(self):
        """The callback's training state as `{name: numpy array or JSON-serialisable value}`."""
        return {}

    def set_state(self, state):
        """Restore what `get_state` returned."""

    def plan(self, *args, **kwargs):
        raise NotImplementedError

    # --- masks --------------------------------------------------------------------------------------------------

    def _create_mask_variables(self):
        """One mask per weight of every layer a prunable group reaches, all ones, read by the masking constraint."""
        paths = set()
        for group in self.graph.prunable_groups:
            paths.update(member.layer for member in group.members)
        for path in sorted(paths):
            layer = self.graph.layers.get(path)
            for variable in getattr(layer, "trainable_weights", ()):
                if variable.path not in self._mask_variables:
                    self._mask_variables[variable.path] = keras.Variable(
                        np.ones(variable.shape, variable.dtype), trainable=False, name="tfprune_mask")

    def masking_updates(self):
        """The mask updates, for subclasses that hold masks: `{variable.path: [multiply by its mask]}` on
        TensorFlow; on JAX `{}`, the masks being applied by the train step itself (see the module docstring)."""
        if not self._mask_variables:
            self._create_mask_variables()
        if backends.name() == "jax":
            return {}
        return {path: [lambda value, m=m: value * m] for path, m in self._mask_variables.items()}

    def apply_plan_masks(self, plan):
        """Set the masks to `plan` and zero the removed weights now (including non-trainable ones)."""
        masks = weight_masks(self.model, plan, self.graph)
        for variable in self.model.weights:
            mask = masks.get(variable.path)
            if variable.path in self._mask_variables:
                self._mask_variables[variable.path].assign(
                    np.ones(variable.shape, variable.dtype) if mask is None else mask.astype(variable.dtype))
            if mask is not None:
                variable.assign(np.where(mask, backends.host_array(variable), 0))

    # --- plan helpers -------------------------------------------------------------------------------------------

    def make_plan(self, keep):
        """A `Plan` from `{group name: kept indices}` for this callback's graph."""
        return Plan(keep={name: np.asarray(k) for name, k in keep.items()},
                    widths={name: self.graph[name].width for name in keep}, prune_outputs=self.prune_outputs)

    def slim_model(self, plan=None, reinit="keep", initial_weights=None, seed=None, **plan_options):
        """Rebuild the trained model without the channels `plan` removes (default: `self.plan(**plan_options)`).

        Args:
            plan: a `Plan`; if None, `self.plan(**plan_options)`.
            reinit, initial_weights, seed: as in `tfprune.rebuild` ("keep" fine-tunes the trained weights,
                "lottery" slices `initial_weights`, "scratch" re-initialises).

        Returns:
            A new, smaller `keras.Model` (uncompiled); the trained model is not modified.
        """
        self._require_model()
        plan = plan if plan is not None else self.plan(**plan_options)
        return rebuild(self.model, plan, reinit=reinit, initial_weights=initial_weights, seed=seed, graph=self.graph)

    def plan_report(self, plan):
        """`(fraction of prunable channels kept, MACs ratio)` of `plan` (the MACs of the rebuilt model, from
        `tfprune.macs_model.MacsModel`: nothing is rebuilt)."""
        total = sum(g.width for g in self.graph.prunable_groups)
        removed = sum(self.graph[name].width - len(kept) for name, kept in plan.keep.items())
        return (total - removed) / max(total, 1), self._macs.ratio(plan)

    def _require_model(self):
        if self.graph is None:
            raise RuntimeError(f"{type(self).__name__} has not seen a model yet: pass it to `model.fit(..., "
                               "callbacks=[...])` first.")

    # --- Keras hooks --------------------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        check_distribution(self)
        if self.graph is None or self.graph.source is not self.model:
            self.graph = ChannelGraph(self.model, prune_outputs=self.prune_outputs)
            self._macs = MacsModel(self.model, self.graph)
            self._mask_variables = {}
            self.start()
        state = self._load_backup()
        if state is not None:
            self.set_state(state)
        self._window = _TrainingWindow.of(self.model)
        self._window.add(self)

    def start(self):
        """Called once per model when the first `fit` begins (before any state is restored)."""

    def on_train_batch_begin(self, batch, logs=None):
        if self._window is not None:
            self._window.announced = True  # the step about to run is one of this fit's (see _TrainingWindow)

    def on_epoch_end(self, epoch, logs=None):
        if self.backup_dir is not None:
            self._save_backup()

    def on_train_end(self, logs=None):
        if self._window is not None:
            self._window.close()
            self._window = None
        if self.backup_dir is not None and backends.process_index() == 0 and os.path.exists(self._backup_path()):
            os.remove(self._backup_path())

    # --- backup -------------------------------------------------------------------------------------------------

    def _backup_path(self):
        return os.path.join(self.backup_dir, f"tfprune_{type(self).__name__}.npz")

    def _save_backup(self):
        if backends.process_index() != 0:
            return  # one writer; every process holds the same state
        os.makedirs(self.backup_dir, exist_ok=True)
        arrays, values = {}, {}
        for key, value in self.get_state().items():
            (arrays if isinstance(value, np.ndarray) else values)[key] = value
        tmp = self._backup_path() + ".tmp.npz"
        np.savez(tmp, __json__=np.array(json.dumps(values)), **arrays)
        os.replace(tmp, self._backup_path())

    def _load_backup(self):
        if self.backup_dir is None or not os.path.exists(self._backup_path()):
            return None
        with np.load(self._backup_path(), allow_pickle=False) as data:
            state = {key: data[key] for key in data.files if key != "__json__"}
            state.update(json.loads(str(data["__json__"])))
        return state

    def get_config(self):
        return {"min_channels": self.min_channels, "prune_outputs": self.prune_outputs,
                "backup_dir": self.backup_dir, "verbose": self.verbose}
