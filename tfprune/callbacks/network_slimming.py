"""NetworkSlimming: L1 sparsity on BatchNorm scales during training (Liu et al., ICCV 2017)."""

import keras
import numpy as np

from tfprune.callbacks.pruning_callback import PruningCallback, check_non_negative
from tfprune.deployment.channel_tiles import resolve_round_to
from tfprune.pruning.planning import check_ratio, global_removals, plan_removals


class NetworkSlimming(PruningCallback):
    """Pushes BatchNormalization scales (gamma) towards zero during `fit`, then plans by the scales.

    Network Slimming adds `l1 * sum(|gamma|)` over the BatchNormalization layers of every prunable group to the
    training loss. Two ways to apply it:

    - `proximal=True` (default): after every optimizer step, each scale is soft-thresholded,
      `gamma <- sign(gamma) * max(|gamma| - learning_rate * l1, 0)` (proximal gradient descent on the L1 term), so
      unneeded scales become exactly zero.
    - `proximal=False`: the paper's sub-gradient, `l1 * sign(gamma)` added to the scales' gradients (through a
      regularizer on the scales, so it also goes through momentum or Adam); scales get small but not zero.

    After training, `plan(ratio)` applies the paper's rule: one global threshold over the scales of all prunable
    channels, removing the fraction `ratio` with the smallest scales; `plan()` without a ratio removes the channels
    whose scales are exactly zero. A channel that passes through several BatchNormalization layers (a residual
    stream) is scored by its largest scale, so it is removed only when all of them are small. Groups without a
    BatchNormalization layer are neither penalised nor pruned.

    Logs, every epoch (place this callback before `CSVLogger` or `TensorBoard` to have them recorded):
    `slimming_penalty` (l1 · Σ|gamma|), `slimming_zero_scales` (fraction of scales exactly zero),
    `slimming_channels` and `slimming_macs` (fraction of prunable channels kept and MACs ratio of `plan()`).

    Args:
        l1: strength of the L1 term (paper: 1e-4 for VGG-like networks, 1e-5 for ResNets and DenseNets).
        proximal: soft-threshold after each step (True) or sub-gradient (False).
        min_channels, prune_outputs, backup_dir, verbose: see `PruningCallback`.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    >>> x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(x))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> slimming = tfprune.callbacks.NetworkSlimming(l1=1e-2)
    >>> _ = model.fit(np.ones((16, 8, 8, 1)), np.ones((16, 2)), epochs=2, verbose=0, callbacks=[slimming])
    >>> len(slimming.plan(0.5).keep["conv"])
    4
    >>> slimming.slim_model(ratio=0.5).get_layer("conv").filters
    4
    """

    log_prefix = "slimming"

    def __init__(self, l1=1e-4, proximal=True, min_channels=1, prune_outputs=False, backup_dir=None, verbose=0):
        super().__init__(min_channels=min_channels, prune_outputs=prune_outputs, backup_dir=backup_dir,
                         verbose=verbose)
        self.l1 = check_non_negative(l1, "l1")
        if not isinstance(proximal, bool):
            raise ValueError(f"proximal must be True (soft-threshold) or False (sub-gradient); got {proximal!r}.")
        self.proximal = proximal

    def _scales(self):
        """`(group, BatchNormalization path, gamma variable)` for every prunable group's BN layers with a scale."""
        found = []
        for group in self.graph.prunable_groups:
            for member in group.members:
                layer = self.graph.layers.get(member.layer)
                if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
                    found.append((group, member.layer, layer.gamma))
        return found

    def variable_updates(self):
        if not self.proximal:
            return {}

        optimizer = self.model.optimizer  # read here: under JAX, `self.model` inside the traced step would sync state

        def soft_threshold(gamma):
            step = keras.ops.cast(optimizer.learning_rate, gamma.dtype) * self.l1
            return keras.ops.sign(gamma) * keras.ops.relu(keras.ops.abs(gamma) - step)

        return {gamma.path: [soft_threshold] for _, _, gamma in self._scales()}

    def variable_penalties(self):
        if self.proximal:
            return {}
        return {gamma.path: lambda gamma: self.l1 * keras.ops.sum(keras.ops.abs(gamma))
                for _, _, gamma in self._scales()}

    def scores(self):
        """`{group name: largest |gamma| per channel}` for the prunable groups that carry BatchNormalization."""
        self._require_model()
        scores = {}
        for group, path, gamma in self._scales():
            elems = self.graph.recorded(path)["in"]
            value = self.graph.scatter(group, elems, np.abs(gamma.numpy()), reduce=np.maximum)
            scores[group.name] = np.maximum(scores.get(group.name, 0), value)
        return scores

    def plan(self, ratio=None, round_to=1):
        """The plan by BatchNormalization scales.

        Args:
            ratio: None removes every channel whose scales are all exactly zero; a number in [0, 1) removes that
                fraction of all scored channels, those with the smallest scales (the paper's global threshold).
            round_to: kept counts are rounded up to a multiple of this.

        Returns:
            A `tfprune.Plan` for the trained model.
        """
        scores = self.scores()
        round_to = resolve_round_to(round_to)
        if ratio is None:
            removals = {name: int((s == 0).sum()) for name, s in scores.items()}
        else:
            groups = [self.graph[name] for name in scores]
            removals = global_removals(groups, scores, check_ratio(ratio), self.min_channels, normalize=None)
        return plan_removals(self.graph, scores, removals, self.min_channels, round_to)

    def on_epoch_end(self, epoch, logs=None):
        scales = np.concatenate([gamma.numpy().ravel() for _, _, gamma in self._scales()] or [np.zeros(0)])
        channels, macs = self.plan_report(self.plan())
        report = {"penalty": self.l1 * float(np.abs(scales).sum()),
                  "zero_scales": float((scales == 0).mean()) if len(scales) else 0.0,
                  "channels": channels, "macs": macs}
        if logs is not None:
            logs.update({f"{self.log_prefix}_{key}": value for key, value in report.items()})
        if self.verbose:
            print(f"NetworkSlimming epoch {epoch + 1}: penalty {report['penalty']:.4g}, "
                  f"{report['zero_scales']:.1%} of scales zero, plan() keeps {channels:.1%} of prunable channels, "
                  f"MACs ratio {macs:.3f}")
        super().on_epoch_end(epoch, logs)

    def get_config(self):
        return {**super().get_config(), "l1": self.l1, "proximal": self.proximal}
