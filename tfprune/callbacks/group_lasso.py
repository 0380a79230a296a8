"""GroupLasso: structured sparsity learning (SSL, Wen et al., NeurIPS 2016) during training."""

import keras
import numpy as np

from tfprune.callbacks.pruning_callback import PruningCallback, check_non_negative
from tfprune.deployment.channel_tiles import resolve_round_to
from tfprune.pruning.planning import check_ratio, global_removals, plan_removals

# Which kernel axes one group of each kind spans, for a kernel (*spatial, in, out) (Dense: (in, out)).
KINDS = ("filter", "channel", "shape", "depth")
_KERNEL_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Dense)


def _reduced_axes(kind, rank):
    every = tuple(range(rank))
    return {"filter": every[:-1], "channel": every[:-2] + (rank - 1,), "shape": (rank - 1,), "depth": every}[kind]


class GroupLasso(PruningCallback):
    """Group-lasso penalty on convolution and Dense kernels during `fit`; groups driven to zero become the plan.

    The penalty is `strength * sum over groups g of ||W_g||_2`, over the kernels of `Conv1D/2D/3D` (ungrouped) and
    `Dense` layers whose channels belong to prunable groups. Kinds of groups (SSL's names), for a kernel
    (*spatial, in, out):

    - "filter": one group per output filter `W[..., o]` — a zero filter makes its channel constant;
    - "channel": one group per input channel `W[..., c, :]` — a zero slice means nobody reads the channel;
    - "shape": one group per kernel position and input channel `W[k, c, :]` (regularises only; not pruned here);
    - "depth": the whole kernel (regularises only; not pruned here).

    Applied as `proximal=True` (default): after each optimizer step every group is shrunk,
    `W_g <- W_g * max(0, 1 - learning_rate * strength / ||W_g||)` (proximal gradient descent), so groups reach
    exactly zero; or `proximal=False`: the penalty is added to the loss (a regularizer on the kernel, so its
    gradient goes through the optimizer; norms are smoothed by 1e-12 so the gradient exists at zero). With several
    kinds the proximal steps are applied one after the other.

    `plan()` removes a channel of a prunable group when every layer that creates it has a zero filter for it
    ("filter") or every layer that reads it has a zero input slice for it ("channel"), with norms at most
    `threshold`. Removing a "channel"-zero channel changes nothing; removing a "filter"-zero channel drops the
    constant that a following bias or BatchNormalization still adds, which fine-tuning recovers.

    Logs, every epoch (place this callback before `CSVLogger` or `TensorBoard`): `group_lasso_penalty`,
    `group_lasso_zero_groups` (fraction of all penalised groups that are zero), `group_lasso_channels` and
    `group_lasso_macs` (fraction of prunable channels kept and MACs ratio of `plan()`).

    Args:
        strength: the penalty weight (lambda).
        groups: one kind or a tuple of kinds from "filter", "channel", "shape", "depth".
        proximal: group soft-thresholding after each step (True) or a loss term (False).
        threshold: a group whose norm is at most this counts as zero (for the plan and the logs).
        min_channels, prune_outputs, backup_dir, verbose: see `PruningCallback`.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> lasso = tfprune.callbacks.GroupLasso(strength=1.0)
    >>> _ = model.fit(np.ones((16, 8, 8, 1)), np.zeros((16, 2)), epochs=5, verbose=0, callbacks=[lasso])
    >>> len(lasso.plan().keep["conv"]) < 8  # filters driven to exactly zero are removed
    True
    """

    log_prefix = "group_lasso"

    def __init__(self, strength=1e-4, groups="filter", proximal=True, threshold=0.0, min_channels=1,
                 prune_outputs=False, backup_dir=None, verbose=0):
        super().__init__(min_channels=min_channels, prune_outputs=prune_outputs, backup_dir=backup_dir,
                         verbose=verbose)
        self.strength = check_non_negative(strength, "strength")
        kinds = (groups,) if isinstance(groups, str) else tuple(groups)
        if not kinds or any(kind not in KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"groups must be one of {KINDS} or a tuple of distinct ones; got {groups!r}.")
        self.groups = kinds
        if not isinstance(proximal, bool):
            raise ValueError(f"proximal must be True (proximal step) or False (loss term); got {proximal!r}.")
        self.proximal = proximal
        self.threshold = check_non_negative(threshold, "threshold")

    def _kernels(self):
        """`{layer path: (layer, sides that belong to prunable groups)}` for the penalised layers."""
        prunable = {g.index for g in self.graph.prunable_groups}
        found = {}
        for path, layer in self.graph.layers.items():
            if not isinstance(layer, _KERNEL_LAYERS) or getattr(layer, "groups", 1) != 1:
                continue
            sides = {side for side, elems in self.graph.recorded(path).items()
                     if prunable.intersection(self.graph.channels(elems)[0].tolist())}
            if sides:
                found[path] = (layer, sides)
        return found

    def _penalised(self):
        """`(layer path, kernel variable, kind)` for every penalty term."""
        terms = []
        for path, (layer, sides) in self._kernels().items():
            for kind in self.groups:
                if kind in ("shape", "depth") or {"filter": "out", "channel": "in"}[kind] in sides:
                    terms.append((path, layer.kernel, kind))
        return terms

    def variable_updates(self):
        if not self.proximal:
            return {}
        updates = {}
        optimizer = self.model.optimizer  # read here: under JAX, `self.model` inside the traced step would sync state
        for _, kernel, kind in self._penalised():
            axes = _reduced_axes(kind, len(kernel.shape))

            def shrink(w, axes=axes):
                step = keras.ops.cast(optimizer.learning_rate, w.dtype) * self.strength
                norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(w), axis=axes, keepdims=True))
                return w * keras.ops.relu(1 - step / keras.ops.maximum(norm, 1e-30))

            updates.setdefault(kernel.path, []).append(shrink)
        return updates

    def variable_penalties(self):
        if self.proximal:
            return {}
        kinds = {}
        for _, kernel, kind in self._penalised():
            kinds.setdefault(kernel.path, []).append(_reduced_axes(kind, len(kernel.shape)))

        def penalty(w, axes_list):
            return self.strength * sum(keras.ops.sum(keras.ops.sqrt(keras.ops.sum(keras.ops.square(w), axis=axes)
                                                                    + 1e-12)) for axes in axes_list)

        return {path: lambda w, axes_list=axes_list: penalty(w, axes_list) for path, axes_list in kinds.items()}

    def group_norms(self):
        """`[(layer path, kind, norms)]`: the current norm of every penalised group."""
        self._require_model()
        return [(path, kind, np.sqrt(np.square(kernel.numpy()).sum(axis=_reduced_axes(kind, len(kernel.shape)))))
                for path, kernel, kind in self._penalised()]

    def scores(self):
        """`{group name: per-channel norm}`: for each channel, the largest norm of its groups ("filter": the filters
        of the layers creating it; "channel": the input slices of the layers reading it), for every prunable group
        whose creating (or reading) layers are all penalised."""
        norms = {(path, kind): n for path, kind, n in self.group_norms()}
        scores = {}
        for group in self.graph.prunable_groups:
            for kind, side in (("filter", "out"), ("channel", "in")):
                makers = [m for m in group.members if m.side == side and _mixes_channels(self.graph.layers.get(
                    m.layer))]
                if kind not in self.groups or not makers or any((m.layer, kind) not in norms for m in makers):
                    continue  # a layer on this side is not penalised: its channels cannot be shown unused
                per_channel = scores.get(group.name, np.zeros(group.width))
                for m in makers:
                    elems = self.graph.recorded(m.layer)[side]
                    per_channel = np.maximum(per_channel, self.graph.scatter(group, elems, norms[(m.layer, kind)],
                                                                             reduce=np.maximum))
                scores[group.name] = per_channel
        return scores

    def plan(self, ratio=None, round_to=1):
        """The plan by group norms.

        Args:
            ratio: None removes the channels whose groups reached zero (norm at most `threshold`, see the class
                docstring); a number in [0, 1) removes that fraction of all scored channels, those with the
                smallest norms (one global threshold, as Network Slimming does with BN scales).
            round_to: kept counts are rounded up to a multiple of this (which may keep some zero channels).

        Returns:
            A `tfprune.Plan` for the trained model.
        """
        round_to = resolve_round_to(round_to)
        scores = self.scores()
        if ratio is None:
            removals = {name: int((s <= self.threshold).sum()) for name, s in scores.items()}
        else:
            groups = [self.graph[name] for name in scores]
            removals = global_removals(groups, scores, check_ratio(ratio), self.min_channels, normalize=None)
        return plan_removals(self.graph, scores, removals, self.min_channels, round_to)

    def on_epoch_end(self, epoch, logs=None):
        norms = self.group_norms()
        n_groups = sum(n.size for _, _, n in norms)
        channels, macs = self.plan_report(self.plan())
        report = {"penalty": self.strength * float(sum(n.sum() for _, _, n in norms)),
                  "zero_groups": sum(int((n <= self.threshold).sum()) for _, _, n in norms) / max(n_groups, 1),
                  "channels": channels, "macs": macs}
        if logs is not None:
            logs.update({f"{self.log_prefix}_{key}": value for key, value in report.items()})
        if self.verbose:
            print(f"GroupLasso epoch {epoch + 1}: penalty {report['penalty']:.4g}, {report['zero_groups']:.1%} of "
                  f"{n_groups} groups zero, plan() keeps {channels:.1%} of prunable channels, MACs ratio {macs:.3f}")
        super().on_epoch_end(epoch, logs)

    def get_config(self):
        return {**super().get_config(), "strength": self.strength, "groups": self.groups,
                "proximal": self.proximal, "threshold": self.threshold}


def _mixes_channels(layer):
    """Whether a layer creates or reads channels through a kernel (as opposed to per-channel layers like BN)."""
    return any(hasattr(layer, name) for name in ("kernel", "depthwise_kernel", "pointwise_kernel"))
