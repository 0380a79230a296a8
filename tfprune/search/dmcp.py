"""dmcp(): Differentiable Markov Channel Pruning (Guo et al., CVPR 2020) as a structure search.

A copy of the model gets one `MarkovChannelGate` per prunable channel group; `fit` trains the supernet's weights
with the sandwich rule, then alternates weight steps with architecture steps on the gates' logits (task loss plus a
budget loss on the expected MACs, or on the expected params or latency: any cost of `tfprune.measurement.costs`);
the gates' expected widths, repaired onto the target, become a `Plan` that keeps each group's first channels in the
order the search used.
"""

import math
import numbers
import time

import keras
import numpy as np

from tfprune import criteria
from tfprune.errors import PlanError
from tfprune.graph import ChannelGraph
from tfprune.layers import MarkovChannelGate
from tfprune.layers.markov_channel_gate import check_width_range
from tfprune.measurement.cost_targets import cost_model
from tfprune.measurement.costs import parse_target
from tfprune.measurement.macs_model import MacsModel
from tfprune.pruning.planning import plan_removals
from tfprune.pruning.plans import Plan
from tfprune.pruning.rebuilding import rebuild
from tfprune.search.dmcp_gating import gate_sites, gated_model
from tfprune.search.dmcp_result import DMCPResult
from tfprune.search.dmcp_training import BUDGET_TOLERANCE, DMCPRecorder, DMCPTrainer

CHANNEL_ORDERS = ("l1", "bn_scale", "identity")


def dmcp(model, data, target_macs=0.5, *, epochs=10, batch_size=64, width_range=(0.1, 1.0, 0.1),
         warmup_fraction=0.5, budget_weight=0.1, arch_learning_rate=0.05, subnets=4, distill=True,
         channel_order="l1", alpha_init="budget", loss=None, optimizer=None, callbacks=None, seed=None, verbose=1):
    """Search per-group widths under a MACs budget with DMCP; the caller's model is not modified.

    Args:
        model: a Functional or Sequential Keras model, compiled (its loss and a fresh copy of its optimizer are
            used) or not (then pass `loss`).
        data: `(x, y)` arrays, or a dataset of `(x, y)` batches that `fit` accepts (then `batch_size` is unused).
        target_macs: the budget, slim over original, in (0, 1), at least the cost of the smallest widths: a MACs
            ratio, or a dict naming the cost, `{"params": 0.5}` or `{"latency": 0.5, "runtime": "litert"}` (the
            budget loss then works on the expected params, or on the latency tables' prediction at the expected
            widths).
        epochs: training epochs in all; the first `round(warmup_fraction * epochs)` are the warm-up (weights only),
            the rest alternate weight and architecture steps.
        batch_size: batch size for array data.
        width_range: `(min_width, max_width, step)` of every gate (see `MarkovChannelGate`); max_width is 1.0.
        warmup_fraction: fraction of the epochs spent on the sandwich-rule warm-up, in [0, 1).
        budget_weight: weight of the budget loss against the task loss in the architecture steps.
        arch_learning_rate: learning rate of the alphas' Adam optimizer.
        subnets: sub-networks per weight step: the largest, the smallest and `subnets - 2` random ones (>= 2).
        distill: train the smaller sub-networks on the largest one's outputs (needs class probabilities, or logits
            with a `from_logits=True` loss) instead of the labels.
        channel_order: which channels each group keeps first: "l1" (filter norm of the producers, Li et al.),
            "bn_scale" (largest |gamma| of its BatchNormalizations) or "identity" (channel index, for a fresh model).
        alpha_init: the gates' starting logits: "budget" (one common value for every gate, chosen so that the
            expected MACs starts at the target: the architecture steps then trade widths between groups from the
            first step instead of first travelling to the budget) or a number (0.0 is the reference's start, every
            transition probability 1/2).
        loss: the task loss; default: the compiled model's.
        optimizer: the weights' optimizer; default: a fresh copy of the compiled model's, else Adam(1e-3).
        callbacks: more Keras callbacks for both `fit` calls (e.g. `keras.callbacks.TensorBoard`); the logs are
            `loss`, `task_loss_max`, `task_loss_min`, `task_loss_random`, `arch_task_loss`, `budget_loss` and
            `dmcp_expected_macs` (expected MACs over full MACs).
        seed: makes the search reproducible (`keras.utils.set_random_seed` and the width sampling).
        verbose: `fit`'s verbosity (1: progress bars).

    Returns:
        A `DMCPResult` (a `tfprune.search.SearchResult`): `plan`, `widths`, `macs_ratio` (of the rebuilt model),
        `slim_model(reinit=...)`, `model` (the trained supernet without gates), and DMCP's `expected_macs`,
        `expected_widths`, `marginals` and `figure()`.

    Example:

    >>> import numpy as np, tfprune
    >>> model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1, dense=16)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.random((64, 28, 28, 1), "float32"), rng.integers(0, 10, 64)
    >>> result = tfprune.search.dmcp(model, (x, y), 0.5, epochs=1, warmup_fraction=0.0, subnets=2, batch_size=32,
    ...                              seed=0, verbose=0)
    >>> abs(result.macs_ratio - 0.5) < 0.05
    True
    >>> slim = result.slim_model()
    """
    start = time.perf_counter()
    spec = parse_target(target_macs, "target_macs", high=1, closed=False)
    target = spec.ratio
    check_width_range(width_range)
    epochs = _check_int(epochs, "epochs", 1)
    subnets = _check_int(subnets, "subnets", 2)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, numbers.Real) \
            or not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1); got {warmup_fraction!r}.")
    warmup_epochs = round(warmup_fraction * epochs)
    if warmup_epochs >= epochs:
        raise ValueError(f"warmup_fraction={warmup_fraction} leaves no search epoch out of epochs={epochs}.")
    for value, what in ((budget_weight, "budget_weight"), (arch_learning_rate, "arch_learning_rate")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{what} must be a positive number; got {value!r}.")
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}; got {channel_order!r}.")
    if alpha_init != "budget" and (isinstance(alpha_init, bool) or not isinstance(alpha_init, numbers.Real)):
        raise ValueError(f"alpha_init must be 'budget' or a number; got {alpha_init!r}.")
    task_loss, from_logits = _task_loss(model, loss)
    if distill and model.outputs and (len(model.outputs) != 1 or (model.outputs[0].shape[-1] or 0) < 2):
        raise ValueError("distill=True distils class probabilities, so the model needs one output with a class "
                         "axis; pass distill=False.")
    fit_data = _fit_arguments(data, batch_size)

    if seed is not None:
        keras.utils.set_random_seed(seed)
    supernet, gated, gates, cost, ranks, skipped = build_supernet(model, spec, width_range, channel_order)
    graph = cost.graph
    macs = cost if cost.kind == "macs" else MacsModel(supernet, graph=graph)
    groups = [graph[name] for name in gates]
    smallest = {name: gate.min_channels for name, gate in gates.items()}
    trainer = DMCPTrainer(gated, gates, cost, target, task_loss, from_logits,
                          keras.optimizers.Adam(arch_learning_rate), budget_weight=budget_weight,
                          subnets=subnets, distill=distill, seed=seed)
    trainer.compile(optimizer=_weight_optimizer(model, optimizer))
    if alpha_init == "budget":
        alpha_init = start_at_budget(trainer, (1 - BUDGET_TOLERANCE / 2) * target)
    for gate in gates.values():
        gate.alpha.assign(np.full(gate.n_groups, alpha_init, "float32"))
    trainer.build(trainer.gated.inputs[0].shape if len(trainer.gated.inputs) == 1 else None)
    recorder = DMCPRecorder(trainer, every=_record_every(fit_data, epochs))
    logs = {}
    if warmup_epochs:
        trainer.set_phase(train_weights=True, train_arch=False)
        _merge(logs, trainer.fit(**fit_data, epochs=warmup_epochs, callbacks=[recorder, *(callbacks or [])],
                                 verbose=verbose).history)
    warmup_steps = recorder.step
    recorder.phase = "search"
    trainer.set_phase(train_weights=True, train_arch=True)
    _merge(logs, trainer.fit(**fit_data, initial_epoch=warmup_epochs, epochs=epochs,
                             callbacks=[recorder, *(callbacks or [])], verbose=verbose).history)
    if not recorder.history or recorder.history[-1]["step"] != recorder.step:
        recorder.history.append(recorder.snapshot())
    for gate in gates.values():
        gate.set_full()

    expected = {name: float(gate.expected_width()) for name, gate in gates.items()}
    rounded = {name: min(max(round(e), smallest[name]), gates[name].channels) for name, e in expected.items()}
    widths = repair_widths(expected, cost, ranks, target, smallest)
    scores = {name: -ranks[name].astype(np.float64) for name in widths}
    plan = plan_removals(graph, scores, {name: graph[name].width - w for name, w in widths.items()})
    uniform = uniform_widths(cost, ranks, target, {g.name: g.width for g in groups}, smallest)
    history = [{"step": h["step"], "phase": h["phase"], "widths": h["expected_widths"],
                "macs_ratio": h["expected_macs"], "fitness": None} for h in recorder.history]
    return DMCPResult(
        plan=plan, widths={name: len(kept) for name, kept in plan.keep.items()}, macs_ratio=macs.ratio(plan),
        fitness=None, evaluations=recorder.step - warmup_steps, history=history, model=supernet, method="dmcp",
        target_macs=target, uniform_widths=uniform, seconds=time.perf_counter() - start,
        expected_macs=recorder.history[-1]["expected_macs"], expected_widths=expected, marginals=recorder.marginals(),
        expected_architecture_ratio=cost.ratio_of_widths(rounded, ranks), skipped=skipped,
        epochs=logs, warmup_steps=warmup_steps, cost=cost.kind, cost_ratio=cost.ratio(plan))


def build_supernet(model, target, width_range, channel_order="l1"):
    """A gated copy of `model` for the search; `target` is a ratio or a cost target (see `parse_target`).

    Returns:
        `(supernet, gated, gates, cost, ranks, skipped)`: the copy (no gates; its layers are the gated model's),
        the gated model, `{group: MarkovChannelGate}`, the copy's cost model of the target (a `MacsModel` for a
        MACs target), `{group: rank of each channel}`
        (the order the gates keep channels in) and `{group: reason}` for prunable groups that cannot be gated.
    """
    low, _, _ = check_width_range(width_range)
    graph = ChannelGraph(model)
    if not graph.prunable_groups:
        raise PlanError(f"Model '{model.name}' has no prunable channel group, so there is nothing to search.")
    supernet = rebuild(model, Plan(keep={}, widths={}), graph=graph)  # a copy; the caller's model is left alone
    graph = ChannelGraph(supernet)
    sites, skipped = gate_sites(graph, graph.prunable_groups)
    groups = [g for g in graph.prunable_groups if g.name not in skipped]
    if not groups:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise PlanError(f"No prunable group of '{model.name}' can be gated: {reasons}.")
    ranks = {g.name: _ranks(graph, g, supernet, channel_order) for g in groups}
    gates = {g.name: MarkovChannelGate(g.width, width_range, channel_order=np.argsort(ranks[g.name]),
                                       name=f"dmcp_gate_{g.index}") for g in groups}
    spec = parse_target(target, "target_macs", high=1, closed=False)
    cost = cost_model(supernet, spec, graph=graph)
    lowest = cost.ratio_of_widths({name: gate.min_channels for name, gate in gates.items()}, ranks)
    if spec.ratio < lowest:
        raise ValueError(f"The target {spec} is below the smallest reachable {cost.unit} ratio {lowest:.4f} "
                         f"(every group at min_width={low}); raise the target or lower width_range's min_width.")
    return supernet, gated_model(supernet, gates, sites), gates, cost, ranks, skipped


def start_at_budget(trainer, ratio):
    """The common logit of all gates at which the expected MACs ratio is `ratio` (bisection; the expected MACs grows
    with every logit)."""
    gates = trainer.gates

    def expected(alpha):
        for gate in gates:
            gate.alpha.assign(np.full(gate.n_groups, alpha, "float32"))
        return float(trainer.expected_macs_ratio())

    lo, hi = -12.0, 12.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if expected(mid) < ratio:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def repair_widths(expected, macs, ranks, target, smallest):
    """Integer widths close to `expected` (scaled by one common factor) whose cost ratio (`macs`: a `MacsModel`, or
    any cost model) is the largest one not above `target`, none below `smallest` nor above the group's width.

    DMCP's reference rounds the expected widths and never checks them against the budget; the expected MACs is
    E[c_in]·E[c_out] per layer, not the MACs of the expected widths, so the two can differ by several percent.
    """
    full = {name: macs.graph[name].width for name in expected}

    def widths(scale):
        return {name: min(max(round(scale * e), smallest[name]), full[name]) for name, e in expected.items()}

    def ratio(scale):
        return macs.ratio_of_widths(widths(scale), ranks)

    lo, hi = 0.0, max(full[name] / max(e, 1e-9) for name, e in expected.items())
    if ratio(hi) <= target:
        return widths(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if ratio(mid) <= target:
            lo = mid
        else:
            hi = mid
    chosen = widths(lo)
    # Rounding moves in steps of whole channels: add single channels, the most under-rounded group first, while the
    # budget allows — first only up to the widths of the scale just above the budget; then, if the MACs are still
    # more than 2% under it (coarse groups of few channels), to any group.
    for ceiling in (widths(hi), full):
        chosen = _top_up(chosen, ceiling, lambda w: macs.ratio_of_widths(w, ranks), target,
                         lambda name, w: w / max(lo * expected[name], 1e-9))
        if macs.ratio_of_widths(chosen, ranks) >= 0.98 * target:
            break
    return chosen


def _top_up(chosen, ceiling, ratio, target, fill):
    while True:
        room = sorted((name for name in chosen if chosen[name] < ceiling[name]), key=lambda n: fill(n, chosen[n]))
        for name in room:
            trial = {**chosen, name: chosen[name] + 1}
            if ratio(trial) <= target:
                chosen = trial
                break
        else:
            return chosen


def uniform_widths(macs, ranks, target, full, smallest):
    """One common keep fraction for every group (at least `smallest`), the largest whose cost ratio fits `target`."""
    return repair_widths({name: float(w) for name, w in full.items()}, macs, ranks, target, smallest)


def _ranks(graph, group, model, channel_order):
    """Rank of each channel of `group` (0 is kept first)."""
    if channel_order == "identity":
        return np.arange(group.width)
    if channel_order == "l1":
        scores = criteria.l1(graph, group, model)
    else:
        scores = np.full(group.width, -np.inf)
        for member in group.members:
            layer = graph.layers.get(member.layer)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.scale and member.side == "in":
                gamma = np.abs(keras.ops.convert_to_numpy(layer.gamma))
                scores = np.maximum(scores, graph.scatter(group, graph.recorded(member.layer)["in"], gamma,
                                                          reduce=np.maximum))
        if np.isneginf(scores).any():
            raise ValueError(f"channel_order='bn_scale' needs a BatchNormalization with a scale on every channel of "
                             f"group '{group.name}'; use channel_order='l1'.")
    return np.argsort(np.argsort(-np.asarray(scores), kind="stable"), kind="stable")


def _check_int(value, what, least):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{what} must be an integer >= {least}; got {value!r}.")
    return int(value)


def _task_loss(model, loss):
    """The task loss callable and whether it takes logits."""
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError(f"Model '{model.name}' is not compiled and no loss was given: pass loss=... (e.g. "
                         "'sparse_categorical_crossentropy') or compile the model first.")
    if isinstance(loss, list | tuple | dict):
        raise ValueError("tfprune.search.dmcp searches single-output models with one loss; got a loss per output.")
    fn = keras.losses.get(loss)
    from_logits = bool(getattr(fn, "from_logits", False) or getattr(fn, "_fn_kwargs", {}).get("from_logits", False))
    return fn, from_logits


def _weight_optimizer(model, optimizer):
    if optimizer is not None:
        return keras.optimizers.get(optimizer)
    if getattr(model, "optimizer", None) is not None:
        return keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
    return keras.optimizers.Adam(1e-3)


def _fit_arguments(data, batch_size):
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise ValueError(f"data must be (x, y) or a dataset of (x, y) batches; got a sequence of {len(data)}.")
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"data's x and y differ in length: {len(x)} and {len(y)}.")
        return {"x": x, "y": y, "batch_size": batch_size, "shuffle": True}
    return {"x": data}


def _record_every(fit_data, epochs):
    """Record about 400 points over the whole search."""
    if "y" in fit_data:
        steps = math.ceil(len(fit_data["x"]) / fit_data["batch_size"])
    else:
        try:
            steps = len(fit_data["x"])
        except TypeError:
            return 10
    return max(1, steps * epochs // 400)


def _merge(logs, history):
    for name, values in history.items():
        logs.setdefault(name, []).extend(values)
