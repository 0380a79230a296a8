"""Channel selection by LASSO regression (He et al., "Channel Pruning for Accelerating Very Deep Neural Networks",
ICCV 2017), the selection half of `criterion="lasso"`; `reconstruction` beside it is the other half.

**The objective.** A plain convolution or Dense layer that reads a group's channels computes, at an output
position, `Y = Σ_c Z_c + (the rest)`, where `Z_c = X_c · W_c` is the contribution of input channel c: its slice of
the input patch times its slice of the kernel (summed over every position of the channel when a Flatten spreads
it). Feature-map patches are sampled (`images` examples × `locations_per_image` random output positions), and the
channels are chosen by LASSO on one coefficient per channel,

    min_β ||Σ_c Z_c − Σ_c β_c Z_c||² + α ||β||₁,

with α searched by bisection (on a log scale) until exactly the requested number of β are non-zero. scikit-learn's
`Lasso` solves each problem. The sampled rows enter only through the Gram matrix `G = [<Z_c, Z_d>]` (channels ×
channels), so the problem is handed to `Lasso` in an exactly equivalent compressed form: `A = Λ^½ Vᵀ` from the
eigendecomposition `G = V Λ Vᵀ` and target `A·1`, which has the same objective up to a constant.

**Groups with several consumers** (a tensor read by two convolutions, channels tied by residual `Add`s): the
objective is the sum over the consumers of their *relative* reconstruction errors, each consumer's term divided by
`||Σ_c Z_c||²`, so a consumer with large activations does not outvote the others (He et al. select per layer; a
residual-tied group has no single layer, and this is the natural per-layer objective summed). Consumers are the
plain convolutions (`Conv1D/2D/3D` with `groups=1`) and `Dense` layers reading the group's channels, called once;
depthwise convolutions, pooling, normalisation and activations in between pass channels on and are looked
through. Grouped, transposed and separable convolutions and shared layers are left out of the objective; a group
that no plain convolution or Dense layer reads cannot be selected by LASSO and is refused with an error.

**Features of the original network.** `tfprune.plan(..., criterion="lasso")` measures every group on the
original network, in one pass over the data (He et al. select layer by layer on the already-pruned network; here
the selection of all groups is one plan, and only the reconstruction, `tfprune.prune`, is sequential).
"""

import warnings

import numpy as np

from tfprune.criteria.channel_pruning.capturing import LayerInputs, NotEnoughData
from tfprune.criteria.channel_pruning.patches import LinearPatches, sampling_seed, why_not_linear


def lasso_keep(gram, n_keep, max_steps=60):
    """Choose `n_keep` of the channels whose contributions have Gram matrix `gram`, by LASSO on their coefficients.

    Solves `min_β (1−β)ᵀ G (1−β) + α|β|₁` (which is `||Σ_c Z_c − Σ_c β_c Z_c||² + α|β|₁`) with scikit-learn's
    `Lasso`, bisecting log α until exactly `n_keep` coefficients are non-zero.

    Args:
        gram: `(channels, channels)` symmetric positive semi-definite matrix `[<Z_c, Z_d>]`.
        n_keep: how many channels to keep, 1 <= n_keep <= channels.
        max_steps: bisection steps before giving up on an exact count.

    Returns:
        `(kept, beta, alpha, exact, exit_alpha)`: sorted kept indices; the coefficients at the chosen α; the
        chosen α (relative to the α that zeroes every coefficient); whether the count was hit exactly (if not,
        the solution with the nearest count is trimmed to the `n_keep` largest contributions `|β_c|·||Z_c||` or
        extended by the channels most correlated with its residual); and for every channel the largest tried
        relative α at which its coefficient was non-zero (0 if never), a ranking of the rest.

    Example:

    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(200, 4))
    >>> z[:, 3] = 0.1 * z[:, 0]  # a channel that channel 0 can stand in for, and weak
    >>> kept, beta, alpha, exact, _ = lasso_keep(z.T @ z, 3)
    >>> kept.tolist(), exact
    ([0, 1, 2], True)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    gram = np.asarray(gram, np.float64)
    width = len(gram)
    if gram.shape != (width, width):
        raise ValueError(f"gram must be a square matrix; got shape {gram.shape}.")
    if not 1 <= n_keep <= width:
        raise ValueError(f"n_keep must be in [1, {width}]; got {n_keep}.")
    if n_keep == width:
        return np.arange(width), np.ones(width), 0.0, True, np.ones(width)
    gram = (gram + gram.T) / 2
    eigenvalues, vectors = np.linalg.eigh(gram)
    top = max(float(eigenvalues.max()), 0.0)
    if top == 0.0:
        raise ValueError("Every channel contributes zero on the sampled data: nothing to select with.")
    rank = eigenvalues > top * 1e-12
    design = np.sqrt(eigenvalues[rank])[:, None] * vectors[:, rank].T  # A with AᵀA = G
    target = design.sum(axis=1)  # A·1
    rows = len(design)
    alpha_max = float(np.abs(design.T @ target).max()) / rows  # the smallest α with β = 0
    solver = Lasso(fit_intercept=False, max_iter=20000, tol=1e-8, warm_start=True, selection="cyclic")
    exit_alpha = np.zeros(width)
    tried = {}  # nonzero count -> (relative alpha, beta) of the first α that gave it

    def solve(relative):
        solver.set_params(alpha=relative * alpha_max)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            solver.fit(design, target)
        beta = solver.coef_.copy()
        nonzero = beta != 0
        exit_alpha[nonzero] = np.maximum(exit_alpha[nonzero], relative)
        tried.setdefault(int(nonzero.sum()), (relative, beta))
        return int(nonzero.sum()), beta

    lo, hi = -12.0, 0.0  # log10 of the relative α: (nearly) every channel ... none
    relative = 10.0 ** lo
    count, beta = solve(relative)
    if count > n_keep:
        for _ in range(max_steps):
            relative = 10.0 ** ((lo + hi) / 2)
            count, beta = solve(relative)
            if count == n_keep:
                break
            if count > n_keep:
                lo = np.log10(relative)
            else:
                hi = np.log10(relative)
    if count == n_keep:
        return np.flatnonzero(beta), beta, relative, True, exit_alpha
    # No tried α gives exactly n_keep: take the nearest count above (trim) or, failing that, below (extend).
    above = [c for c in tried if c > n_keep]
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    if above:
        relative, beta = tried[min(above)]
        kept = np.argsort(-np.abs(beta) * norms, kind="stable")[:n_keep]
    else:
        relative, beta = tried[max(tried)]
        kept = list(np.flatnonzero(beta))
        pull = np.abs(gram @ (1 - beta)) / np.where(norms > 0, norms, 1)
        pull[kept] = -np.inf
        kept += list(np.argsort(-pull, kind="stable")[: n_keep - len(kept)])
    return np.sort(np.asarray(kept, np.int64)), beta, relative, False, exit_alpha


def lasso_path_scores(gram, points=40):
    """A ranking of channels without a target count: the largest α (relative, on a log grid from 1 down to 1e-6)
    at which each channel's LASSO coefficient is non-zero, plus a tie-break by its coefficient at the smallest α."""
    from sklearn.linear_model import lasso_path

    gram = (np.asarray(gram, np.float64) + np.asarray(gram, np.float64).T) / 2
    eigenvalues, vectors = np.linalg.eigh(gram)
    rank = eigenvalues > max(float(eigenvalues.max()), 0.0) * 1e-12
    if not rank.any():
        return np.zeros(len(gram))
    design = np.sqrt(eigenvalues[rank])[:, None] * vectors[:, rank].T
    target = design.sum(axis=1)
    alpha_max = float(np.abs(design.T @ target).max()) / len(design)
    relative = np.logspace(0, -6, points)
    _, coefs, _ = lasso_path(design, target, alphas=relative * alpha_max, max_iter=20000, tol=1e-8)
    exit_alpha = np.where(coefs != 0, relative[None, :], 0.0).max(axis=1)
    return exit_alpha + 1e-9 * np.abs(coefs[:, -1]) / (np.abs(coefs[:, -1]).max() or 1.0)


def consumers(graph, group):
    """The layers whose LASSO objective selects `group`: `(path, reason)` pairs, reason None for those used.

    Only layers that read some of the group's channels on their input side are listed.
    """
    out = []
    for member in group.members:
        if member.side != "in":
            continue
        path = member.layer
        reason = why_not_linear(graph.layers.get(path), graph.rules.get(path))
        out.append((path, reason))
    return out


class LassoSelection:
    """He et al.'s channel selection (ICCV 2017) as a criterion, with their least-squares reconstruction as the
    `reconstruct` step that `tfprune.prune` runs after rebuilding.

    See the module docstring for the objective and how groups with several consumers (residual stages) are
    handled, and `tfprune.reconstruct` for the refit. With `tfprune.plan(..., scope="layer")` each
    group gets exactly its requested count of non-zero coefficients (`scores_for_keep`); called as a plain
    criterion (global scope) it ranks channels by how long their coefficient survives a growing α.

    Args:
        images: how many examples of `data` (the first ones) are sampled. He et al. use 5000.
        locations_per_image: random output positions sampled per example and layer (He et al.: 10).
        batch_size: batch size of the inference passes.
        seed: seed of the sampled positions (None: a fresh one, kept for the object's lifetime so that selection
            and reconstruction see the same positions).
        verbose: 1 shows progress bars, 0 is silent.
        ridge: the reconstruction's relative Tikhonov term (see `tfprune.reconstruct`).

    Example:

    >>> import keras, numpy as np, tfprune
    >>> keras.utils.set_random_seed(0)
    >>> L = keras.layers
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(8, 3, activation="relu", name="conv"),
    ...                           L.Conv2D(4, 3, name="next"), L.Flatten(), L.Dense(2)])
    >>> data = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
    >>> lasso = tfprune.criteria.LassoSelection(images=32, seed=0)
    >>> len(tfprune.plan(model, 0.5, criterion=lasso, data=data).keep["conv"])
    4
    """

    def __init__(self, images=256, locations_per_image=10, batch_size=32, seed=None, verbose=0, ridge=1e-4):
        for name, value in (("images", images), ("locations_per_image", locations_per_image),
                            ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
        self.images, self.locations_per_image = int(images), int(locations_per_image)
        self.batch_size, self.verbose = int(batch_size), int(verbose)
        if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge >= 0:
            raise ValueError(f"ridge must be a number >= 0; got {ridge!r}.")
        self.ridge = float(ridge)
        self.seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else int(seed)
        self.selections = {}  # group name -> {"alpha", "exact", "consumers", "beta"} of the last plan
        self.reconstruction = None  # the report of the last reconstruct()
        self._measured = None  # (graph, data, {group name: [(consumer path, normalised Gram)]})

    def get_config(self):
        return {"images": self.images, "locations_per_image": self.locations_per_image,
                "batch_size": self.batch_size, "seed": self.seed, "verbose": self.verbose, "ridge": self.ridge}

    # ---- measuring --------------------------------------------------------------------------------------------

    def _grams(self, graph, model, data):
        """`{group name: [(consumer path, Gram / ||target||²)]}` for every prunable group, from one pass."""
        if self._measured is not None and self._measured[0] is graph and self._measured[1] is data:
            return self._measured[2]
        if data is None:
            raise ValueError("criterion 'lasso' needs data: the inputs to sample feature maps from "
                             "(tfprune.plan(model, ratio, criterion='lasso', data=x)).")
        wanted = {}  # consumer path -> [(group, positions of the group in its input, channel of each)]
        for group in graph.prunable_groups:
            for path, reason in consumers(graph, group):
                if reason is None:
                    groups, channels = graph.channels(graph.recorded(path)["in"])
                    mine = np.flatnonzero(groups == group.index)
                    wanted.setdefault(path, []).append((group, mine, channels[mine]))
        grams = {g.name: [] for g in graph.prunable_groups}
        if not wanted:
            self._measured = (graph, data, grams)
            return grams
        taps = LayerInputs(model, list(wanted))
        sums, geometry, where = {}, {}, {}
        seen = 0
        progress = _progress(self.images, self.verbose, "LASSO: sampling feature maps")
        for batch in _batches(taps, data, self.batch_size, self.images):
            n = len(next(iter(batch.values())))
            for path, x in batch.items():
                if taps.calls[path] != 1:
                    continue
                layer = graph.layers[path]
                if path not in geometry:
                    geometry[path] = LinearPatches(layer, x.shape[1:])
                    where[path] = geometry[path].sample_positions(self.images, self.locations_per_image,
                                                                  sampling_seed(self.seed, path))
                patches = geometry[path].extract(x, where[path][seen: seen + n])
                for group, positions, _ in wanted[path]:
                    flat = patches[:, :, positions].reshape(len(patches), -1)
                    key = (path, group.name)
                    sums[key] = sums.get(key, 0.0) + (flat.T @ flat).astype(np.float64)  # float32 products
            seen += n
            if progress:
                progress.update(seen)
        for path, entries in wanted.items():
            kernel, _ = geometry[path].weights(graph.layers[path]) if path in geometry else (None, None)
            for group, positions, channels in entries:
                if (path, group.name) not in sums:
                    continue
                gram = _contribution_gram(sums[path, group.name], kernel[:, positions, :], channels, group.width)
                energy = float(gram.sum())  # ||Σ_c Z_c||²
                if energy > 0:
                    grams[group.name].append((path, gram / energy))
        self._measured = (graph, data, grams)
        return grams

    def _group_gram(self, graph, group, model, data):
        terms = self._grams(graph, model, data)[group.name]
        if not terms:
            reasons = [f"'{p}': {r}" for p, r in consumers(graph, group) if r is not None]
            raise ValueError(
                f"Group '{group.name}' is read by no plain convolution or Dense layer (called once, with a non-zero "
                f"output on the data), so LASSO cannot select its channels"
                + (f" ({'; '.join(reasons)})" if reasons else "")
                + ". Leave it out with a dict of ratios, e.g. tfprune.plan(model, {name: ratio, ...}).")
        return sum(gram for _, gram in terms), [p for p, _ in terms]

    # ---- the criterion protocol -------------------------------------------------------------------------------

    def scores_for_keep(self, graph, group, model, data, n_keep):
        """Scores whose `n_keep` highest are exactly the channels LASSO keeps (the rest ranked below them)."""
        gram, used = self._group_gram(graph, group, model, data)
        kept, beta, alpha, exact, exit_alpha = lasso_keep(gram, n_keep)
        self.selections[group.name] = {"alpha": alpha, "exact": exact, "consumers": used, "beta": beta}
        scores = np.minimum(exit_alpha, 0.999)
        strength = np.abs(beta[kept]) * np.sqrt(np.clip(np.diag(gram)[kept], 0, None))
        scores[kept] = 1.0 + strength / (strength.max() or 1.0)
        return scores

    def __call__(self, graph, group, model=None, data=None):
        gram, _ = self._group_gram(graph, group, model, data)
        return lasso_path_scores(gram)

    def reconstruct(self, model, slim, plan, data):
        """He et al.'s least-squares reconstruction of `slim` (see `tfprune.reconstruct`)."""
        from tfprune.criteria.channel_pruning.reconstruction import reconstruct

        self.reconstruction = reconstruct(model, slim, plan, data, images=self.images,
                                          locations_per_image=self.locations_per_image,
                                          batch_size=self.batch_size, seed=self.seed, verbose=self.verbose,
                                          ridge=self.ridge)
        return slim


def _contribution_gram(moments, kernel, channels, width):
    """`G[c, d] = <Z_c, Z_d>` summed over samples and filters, `Z_c` the output part due to channel c.

    With `P = Σ_s vec(patch_s) vec(patch_s)ᵀ` (kernel positions × input positions, flattened) and `Z_c = patch_c ·
    W_c`, `<Z_c, Z_d> = Σ (P ∘ W Wᵀ)` over the entries of channels c and d: the cost is that of the second moments,
    not of every sample's contribution to every filter.

    Args:
        moments: `(k·p, k·p)` second moments of the patches restricted to the group's input positions.
        kernel: `(kernel positions k, input positions p, filters)`.
        channels: the group channel of each input position.
        width: the group's width.
    """
    k, positions, _ = kernel.shape
    flat = kernel.reshape(k * positions, -1).astype(np.float64)
    products = (moments * (flat @ flat.T)).reshape(k, positions, k, positions).sum(axis=(0, 2))
    if positions == width and np.array_equal(channels, np.arange(width)):
        return products
    onehot = np.eye(width)[channels]  # (positions, channels)
    return onehot.T @ products @ onehot


def _batches(taps, data, batch_size, images):
    try:
        yield from taps.batches(data, batch_size, examples=images)
    except NotEnoughData as e:
        raise NotEnoughData(f"{e} Criterion 'lasso' samples `images` examples (default 256): give it more data or "
                            "use tfprune.criteria.LassoSelection(images=...) as the criterion.") from None


def _progress(target, verbose, title):
    if not verbose:
        return None
    import keras

    print(title)
    return keras.utils.Progbar(target, verbose=verbose, unit_name="image")
