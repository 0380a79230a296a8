"""DMCPTrainer: the training step of DMCP's supernet, run by `fit`.

One step does, in order:

* the **weight step** (sandwich rule): the largest, the smallest and `subnets - 2` random sub-networks (every gate
  in "mask" mode at a width drawn uniformly from its steps during the warm-up, from its Markov chain afterwards)
  each take a forward pass on the batch; the largest learns from the labels, the others from the largest's output
  (distillation, `distill=True`) or from the labels; one optimizer step on the summed loss updates the weights
  (the losses layers add in `call`, such as activity regularizers, count once per sub-network; weight
  regularizers once per step);
* the **architecture step** (after the warm-up): every gate in "markov" mode scales its channel groups by their
  marginals; the task loss plus `budget_weight` × the budget loss on the expected MACs updates the gates' alphas
  alone, with their own optimizer.

Widths and modes are gate variables assigned inside the step, so one traced step serves every sub-network.

The same step runs on both backends: on TensorFlow through `tf.GradientTape` and the optimizers' `apply`; on JAX as
Keras's stateless train step (`train_step(state, data) -> (logs, state)`): the stateful code above runs inside a
`keras.StatelessScope` that maps every variable to its value in `state`, gradients come from `jax.value_and_grad`
of that, and both optimizers update through `stateless_apply`. The architecture optimizer's variables are part of
the trainer's non-trainable state, so the JAX step carries them from step to step like the gates' modes and widths.
"""

import keras
import numpy as np
from keras import ops

from tfprune import backends

BUDGET_TOLERANCE = 0.03  # the budget loss is zero for expected MACs in [(1 - tolerance) * target, target]
_BUDGET_SCALE = 0.01  # relative distance to the band at which the budget loss's slope halves


def budget_loss(ratio, target):
    """Zero when `ratio` lies in [(1 - BUDGET_TOLERANCE) * target, target], and log(1 + d / 0.01) outside, d being the
    relative distance to the band: a slope that grows as the expected MACs near the band (the reference's log-L1
    loss, made non-negative and scale-free)."""
    over = ops.relu(ratio - target) / target
    under = ops.relu((1 - BUDGET_TOLERANCE) * target - ratio) / target
    return ops.log1p(over / _BUDGET_SCALE) + ops.log1p(under / _BUDGET_SCALE)


def _gradients(loss_fn, variables):
    """`(loss, gradients of loss_fn() with respect to variables)`, on TensorFlow (the JAX step is stateless)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = loss_fn()
    return loss, tape.gradient(loss, variables)


class DMCPTrainer(keras.Model):
    """Trains a gated model with DMCP's alternating weight and architecture steps inside `fit`.

    Args:
        gated: the gated Functional model (from `dmcp_gating.gated_model`).
        gates: `{group name: MarkovChannelGate}` inside `gated`.
        macs_model: the cost model of the budget (a `MacsModel`, or any `tfprune.measurement.costs.CostModel`) of
            the ungated model.
        target: the MACs ratio the budget loss pulls the expected MACs to.
        task_loss: `(y_true, y_pred) -> loss`, a Keras loss or loss function.
        distill_from_logits: whether the model's outputs are logits (else probabilities) for distillation.
        arch_optimizer: the optimizer of the alphas.
        budget_weight: weight of the budget loss in the architecture step.
        subnets: sub-networks per weight step (>= 2: the largest, the smallest, and random ones).
        distill: distil the smaller sub-networks from the largest.
        seed: seed of the width sampling.
    """

    def __init__(self, gated, gates, macs_model, target, task_loss, distill_from_logits, arch_optimizer,
                 budget_weight=0.1, subnets=4, distill=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.gated = gated
        self.gate_names = list(gates)
        self.gates = [gates[name] for name in self.gate_names]
        self.macs_model = macs_model
        self.target = float(target)
        self.task_loss = task_loss
        self.distill_from_logits = bool(distill_from_logits)
        self.arch_optimizer = arch_optimizer
        self.budget_weight = float(budget_weight)
        self.subnets = int(subnets)
        self.distill = bool(distill)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.train_weights, self.train_arch = True, False
        self.trackers = {name: keras.metrics.Mean(name=name) for name in (
            "loss", "task_loss_max", "task_loss_min", "task_loss_random", "arch_task_loss", "budget_loss",
            "dmcp_expected_macs")}
        # the alphas' optimizer state, tracked as the trainer's non-trainable state (the JAX step carries it)
        self.arch_optimizer.build(self.alphas)
        self.arch_state = list(self.arch_optimizer.variables)

    def compile(self, optimizer="rmsprop", **kwargs):
        """As `keras.Model.compile`; `optimizer` trains the weights (not the alphas), and is built on them now."""
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.weight_variables)

    # ---- phases -------------------------------------------------------------------------------------------

    def set_phase(self, train_weights, train_arch):
        """Choose what the next `fit` trains (the step is traced again once)."""
        self.train_weights, self.train_arch = bool(train_weights), bool(train_arch)
        self.train_function = None
        self.arch_optimizer.build(self.alphas)

    @property
    def alphas(self):
        return [gate.alpha for gate in self.gates]

    @property
    def weight_variables(self):
        alphas = {id(a) for a in self.alphas}
        return [v for v in self.gated.trainable_variables if id(v) not in alphas]

    @property
    def metrics(self):
        names = ["dmcp_expected_macs", "budget_loss"]
        if self.train_weights:
            names = ["loss", "task_loss_max", "task_loss_min"] + (["task_loss_random"] if self.subnets > 2 else []) \
                + names
        if self.train_arch:
            names.append("arch_task_loss")
        return [self.trackers[n] for n in names]

    def call(self, inputs, training=False):
        return self.gated(inputs, training=training)

    # ---- the step -----------------------------------------------------------------------------------------

    def expected_macs_ratio(self):
        """Expected cost (MACs, or the budget's cost) of the gated model over the full model's, differentiable in the
        alphas."""
        keep = {name: gate.keep_probability() for name, gate in zip(self.gate_names, self.gates, strict=True)}
        return self.macs_model.expected_ratio(keep)

    def _set_subnet(self, kind):
        for gate in self.gates:
            if kind == "max":
                width = gate.channels
            elif kind == "min":
                width = gate.min_channels
            elif self.train_arch:  # the search phase: the architectures the chain currently favours
                width = gate.sample_width(self.seed_generator)
            else:
                width = gate.uniform_width(self.seed_generator)
            gate.mode.assign(1)
            gate.width.assign(width)

    def _task(self, y, y_pred):
        return ops.mean(self.task_loss(y, y_pred))

    def _distillation(self, teacher, student):
        if self.distill_from_logits:
            target = ops.softmax(teacher, axis=-1)
            log_student = ops.log_softmax(student, axis=-1)
        else:
            target = teacher
            log_student = ops.log(ops.clip(student, 1e-7, 1.0))
        log_target = ops.log(ops.clip(target, 1e-7, 1.0))
        return ops.mean(ops.sum(target * (log_target - log_student), axis=-1))

    def _weight_loss(self, x, y, record):
        kinds = ["max", "min"] + ["random"] * (self.subnets - 2)
        weight_penalty = _weight_penalty(self.gated)
        total, teacher, random_losses = weight_penalty, None, []
        for kind in kinds:
            self._set_subnet(kind)
            y_pred = self.gated(x, training=True)
            if self.gated.losses:  # what this sub-network's layers added in the call (activity regularizers)
                total = total + ops.sum(ops.stack(self.gated.losses)) - weight_penalty
            if kind == "max":
                teacher = ops.stop_gradient(y_pred)
                loss = self._task(y, y_pred)
                record["task_loss_max"] = loss
            else:
                loss = self._distillation(teacher, y_pred) if self.distill else self._task(y, y_pred)
                if kind == "min":
                    record["task_loss_min"] = loss
                else:
                    random_losses.append(loss)
            total = total + loss
        if random_losses:
            record["task_loss_random"] = ops.mean(ops.stack(random_losses))
        return total

    def _arch_loss(self, x, y, record):
        for gate in self.gates:
            gate.mode.assign(0)
        task = self._task(y, self.gated(x, training=True))
        ratio = self.expected_macs_ratio()
        budget = budget_loss(ratio, self.target)
        record.update(arch_task_loss=task, budget_loss=budget, dmcp_expected_macs=ratio)
        return task + self.budget_weight * budget

    def train_step(self, *args):
        if backends.name() == "jax":
            return self._stateless_train_step(*args)
        if backends.name() != "tensorflow":
            raise backends.BackendError(f"tfprune.search.dmcp trains on the Keras backends {backends.SUPPORTED}; "
                                        f"this process runs '{backends.name()}'.")
        data, = args
        x, y = _unpack(data)
        record = {}
        if self.train_weights:
            variables = self.weight_variables
            loss, grads = _gradients(lambda: self._weight_loss(x, y, record), variables)
            self.optimizer.apply(grads, variables)
            record["loss"] = loss
        if self.train_arch:
            _, grads = _gradients(lambda: self._arch_loss(x, y, record), self.alphas)
            self.arch_optimizer.apply(grads, self.alphas)
        else:
            self._record_budget(record)
        for name, value in record.items():
            self.trackers[name].update_state(value)
        return {m.name: m.result() for m in self.metrics}

    def _record_budget(self, record):
        ratio = self.expected_macs_ratio()
        record.update(dmcp_expected_macs=ratio, budget_loss=budget_loss(ratio, self.target))

    # ---- the step on JAX: stateless -----------------------------------------------------------------------

    def _stateless(self, fn, trainable, non_trainable):
        """`(fn(), new non-trainable values)`, `fn` run with every variable of the trainer read from the values."""
        refs = self.non_trainable_variables
        mapping = list(zip(self.trainable_variables, trainable, strict=True)) + list(
            zip(refs, non_trainable, strict=True))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            out = fn()
        return out, [scope.get_current_value(v) for v in refs]

    def _stateless_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_values, metrics_values = (list(part) for part in state)
        x, y = _unpack(data)
        position = {id(v): i for i, v in enumerate(self.trainable_variables)}
        state_position = {id(v): i for i, v in enumerate(self.non_trainable_variables)}

        def step_on(indices, loss_method):
            """Loss, gradients with respect to the trainable values at `indices`, recorded values, new state."""
            def loss_of(values, non_trainable):
                current = list(trainable)
                for i, value in zip(indices, values, strict=True):
                    current[i] = value
                record = {}
                loss, new_state = self._stateless(lambda: loss_method(x, y, record), current, non_trainable)
                return loss, (record, new_state)

            (loss, (record, new_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
                [trainable[i] for i in indices], non_trainable)
            return loss, grads, record, new_state

        record = {}
        if self.train_weights:
            indices = [position[id(v)] for v in self.weight_variables]
            loss, grads, found, non_trainable = step_on(indices, self._weight_loss)
            new_weights, optimizer_values = self.optimizer.stateless_apply(
                optimizer_values, grads, [trainable[i] for i in indices])
            for i, value in zip(indices, new_weights, strict=True):
                trainable[i] = value
            record.update(found, loss=loss)
        if self.train_arch:
            indices = [position[id(a)] for a in self.alphas]
            arch_indices = [state_position[id(v)] for v in self.arch_optimizer.variables]
            _, grads, found, non_trainable = step_on(indices, self._arch_loss)
            new_alphas, arch_values = self.arch_optimizer.stateless_apply(
                [non_trainable[i] for i in arch_indices], grads, [trainable[i] for i in indices])
            for i, value in zip(indices, new_alphas, strict=True):
                trainable[i] = value
            for i, value in zip(arch_indices, arch_values, strict=True):
                non_trainable[i] = value
            record.update(found)
        else:
            _, non_trainable = self._stateless(lambda: self._record_budget(record), trainable, non_trainable)
        metrics = self.metrics_variables
        with keras.StatelessScope(state_mapping=list(zip(metrics, metrics_values, strict=True))) as scope:
            for name, value in record.items():
                self.trackers[name].update_state(value)
            logs = {m.name: m.result() for m in self.metrics}
        metrics_values = [scope.get_current_value(v) for v in metrics]
        return logs, (trainable, non_trainable, optimizer_values, metrics_values)

    def test_step(self, *args):
        raise NotImplementedError("DMCPTrainer is trained only; evaluate the slim model from the search result.")


def _weight_penalty(model):
    """The sum of `model`'s weight regularizers: counted once per weight step, while the losses its layers add in
    `call` count once per sub-network (`model.losses` holds both)."""
    penalties = [v.regularizer(v) for v in model.trainable_weights if v.regularizer is not None]
    return ops.sum(ops.stack(penalties)) if penalties else 0.0


def _unpack(data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if sample_weight is not None:
        raise ValueError("tfprune.search.dmcp does not take sample weights; pass (x, y) batches.")
    return x, y


class DMCPRecorder(keras.callbacks.Callback):
    """Records, every `every` steps, the expected MACs ratio and each group's expected width (and marginals)."""

    def __init__(self, trainer, every=1):
        super().__init__()
        self.trainer, self.every = trainer, max(1, int(every))
        self.history, self.step, self.phase = [], 0, "warmup"

    def _sync(self):
        """On JAX `fit` keeps the trainer's values in its own state during an epoch: bring them into the variables."""
        if hasattr(self.trainer, "jax_state_sync"):
            self.trainer.jax_state_sync()

    def snapshot(self):
        self._sync()
        widths = {name: float(ops.convert_to_numpy(gate.expected_width()))
                  for name, gate in zip(self.trainer.gate_names, self.trainer.gates, strict=True)}
        ratio = float(ops.convert_to_numpy(self.trainer.expected_macs_ratio()))
        return {"step": self.step, "phase": self.phase, "expected_macs": ratio, "expected_widths": widths}

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.history.append(self.snapshot())

    def marginals(self):
        self._sync()
        return {name: np.asarray(ops.convert_to_numpy(gate.marginals()))
                for name, gate in zip(self.trainer.gate_names, self.trainer.gates, strict=True)}
