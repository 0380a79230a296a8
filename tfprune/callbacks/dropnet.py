"""DropNet: iteratively remove the channels with the lowest mean post-activation (Tan & Motani, ICML 2020)."""

import math
import numbers
import time

import numpy as np

from tfprune.callbacks.pruning_callback import PruningCallback
from tfprune.criteria.activations import ActivationTaps
from tfprune.pruning.planning import check_positive_int, plan_removals

SCOPES = ("layer", "global")
REWINDS = (None, "initial")


class DropNet(PruningCallback):
    """Masks, every cycle of training, the fraction `fraction` of the remaining channels with the lowest mean
    |post-activation| on `data`, until a target is met; then hands out the plan and the slim model.

    At the end of each cycle (`every` epochs, or when `monitor` stopped improving for `patience` epochs) DropNet
    measures every prunable group's mean absolute post-activation per channel over `data` in one batched inference
    pass (`tfprune.criteria.activations.ActivationTaps`: the tensors the group's consuming layers read), and masks
    the lowest ones:

    - `scope="layer"` (the paper's "minimum layer"): `fraction` of each group's remaining channels;
    - `scope="global"` (the paper's "minimum"): `fraction` of all remaining prunable channels, compared by raw value
      (or after dividing by each group's mean with `normalize="mean"`).

    At least one channel goes per step (per group in layer scope) unless the group is at `min_channels`; ties are
    broken at random (seeded). The step that reaches a channels or MACs target is made only as large as needed to
    reach it. Masked channels are exactly zero at every forward pass, whatever the optimizer: their
    weights are multiplied by a 0/1 mask inside the train step after every optimizer update. After a step, the
    surviving weights may be rewound: `rewind="initial"` (the paper's default) to the weights before training,
    `rewind=k` to those after epoch k, None to keep training them. The optimizer's state is not reset.

    Pruning stops at `target`:

    - a number in (0, 1]: the fraction of prunable channels that remains;
    - `{"channels": f}` the same, `{"macs": f}` the MACs of the slim model over the original's;
    - `{metric: floor}` for any metric in the epoch logs (e.g. `{"val_accuracy": 0.85}`): when the metric at the
      end of a cycle is below `floor`, the last step is undone (masks and weights back to just before it) and
      pruning stops;
    - None: pruning goes on until every group is at `min_channels`.

    Logs, every epoch (place this callback before `CSVLogger` or `TensorBoard`): `dropnet_channels` (fraction of
    prunable channels kept), `dropnet_macs` (MACs ratio), `dropnet_steps` (pruning steps so far).

    Args:
        data: inputs to measure on, anything `model.predict` accepts (a sample of the training data). In a
            multi-process `keras.distribution` run every process measures all of it (not a shard), so give every
            process the same `data`; the measurements are compared across processes (`ValueError` if they differ).
        fraction: the fraction of the remaining channels removed per step, in (0, 1).
        scope: "layer" or "global".
        every: epochs per cycle (an integer), or "plateau": a step when `monitor` has not improved for `patience`
            epochs.
        target: when to stop (see above).
        rewind: "initial", an epoch number k >= 1, or None.
        monitor, patience: for `every="plateau"` (a metric whose name contains "loss" is minimised, others
            maximised).
        normalize: None or "mean", for global scope.
        batch_size, steps: of the measuring pass.
        seed: seed of the tie-breaking.
        min_channels, prune_outputs, backup_dir, verbose: see `PruningCallback`.

    Attributes:
        snapshot: `{variable.path: array}` the rewind target (also what `slim_model(reinit="lottery",
            initial_weights=dropnet.snapshot)` rewinds to), or None.
        history: one dict per pruning step (epoch, channels, MACs ratio, seconds spent measuring).

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(10, 3, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> model.compile("adam", "mse")
    >>> x, y = np.random.rand(32, 8, 8, 1), np.random.rand(32, 2)
    >>> dropnet = tfprune.callbacks.DropNet(x[:16], fraction=0.2, target=0.5)
    >>> _ = model.fit(x, y, epochs=4, verbose=0, callbacks=[dropnet])
    >>> [len(k) for k in dropnet.plan().keep.values()]  # 10 → 8 → 7 → 6 → 5
    [5]
    >>> dropnet.slim_model().get_layer("conv").filters
    5
    """

    log_prefix = "dropnet"

    def __init__(self, data, fraction=0.2, scope="layer", every=1, target=None, rewind="initial",
                 monitor="val_loss", patience=2, normalize=None, batch_size=32, steps=None, seed=None,
                 min_channels=1, prune_outputs=False, backup_dir=None, verbose=0):
        super().__init__(min_channels=min_channels, prune_outputs=prune_outputs, backup_dir=backup_dir,
                         verbose=verbose)
        if data is None:
            raise ValueError("DropNet needs data to measure activations on: a sample of the training inputs.")
        self.data = data
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
            raise ValueError(f"fraction must be a number in (0, 1): the share of remaining channels removed per "
                             f"step; got {fraction!r}.")
        self.fraction = float(fraction)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}.")
        self.scope = scope
        if every != "plateau":
            every = check_positive_int(every, "every (epochs per cycle, or 'plateau')")
        self.every = every
        self.target = _check_target(target)
        if rewind not in REWINDS:
            rewind = check_positive_int(rewind, "rewind ('initial', an epoch k >= 1 or None)")
        self.rewind = rewind
        self.monitor = monitor
        self.patience = check_positive_int(patience, "patience")
        if normalize not in (None, "mean"):
            raise ValueError(f"normalize must be None or 'mean'; got {normalize!r}.")
        self.normalize = normalize
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.steps = None if steps is None else check_positive_int(steps, "steps")
        self.seed = seed
        self.snapshot = None
        self.history = []

    # --- state ----------------------------------------------------------------------------------------------

    def start(self):
        self._taps = ActivationTaps(self.model, self.graph)
        self._keep = {g.name: np.arange(g.width) for g in self.graph.prunable_groups}
        self._rng = np.random.default_rng(self.seed)
        self._done = False
        self._cycle_start = 0
        self._best, self._wait = None, 0
        self._undo = None
        self.snapshot = self._weights() if self.rewind == "initial" else None
        self.history = []

    def _weights(self):
        return {v.path: np.array(v.numpy()) for v in self.model.weights}

    def get_state(self):
        state = {"keep": {name: k.tolist() for name, k in self._keep.items()}, "done": self._done,
                 "cycle_start": self._cycle_start, "best": self._best, "wait": self._wait,
                 "rng": self._rng.bit_generator.state, "history": self.history,
                 "undo_keep": None if self._undo is None else {n: k.tolist() for n, k in self._undo[0].items()}}
        for prefix, weights in (("snapshot", self.snapshot), ("undo", self._undo and self._undo[1])):
            for path, value in (weights or {}).items():
                state[f"{prefix}:{path}"] = value
        return state

    def set_state(self, state):
        self._keep = {name: np.asarray(k, np.int64) for name, k in state["keep"].items()}
        self._done, self._cycle_start = state["done"], state["cycle_start"]
        self._best, self._wait, self.history = state["best"], state["wait"], state["history"]
        self._rng.bit_generator.state = state["rng"]
        self.snapshot = {k.split(":", 1)[1]: v for k, v in state.items() if k.startswith("snapshot:")} or None
        undo_weights = {k.split(":", 1)[1]: v for k, v in state.items() if k.startswith("undo:")}
        self._undo = None if state["undo_keep"] is None else (
            {n: np.asarray(k, np.int64) for n, k in state["undo_keep"].items()}, undo_weights)

    def variable_updates(self):
        return self.masking_updates()

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.apply_plan_masks(self.plan())

    def plan(self):
        """The channels DropNet keeps so far, as a `tfprune.Plan`."""
        self._require_model()
        return self.make_plan(self._keep)

    # --- one pruning step -------------------------------------------------------------------------------------

    def _ranks(self, values, keep):
        """Scores with distinct values in the order of `values` (ties at random); removed channels lowest."""
        order = np.lexsort((self._rng.random(len(values)), values))
        ranks = np.empty(len(values))
        ranks[order] = np.arange(len(values))
        removed = np.ones(len(values), bool)
        removed[keep] = False
        return np.where(removed, -1.0, ranks)

    def _step(self):
        """Measure, choose and mask; returns the seconds spent measuring."""
        start = time.perf_counter()
        stats = self._taps.channel_statistics(self.data, ("mean_abs",), batch_size=self.batch_size,
                                              steps=self.steps)
        seconds = time.perf_counter() - start
        values = {name: stats[name]["mean_abs"] for name in self._keep if name in stats}
        scores = {name: self._ranks(v, self._keep[name]) for name, v in values.items()}
        tie = self._rng.random(sum(len(self._keep[name]) for name in values))

        def step_plan(fraction):
            if self.scope == "layer":
                removals = {name: self.graph[name].width - len(self._keep[name])
                            + max(1, math.floor(fraction * len(self._keep[name]))) for name in values}
            else:
                removals = self._global_removals(values, fraction, tie)
            return plan_removals(self.graph, scores, removals, self.min_channels)

        plan = step_plan(self.fraction)
        if self.target and self.target[0] in ("channels", "macs") and self._target_met(*self.plan_report(plan)):
            # the step reaches the target: take the smallest step that still does, to land close to it
            lo, hi = 0.0, self.fraction
            for _ in range(8):
                candidate = step_plan((lo + hi) / 2)
                if self._target_met(*self.plan_report(candidate)):
                    hi, plan = (lo + hi) / 2, candidate
                else:
                    lo = (lo + hi) / 2
        self._keep.update({name: np.asarray(k) for name, k in plan.keep.items()})
        return seconds

    def _global_removals(self, values, fraction, tie):
        live = [(name, c, v[c] / (v[self._keep[name]].mean() or 1.0) if self.normalize else v[c])
                for name, v in values.items() for c in self._keep[name]]
        budget = max(1, math.floor(fraction * len(live)))
        removals = {name: self.graph[name].width - len(self._keep[name]) for name in values}
        room = {name: len(self._keep[name]) - self.min_channels for name in values}
        for i in np.lexsort((tie, [value for _, _, value in live])):
            name = live[i][0]
            if budget and room[name] > 0:
                removals[name] += 1
                room[name] -= 1
                budget -= 1
        return removals

    # --- Keras hooks --------------------------------------------------------------------------------------------

    def _cycle_ends(self, epoch, logs):
        if self.every != "plateau":
            return (epoch + 1 - self._cycle_start) % self.every == 0
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"DropNet(every='plateau') monitors '{self.monitor}', which is not in the epoch logs "
                             f"(available: {sorted(logs or {})}).")
        better = self._best is None or (value < self._best if "loss" in self.monitor else value > self._best)
        self._best, self._wait = (value, 0) if better else (self._best, self._wait + 1)
        return self._wait >= self.patience

    def _target_met(self, channels, macs):
        kind, goal = self.target
        if kind == "channels":
            return channels <= goal
        if kind == "macs":
            return macs <= goal
        return False

    def _below_floor(self, logs):
        if self.target is None or self.target[0] in ("channels", "macs"):
            return False
        metric, floor = self.target
        if metric not in (logs or {}):
            raise ValueError(f"DropNet target {{'{metric}': {floor}}}: '{metric}' is not in the epoch logs "
                             f"(available: {sorted(logs or {})}).")
        return logs[metric] < floor

    def on_epoch_end(self, epoch, logs=None):
        if self.rewind not in REWINDS and epoch + 1 == self.rewind and self.snapshot is None:
            self.snapshot = self._weights()
        if not self._done and self._cycle_ends(epoch, logs):
            if self._undo is not None and self._below_floor(logs):
                keep, weights = self._undo
                self._keep = keep
                self.history.pop()
                for variable in self.model.weights:
                    variable.assign(weights[variable.path])
                self.apply_plan_masks(self.plan())
                self._done = True
                if self.verbose:
                    print(f"DropNet epoch {epoch + 1}: {self.target[0]} below {self.target[1]}: last step undone, "
                          "pruning stops")
            else:
                self._undo = (dict(self._keep), self._weights()) if self.target and self.target[0] not in (
                    "channels", "macs") else None
                before = sum(len(k) for k in self._keep.values())
                seconds = self._step()
                plan = self.plan()
                self.apply_plan_masks(plan)
                if self.snapshot is not None and self.rewind is not None:
                    for variable in self.model.weights:
                        variable.assign(self.snapshot[variable.path])
                    self.apply_plan_masks(plan)
                channels, macs = self.plan_report(plan)
                after = sum(len(k) for k in self._keep.values())
                self.history.append({"epoch": epoch + 1, "channels": channels, "macs": macs,
                                     "measure_seconds": seconds})
                self._cycle_start, self._best, self._wait = epoch + 1, None, 0
                if after == before or (self.target and self._target_met(channels, macs)):
                    self._done = True
                if self.verbose:
                    print(f"DropNet epoch {epoch + 1}: masked {before - after} channels, {after} remain "
                          f"({channels:.1%} of prunable), MACs ratio {macs:.3f}, measured in {seconds:.2f} s"
                          + (", target reached" if self._done else ""))
        channels, macs = self.plan_report(self.plan())
        if logs is not None:
            logs.update({"dropnet_channels": channels, "dropnet_macs": macs, "dropnet_steps": len(self.history)})
        super().on_epoch_end(epoch, logs)

    def get_config(self):
        return {**super().get_config(), "fraction": self.fraction, "scope": self.scope, "every": self.every,
                "target": None if self.target is None else dict([self.target]), "rewind": self.rewind,
                "monitor": self.monitor, "patience": self.patience, "normalize": self.normalize,
                "batch_size": self.batch_size, "steps": self.steps, "seed": self.seed}


def _check_target(target):
    """`(kind, value)` or None, from a number, `{"channels"|"macs": f}` or `{metric: floor}`."""
    if target is None:
        return None
    if isinstance(target, numbers.Real) and not isinstance(target, bool):
        target = {"channels": target}
    if not isinstance(target, dict) or len(target) != 1:
        raise ValueError("target must be None, a fraction of channels in (0, 1], {'channels': f}, {'macs': f} or "
                         f"{{metric name: floor}}; got {target!r}.")
    (kind, value), = target.items()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
            kind in ("channels", "macs") and not 0 < value <= 1):
        raise ValueError(f"target {{{kind!r}: {value!r}}}: the value must be a number"
                         + (" in (0, 1]." if kind in ("channels", "macs") else "."))
    return kind, float(value)
