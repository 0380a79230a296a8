"""reconstruct(): He et al.'s least-squares reconstruction of a pruned model (Channel Pruning, ICCV 2017).

After `rebuild` has sliced the weights, every plain convolution (`Conv1D/2D/3D`, `groups=1`) or `Dense` layer
that lost input channels is refitted: on sampled output positions, its kernel and bias are the least-squares
solution (scipy) of

    min_W,b ||X' W + b − Y||²   (+ a tiny ridge term `ridge`, against channels almost never active on the samples)

where `X'` are the layer's input patches in the **pruned** model (whose earlier layers are already refitted, so
errors do not accumulate) and `Y` the layer's linear output (before any fused activation) in the **original**
model, on the filters the plan keeps. Layers are refitted in waves: a layer is read once every refitted layer upstream
of it has its new weights, and one inference pass over the data serves all layers of a wave.

Rules for what is refitted (`Reconstruction.skipped` lists the others, with the reason):

* only layers that compute new channels from their input channels (convolutions, Dense; normalisation and other
  per-channel layers are only sliced) and whose input lost channels (a layer whose inputs are all kept is only
  sliced on its output side);
* only plain convolutions and `Dense` layers called once: grouped, depthwise, separable and transposed
  convolutions and shared layers are left as `rebuild` sliced them;
* only layers with at least as many sampled positions as unknowns per filter (kernel entries + bias); with fewer
  the fit would interpolate the samples, so the layer is left sliced and a warning says how many images it needs.

**Residual blocks.** Each layer reproduces its own original output. The layers reading a residual stage (channels
tied by `Add`s) are refitted like any other, and the last convolution of a residual branch, which loses output
channels with the stage, keeps its original target on the channels kept. He et al.'s multi-branch refinement — the
branch's last layer also absorbing the error that arrives through the shortcut (target `Y1 + Y2 − Y2'`) — is not
done: the shortcut's error is left to fine-tuning.
"""

import dataclasses
import warnings

import keras
import numpy as np
from scipy import linalg

from tfprune.criteria.channel_pruning.capturing import LayerInputs
from tfprune.criteria.channel_pruning.patches import LinearPatches, sampling_seed, why_not_linear
from tfprune.graph import ChannelGraph
from tfprune.graph.keras_nodes import is_graph_model, model_inputs, run_nodes


@dataclasses.dataclass
class LayerFit:
    """One refitted layer: relative errors `||pred − Y|| / ||Y||` of its linear output on the samples, with the
    weights as `rebuild` sliced them (`error_before`) and after the least-squares refit (`error_after`)."""

    path: str
    samples: int
    unknowns: int
    error_before: float
    error_after: float


@dataclasses.dataclass
class Reconstruction:
    """What `reconstruct` did: the layers refitted (in order) and the layers skipped with the reason."""

    fits: list
    skipped: dict

    def __str__(self):
        lines = [f"{'layer':<32} {'samples':>8} {'unknowns':>9} {'error sliced':>13} {'refitted':>9}"]
        lines += [f"{f.path:<32} {f.samples:>8} {f.unknowns:>9} {f.error_before:>13.4f} {f.error_after:>9.4f}"
                  for f in self.fits]
        lines += [f"{path:<32} skipped: {why}" for path, why in self.skipped.items()]
        return "\n".join(lines)


def reconstruct(model, slim, plan, data, images=256, locations_per_image=10, batch_size=32, seed=0, verbose=0,
                graph=None, ridge=1e-4):
    """Refit, in place, the layers of `slim` that lost input channels so they reproduce `model`'s outputs.

    Works with any plan (LASSO's, L1's, ...); `tfprune.prune(..., criterion="lasso")` calls it. See the module
    docstring for the method and for which layers are refitted.

    Args:
        model: the original model (read only).
        slim: `tfprune.rebuild(model, plan)` (reinit "keep"); its weights are overwritten.
        plan: the plan `slim` was rebuilt with.
        data: the inputs to sample (anything `model.predict` accepts); its first `images` examples are used.
        images: how many examples are sampled (He et al.: 5000).
        locations_per_image: random output positions sampled per example and layer (He et al.: 10).
        batch_size: batch size of the inference passes.
        seed: seed of the sampled positions.
        verbose: 1 shows a progress bar.
        graph: `model`'s `ChannelGraph`, if already built.
        ridge: a small Tikhonov term, relative to the mean squared input value: the fit minimises
            `||X' W + b − Y||² + λ||W||²` with `λ = ridge × mean(diag(X'ᵀX'))`. It keeps channels that are almost
            never active on the samples (dead ReLUs) from getting huge weights that fit the sampled positions and
            blow up elsewhere; 0 is plain least squares, as in He et al.

    Returns:
        A `Reconstruction` report.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> keras.utils.set_random_seed(0)
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    >>> x = keras.layers.Conv2D(4, 3, name="next")(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> plan = tfprune.Plan(keep={"conv": [0, 1, 2, 3]}, widths={"conv": 8})
    >>> slim = tfprune.rebuild(model, plan)
    >>> data = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    >>> report = reconstruct(model, slim, plan, data, images=16)
    >>> [(f.path, f.error_after < f.error_before) for f in report.fits]
    [('next', True)]
    """
    return _Reconstructor(model, slim, plan, data, images, locations_per_image, batch_size, seed, verbose,
                          graph, ridge).run(fit=True)


def output_errors(model, slim, plan, data, images=256, locations_per_image=10, batch_size=32, seed=0, graph=None):
    """How far `slim`'s layers that lost input channels are from `model`'s: `{path: relative error}`.

    The error of a layer is `||Y' − Y|| / ||Y||` of its linear output (before any fused activation) on the filters
    the plan keeps, on sampled positions, `Y'` in `slim` and `Y` in `model` — the quantity `reconstruct` minimises.
    Arguments as in `reconstruct`; nothing is changed.
    """
    report = _Reconstructor(model, slim, plan, data, images, locations_per_image, batch_size, seed, 0,
                            graph).run(fit=False)
    return {f.path: f.error_before for f in report.fits}


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    return int(value)


def _layer_at(model, path):
    layer = model
    for name in path.split("/"):
        layer = layer.get_layer(name)
    return layer


def _upstream(model, paths):
    """`{path: set of paths in `paths` that the layer's input depends on}` for every path in `paths`."""
    paths, found = set(paths), {}

    def walk(m, ins, prefix):
        def call(node, values):
            op, path = node.operation, prefix + node.operation.name
            args = [values[id(t)] for t in node.arguments.keras_tensors]
            seen = frozenset().union(*args)
            if path in paths:
                found.setdefault(path, seen)
            if is_graph_model(op):
                return walk(op, args, path + "/")
            return [seen | {path} if path in paths else seen] * len(node.outputs)

        return run_nodes(m, ins, call)

    walk(model, [frozenset()] * len(model_inputs(model)), "")
    return found


class _Reconstructor:
    def __init__(self, model, slim, plan, data, images, locations_per_image, batch_size, seed, verbose, graph,
                 ridge=0.0):  # output_errors fits nothing
        if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge >= 0:
            raise ValueError(f"ridge must be a number >= 0; got {ridge!r}.")
        self.ridge = float(ridge)
        if data is None:
            raise ValueError("Reconstruction needs data: the inputs to sample feature maps from.")
        self.model, self.slim, self.data = model, slim, data
        self.images = _check_count(images, "images")
        self.locations = _check_count(locations_per_image, "locations_per_image")
        self.batch_size = _check_count(batch_size, "batch_size")
        self.seed, self.verbose = int(seed), int(verbose)
        self.graph = graph or ChannelGraph(model, prune_outputs=plan.prune_outputs)
        self.model = self.graph.model  # the model itself, or its trace: the graph walked for layer paths
        plan.validate(self.graph)
        channel_keep = self.graph.channel_keep(plan)
        self.skipped, self.keep = {}, {}
        for path, layer in self.graph.layers.items():
            keep = self.graph.layer_keep(path, channel_keep)
            if not {"in", "out"} <= keep.keys() or keep["in"].all():
                continue  # not a layer that mixes input channels into new ones, or nothing removed from its input
            reason = why_not_linear(layer, self.graph.rules[path])
            if reason is None and self.graph.rules[path].weight_index(layer, keep).keys() != {"kernel", "bias"}:
                reason = "its weights are not indexed as a kernel and a bias"
            if reason is None:
                self.keep[path] = keep
            else:
                self.skipped[path] = reason

    def targets(self):
        """Sample the original model: per layer, the geometry, positions and linear outputs on kept filters."""
        taps = LayerInputs(self.model, list(self.keep))
        geometry, where, targets = {}, {}, {p: [] for p in self.keep}
        seen = 0
        for batch in taps.batches(self.data, self.batch_size, examples=self.images):
            n = len(next(iter(batch.values())))
            for path, x in batch.items():
                if path not in geometry:
                    geometry[path] = LinearPatches(self.graph.layers[path], x.shape[1:])
                    where[path] = geometry[path].sample_positions(self.images, self.locations,
                                                                  sampling_seed(self.seed, path))
                kernel, bias = geometry[path].weights(self.graph.layers[path])
                kept_out = self.keep[path]["out"]
                patches = geometry[path].extract(x, where[path][seen: seen + n])
                targets[path].append(geometry[path].linear_output(
                    patches, kernel[..., kept_out], None if bias is None else bias[kept_out]))
            seen += n
        for path, calls in taps.calls.items():
            if calls != 1:
                self.skipped[path] = f"shared: called {calls} times"
        return geometry, where, {p: np.concatenate(t) for p, t in targets.items() if p not in self.skipped}

    def run(self, fit):
        if not self.keep:
            return Reconstruction([], self.skipped)
        geometry, where, targets = self.targets()
        fits = []
        for path in list(targets):
            layer = _layer_at(self.slim, path)
            unknowns = geometry[path].kernel_positions * int(self.keep[path]["in"].sum()) + int(layer.use_bias)
            if fit and len(targets[path]) < unknowns:
                need = -(-unknowns // where[path].shape[1])
                self.skipped[path] = (f"{len(targets[path])} sampled positions for {unknowns} unknowns per filter; "
                                      f"needs images >= {need}")
                warnings.warn(f"Layer '{path}' is not refitted: {self.skipped[path]}.", stacklevel=3)
                del targets[path]
        order = self.waves(list(targets)) if fit else [list(targets)]
        progress = keras.utils.Progbar(len(targets), verbose=self.verbose, unit_name="layer") if self.verbose else None
        done = 0
        for wave in order:
            patches = self.slim_patches(wave, geometry, where)
            for path in wave:
                fits.append(self.refit(path, patches.pop(path), targets.pop(path), fit))
                done += 1
                if progress:
                    progress.update(done)
        return Reconstruction(fits, self.skipped)

    def waves(self, paths):
        upstream = _upstream(self.model, paths)
        level = {}
        for path in paths:  # graph.layers is in execution order, so upstream layers come first
            level[path] = 1 + max((level[p] for p in upstream[path] if p in level), default=-1)
        return [[p for p in paths if level[p] == i] for i in range(max(level.values(), default=-1) + 1)]

    def slim_patches(self, paths, geometry, where):
        taps = LayerInputs(self.slim, paths)
        patches, seen = {p: [] for p in paths}, 0
        for batch in taps.batches(self.data, self.batch_size, examples=self.images):
            n = len(next(iter(batch.values())))
            for path, x in batch.items():
                patches[path].append(geometry[path].extract(x, where[path][seen: seen + n]))
            seen += n
        return {p: np.concatenate(v) for p, v in patches.items()}

    def refit(self, path, patches, target, fit):
        layer = _layer_at(self.slim, path)
        kernel = np.asarray(layer.kernel)
        bias = np.asarray(layer.bias) if layer.use_bias else None
        flat = patches.reshape(len(patches), -1).astype(np.float64)
        scale = float(np.linalg.norm(target)) or 1.0
        before = flat @ kernel.reshape(flat.shape[1], -1) + (0 if bias is None else bias)
        error_before = float(np.linalg.norm(before - target)) / scale
        unknowns = flat.shape[1] + int(bias is not None)
        if not fit:
            return LayerFit(path, len(flat), unknowns, error_before, error_before)
        design = np.hstack([flat, np.ones((len(flat), 1))]) if bias is not None else flat
        if self.ridge == 0:
            solution = linalg.lstsq(design, target, check_finite=False)[0]
        else:  # normal equations with λ = ridge × mean squared input on the kernel entries (not on the bias)
            normal = design.T @ design
            weights = np.arange(flat.shape[1])
            normal[weights, weights] += self.ridge * float(np.mean(np.diag(normal)[weights]))
            solution = linalg.solve(normal, design.T @ target, assume_a="pos", check_finite=False)
        error_after = float(np.linalg.norm(design @ solution - target)) / scale
        layer.kernel.assign(solution[: flat.shape[1]].reshape(kernel.shape).astype(kernel.dtype))
        if bias is not None:
            layer.bias.assign(solution[-1].astype(bias.dtype))
        return LayerFit(path, len(flat), unknowns, error_before, error_after)
