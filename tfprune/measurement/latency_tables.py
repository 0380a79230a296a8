"""LatencyModel: the latency of a slim model on a runtime, predicted from per-layer latency tables.

What is measured. Every layer whose cost depends on the widths a plan chooses — a Conv, DepthwiseConv,
SeparableConv, ConvTranspose or Dense (EinsumDense as Dense) that computes MACs and whose channels the channel
graph can change — is written alone as a one-layer model at its real input shape (batch 1) and timed on the runtime
at a grid of kept input × kept output channel counts (kept channels only, for a depthwise layer). Layers with the
same configuration and input shape share one table, so ResNet50's 53 convolutions need about 20 tables.

What is not. Everything else — element-wise layers (activations, BatchNormalization that the converter folds, adds,
multiplies, padding, pooling), layers a plan cannot change, and the runtime's own overhead — is one *rest* term
that follows the fraction of the tabled layers' output elements a plan keeps, because element-wise work follows the
size of the activations.

Calibration. A layer timed alone is not timed as it runs in the model. Called in turn with other files, its weights
and input would come from a colder cache than in the model, where the layer before has just written its input
(MobileNetV2's LiteRT tables then summed to 1.3× the whole model): so each one-layer model is called once, untimed,
right before each timed call. And an ONNX file of one layer converts its layout in and out (to and from ONNX
Runtime's blocked NCHWc layout), which the whole model does once, and pays the session's per-call work: for ONNX
Runtime, a table holds the layer's operators' time alone, from ONNX Runtime's profile of each timed call
(`runtime_calls.kernel_timed_call`). Timed whole (session and layout conversions included), MobileNetV2's one-layer
files made its depthwise layers 2.3× and its other convolutions 1.3× as slow, against their times inside the model,
and those shares changed with the widths: predictions of random-width plans were 15% low to 22% high; from the
profiled operators, 4% low to 3% high (`benchmarks/latency_planning.py`). So the whole model is also timed at the
uniform widths of `tfprune.plan(model, r)` (rounded to the runtime's tile, and for LiteRT also as they come:
`calibration_steps`) for `r = 1 - g` at each grid fraction `g`, and the prediction is `scale · Σ tables + rest ·
kept activations + fixed`, its three coefficients fitted to those measured points by least squares on relative
errors (`fit_coefficients`): the scale positive, the rest not negative, and the fixed term negative where each layer
timed alone paid a per-call cost that the whole model pays once, down to minus the tables' fastest calls; a
prediction is never below 0. Without calibration points (`calibrate=False`, or tables given), the scale is 1, the
fixed term 0 and the rest the whole model's latency minus the tables' sum at full width (at least 0).

Interpolation. Between grid points a table is interpolated bilinearly in (kept inputs, kept outputs): a
convolution's time is close to a·C_in·C_out + b·C_in + c·C_out + d (its MACs, its input and output traffic, a fixed
cost), which bilinear interpolation reproduces exactly. The runtime computes output channels (a depthwise layer's
channels) in tiles (`tfprune.deployment.channel_tiles`: 16 on x86 with AVX2 or AVX-512), so its time is a staircase
in them: the grid's output counts are multiples of the tile, and a kept count is looked up at its tile-rounded width
(`LatencyTables.tile`); for ONNX Runtime, whose blocked convolutions also read whole tiles of input channels, so are
the input counts (`LatencyTables.input_tile`). The differentiable `expected_cost` (DMCP) interpolates without
rounding. Below its smallest point (under a quarter of the layer's width with the default grid) a table is scaled in
proportion to the kept counts, which keeps it monotone where a linear extrapolation of the cross term would not be.
Each table is made non-decreasing along both axes before use (a wider layer is never faster; a measured dip is
noise), so that a prediction never grows when channels are removed.

Cache. A model's tables are written to one JSON file per (model architecture, runtime and its version, thread
count, CPU model, grid) under `cache_dir` (default `$TFPRUNE_LATENCY_CACHE`, else `~/.cache/tfprune/latency`), and
read from there the next time: building them again is only needed on another machine, runtime or thread count.
"""

import dataclasses
import hashlib
import json
import math
import os
import platform
import tempfile
import time

import keras
import numpy as np

from tfprune.backends import require_backend
from tfprune.deployment.channel_tiles import channel_tile
from tfprune.graph.keras_nodes import call_nodes, is_graph_model
from tfprune.graph.rules import Boundary
from tfprune.graph.rules import einsum as einsum_rules
from tfprune.graph.rules import producers as producer_rules
from tfprune.measurement.costs import CostModel
from tfprune.measurement.counting import layer_counts
from tfprune.measurement.runtime_latency import check_runtime, runtime_file, time_files

DEFAULT_GRID = (0.25, 0.5, 0.75, 1.0)
TABLES_VERSION = 8


@dataclasses.dataclass
class LayerTable:
    """Measured latency (ms) of one layer configuration at a grid of kept channel counts.

    Attributes:
        inputs: kept input counts (increasing).
        outputs: kept output counts (increasing), or None for a layer timed by its kept channels alone (depthwise).
        ms: median milliseconds, shape `(len(inputs), len(outputs))`, or `(len(inputs),)`; as measured.
    """

    inputs: tuple
    outputs: tuple | None
    ms: np.ndarray

    def __post_init__(self):
        self.inputs = tuple(int(n) for n in self.inputs)
        self.outputs = None if self.outputs is None else tuple(int(n) for n in self.outputs)
        self.ms = np.asarray(self.ms, np.float64)
        expected = (len(self.inputs),) if self.outputs is None else (len(self.inputs), len(self.outputs))
        if self.ms.shape != expected or list(self.inputs) != sorted(set(self.inputs)) or (
                self.outputs is not None and list(self.outputs) != sorted(set(self.outputs))):
            raise ValueError(f"A latency table needs increasing, distinct counts and one time per grid point; got "
                             f"inputs {self.inputs}, outputs {self.outputs} and times of shape {self.ms.shape}.")
        monotone = np.maximum.accumulate(np.maximum(self.ms, 0.0), axis=0)
        self.monotone = monotone if self.outputs is None else np.maximum.accumulate(monotone, axis=1)

    def at(self, n_in, n_out=None) -> float:
        """The interpolated latency (ms) at these kept counts (see the module docstring)."""
        i, t, scale = _cell(self.inputs, float(n_in))
        m = self.monotone
        rows = m[i] if t is None else (1 - t) * m[i] + t * m[i + 1]
        if self.outputs is None:
            return float(rows) * scale
        j, u, scale_out = _cell(self.outputs, float(n_out))
        value = rows[j] if u is None else (1 - u) * rows[j] + u * rows[j + 1]
        return float(value) * scale * scale_out

    def at_tensor(self, n_in, n_out=None):
        """`at` on keras tensors (scalar counts), differentiable in the counts between grid points."""
        ops = keras.ops
        m = ops.convert_to_tensor(self.monotone, "float32")
        i, t, scale = _cell_tensor(self.inputs, n_in)
        rows = m[0] if t is None else (1 - t) * ops.take(m, i, axis=0) + t * ops.take(m, i + 1, axis=0)
        if self.outputs is None:
            return rows * scale
        j, u, scale_out = _cell_tensor(self.outputs, n_out)
        value = rows[0] if u is None else (1 - u) * ops.take(rows, j) + u * ops.take(rows, j + 1)
        return value * scale * scale_out

    def to_json(self):
        return {"inputs": list(self.inputs), "outputs": None if self.outputs is None else list(self.outputs),
                "ms": self.ms.tolist()}


def _cell(grid, x):
    """`(cell index, position in the cell in [0, 1], scale)`: below the first point, the first point's value scaled
    by `x / grid[0]`; `(0, None, scale)` for a one-point grid."""
    scale = min(1.0, x / grid[0])
    if len(grid) == 1:
        return 0, None, scale
    i = int(np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2))
    return i, float(np.clip((x - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0)), scale


def _cell_tensor(grid, x):
    ops = keras.ops
    x = ops.cast(x, "float32")
    scale = ops.minimum(x / float(grid[0]), 1.0)
    if len(grid) == 1:
        return 0, None, scale
    points = ops.convert_to_tensor(np.asarray(grid, np.float32))
    i = (ops.sum(ops.cast(x >= ops.convert_to_tensor(np.asarray(grid[1:-1], np.float32)), "int32"))
         if len(grid) > 2 else ops.convert_to_tensor(0, "int32"))
    lo, hi = ops.take(points, i), ops.take(points, i + 1)
    return i, ops.clip((x - lo) / (hi - lo), 0.0, 1.0), scale


@dataclasses.dataclass
class LatencyTables:
    """Everything measured for one model on one runtime: its layers' tables and the whole model's latency.

    Attributes:
        runtime, threads: where it was measured ("litert" or "onnxruntime"; CPU threads).
        runtime_version: e.g. "LiteRT 2.3.0".
        cpu: the CPU model string of the machine.
        grid: the fractions of each layer's width the grid was made of.
        whole_ms: the whole model's median latency (ms).
        tables: `{configuration key: LayerTable}`.
        layers: `{layer path: configuration key}` for every tabled layer.
        build_seconds: how long measuring took.
        calibration: `[(r, round_to, ms), ...]`: the whole model's median latency (ms) at the uniform widths of
            `tfprune.plan(model, r, round_to=round_to)` (L1; the kept counts do not depend on the weights), timed
            with it.
        tile: the runtime's channel tile on the CPU measured (output counts are looked up rounded up to it).
        input_tile: what input counts are measured at multiples of and looked up rounded up to (ONNX Runtime: the
            tile, as its blocked convolutions take whole tiles of input channels; LiteRT: 1).
    """

    runtime: str
    threads: int
    runtime_version: str
    cpu: str
    grid: tuple
    whole_ms: float
    tables: dict
    layers: dict
    build_seconds: float = 0.0
    calibration: list = dataclasses.field(default_factory=list)
    tile: int = 1
    input_tile: int = 1

    def to_json(self):
        return {"version": TABLES_VERSION, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                              if f.name != "tables"},
                "grid": list(self.grid), "tables": {k: t.to_json() for k, t in self.tables.items()}}

    @classmethod
    def from_json(cls, data):
        if data.get("version") != TABLES_VERSION:
            raise ValueError(f"latency tables of version {data.get('version')!r}; this tfprune reads version "
                             f"{TABLES_VERSION}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["tables"] = {k: LayerTable(t["inputs"], t["outputs"], t["ms"]) for k, t in data["tables"].items()}
        values["grid"] = tuple(values["grid"])
        values["calibration"] = [(float(r), int(step), float(ms)) for r, step, ms in values.get("calibration", [])]
        return cls(**values)


# ---- the machine, the cache -------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name ("model name" in /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def default_cache_dir() -> str:
    """`$TFPRUNE_LATENCY_CACHE`, else `$XDG_CACHE_HOME/tfprune/latency` (`~/.cache/tfprune/latency`)."""
    if os.environ.get("TFPRUNE_LATENCY_CACHE"):
        return os.environ["TFPRUNE_LATENCY_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfprune", "latency")


def model_fingerprint(model) -> str:
    """A digest of the model's architecture (its config and input shapes; not its weights, not its layers' names).
    Keras numbers the layers it names itself per process (`input_layer_3`, `global_average_pooling2d_1`), so each
    layer's name counts as its position; a cached model's tables are found again under the names of the model that
    reads them (`LatencyModel`)."""
    config = json.dumps(model.get_config(), sort_keys=True, default=str)
    for i, layer in enumerate(getattr(model, "layers", [])):
        config = config.replace(json.dumps(layer.name), json.dumps(f"<layer {i}>"))
    shapes = json.dumps([list(t.shape) for t in model.inputs], default=str)
    return hashlib.sha256((config + shapes).encode()).hexdigest()


def cache_file(model, runtime="litert", threads=1, grid=DEFAULT_GRID, cache_dir=None) -> str:
    """The file in which `LatencyModel` caches the tables of `model` on `runtime` with `threads` and `grid`, on this
    CPU and runtime version (it need not exist).

    Args:
        model: the model (its architecture names the file; its weights do not matter); for a model that the
            channel graph traces, its trace, `ChannelGraph(model).model`.
        runtime: "litert" or "onnxruntime".
        threads: the runtime's CPU threads.
        grid: the tables' grid.
        cache_dir: the cache folder (default `default_cache_dir()`).

    Example:

    >>> import tfprune
    >>> from tfprune.measurement.latency_tables import cache_file
    >>> path = cache_file(tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1), cache_dir="/tmp/tables")
    >>> path.startswith("/tmp/tables/small_vgg-") and path.endswith(".json")
    True
    """
    runtime = check_runtime(runtime)
    key = json.dumps([model_fingerprint(model), runtime, _runtime_version(runtime), threads, cpu_model(),
                      list(_check_grid(grid)), TABLES_VERSION])
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in model.name)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir or default_cache_dir(), f"{name}-{digest}.json")


def _runtime_version(runtime):
    from tfprune.deployment.runtimes import LITERT, ONNX_RUNTIME, runtime_version

    return runtime_version(LITERT if runtime == "litert" else ONNX_RUNTIME)


# ---- the model --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Tabled:
    """One tabled layer: its path, layer, rule, input shape (batch 1), calls and kind ("2d" or "1d")."""

    path: str
    layer: object
    rule: object
    input_shape: tuple
    output_positions: int
    calls: int
    kind: str
    unit: int  # kept counts are multiples of this (a grouped convolution's groups)
    fixed: tuple  # (inputs fixed, outputs fixed): a side no plan can change is timed at its full width only

    def counts(self, grid, n_in, n_out, tile=1, input_tile=1):
        """The grid's kept input and output counts (None for the outputs of a "1d" layer); the outputs (a "1d"
        layer's channels) multiples of `tile`, the inputs of a "2d" layer multiples of `input_tile`."""
        tiled = math.lcm(self.unit, tile)
        inputs = (n_in,) if self.fixed[0] else grid_counts(n_in, grid, tiled if self.kind == "1d"
                                                           else math.lcm(self.unit, input_tile))
        if self.kind == "1d":
            return inputs, None
        return inputs, (n_out,) if self.fixed[1] else grid_counts(n_out, grid, tiled)


class LatencyModel(CostModel):
    """Latency (ms) of `rebuild(model, plan)` on a runtime, for any plan, from per-layer latency tables.

    The latency cost of the cost interface (`tfprune.measurement.costs.CostModel`). Building the tables times
    every tabled layer at `len(grid)²` width pairs on the runtime (minutes for an ImageNet CNN, see
    docs/guides/latency.md); they are cached on disk and read back on the next build for the same model, runtime,
    thread count and CPU.

    Args:
        model: a Functional or Sequential model with a fixed input size (read only).
        runtime: "litert" (LiteRT, XNNPACK) or "onnxruntime" (ONNX Runtime, CPU).
        threads: the runtime's CPU threads (the measuring process is also bound to as many CPUs with `pin`).
        graph: the model's `ChannelGraph`, if already built.
        grid: fractions of each layer's input and output widths to time it at (the full width is always one).
        cache_dir: where tables are cached (default `default_cache_dir()`); None for the default, False for no cache.
        tables: `LatencyTables` to use instead of measuring (e.g. read from a file; they must be for this model).
        runs, warmup: timed and untimed calls per grid point.
        pin: bind the measuring subprocess to `threads` CPUs.
        calibrate: when measuring, also time the whole model at the grid's uniform widths and fit the prediction
            to those times (see the module docstring); this rebuilds and converts `len(grid) - 1` slim models.
        progress: optionally called with a one-line description of each step of a build.

    Attributes:
        full: the predicted latency (ms) of the unpruned model (close to the measured one).
        scale, rest_ms, fixed_ms: the prediction's coefficients, `scale · Σ tables + rest_ms · kept activations +
            fixed_ms`.
        calibration_error: the largest relative error of the prediction at the measured calibration points (the
            full model included), or None without calibration.
        tables: the `LatencyTables`.
        cache_path: the cache file read or written (None without a cache).
        cache_hit: whether the tables came from the cache.
        build_seconds: how long this build took (reading the cache, or measuring).

    Example:

    >>> import numpy as np, tfprune
    >>> from tfprune.measurement.latency_tables import LatencyModel, LatencyTables, synthetic_tables
    >>> model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    >>> tables = synthetic_tables(model, ms_per_mac=1e-6, rest_ms=0.1)  # made-up times: no runtime needed
    >>> latency = LatencyModel(model, tables=tables, cache_dir=False)
    >>> plan = tfprune.plan(model, 0.5)
    >>> bool(0.2 < latency.ratio(plan) < 0.6)
    True
    """

    kind = "latency"
    unit = "latency"

    def __init__(self, model, runtime="litert", threads=1, graph=None, grid=DEFAULT_GRID, cache_dir=None,
                 tables=None, runs=20, warmup=3, pin=True, calibrate=True, progress=None):
        super().__init__(model, graph)
        self.runtime = check_runtime(runtime)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1; got {threads!r}.")
        self.threads = threads
        self.grid = _check_grid(grid)
        start = time.perf_counter()
        self.layers = tabled_layers(self.graph)
        self.cache_path, self.cache_hit = None, False
        if tables is None:
            tables = self._cached_or_measured(model, cache_dir, runs, warmup, pin, calibrate, progress)
        missing = [t.path for t in self.layers if t.path not in tables.layers]
        if missing:
            raise ValueError(f"The latency tables have no table for layer(s) {missing[:3]} of model "
                             f"'{model.name}': they were measured for another model.")
        self.tables = tables
        self.build_seconds = time.perf_counter() - start
        self._entries = []  # (table, in side, out side, calls, output positions)
        for t in self.layers:
            in_side = self.side(t.path, "in")[0]
            out_side = self.side(t.path, "out")[0]
            self._entries.append((tables.tables[tables.layers[t.path]], in_side, out_side, t.calls,
                                  t.output_positions))
        self._freeze_sides()
        counts = np.asarray(self.full_counts, np.float64)
        self._weights = np.zeros(self._n_sides)
        for _, _, out_side, calls, positions in self._entries:
            self._weights[out_side] += calls * positions
        self._weights_full = float(self._weights @ counts) or 1.0
        self.scale, self.rest_ms, self.fixed_ms = 1.0, max(0.0, tables.whole_ms - self._tabled(counts)), 0.0
        self.calibration_error = None
        if tables.calibration:
            from tfprune.pruning.planning import plan as uniform_plan  # here: pruning imports this module's users

            points = [(self._tabled(counts), 1.0, tables.whole_ms)]
            for r, step, ms in tables.calibration:
                kept = self._plan_counts(uniform_plan(model, r, round_to=step, graph=self.graph))
                points.append((self._tabled(kept), self._activations(kept), ms))
            fastest = sum(calls * float(table.monotone.min()) for table, _, _, calls, _ in self._entries)
            (self.scale, self.rest_ms, self.fixed_ms), self.calibration_error = fit_coefficients(points, fastest)
        self.full = self._value(counts)

    def _tabled(self, counts):
        full = self.full_counts

        def tiled(n, side, tile):  # the runtime computes whole tiles of output (ONNX Runtime: and input) channels
            return min(full[side], math.ceil(n / tile - 1e-9) * tile) if tile > 1 else n

        tile, input_tile = self.tables.tile, self.tables.input_tile
        return sum(calls * (table.at(tiled(counts[i], i, tile)) if table.outputs is None
                            else table.at(tiled(counts[i], i, input_tile), tiled(counts[o], o, tile)))
                   for table, i, o, calls, _ in self._entries)

    def _activations(self, counts):
        return float(self._weights @ counts) / self._weights_full

    def _value(self, counts):  # at least 0: a negative fixed term could outweigh layers cut below their tables
        return max(0.0, self.scale * self._tabled(counts) + self.rest_ms * self._activations(counts) + self.fixed_ms)

    def _expected_value(self, counts):
        ops = keras.ops
        total = self.rest_ms * ops.sum(counts * ops.convert_to_tensor(self._weights, "float32")) / self._weights_full
        for table, i, o, calls, _ in self._entries:
            value = table.at_tensor(counts[i]) if table.outputs is None else table.at_tensor(counts[i], counts[o])
            total = total + self.scale * calls * value
        return ops.maximum(total + self.fixed_ms, 0.0)

    def latency_ms(self, plan) -> float:
        """The predicted latency (ms) of `rebuild(model, plan)` (the same as `cost(plan)`)."""
        return self.cost(plan)

    # ---- building ---------------------------------------------------------------------------------------------

    def _cached_or_measured(self, model, cache_dir, runs, warmup, pin, calibrate, progress):
        version, cpu = _runtime_version(self.runtime), cpu_model()
        if cache_dir is not False:
            self.cache_path = cache_file(self.graph.model, self.runtime, self.threads, self.grid, cache_dir)
            if os.path.exists(self.cache_path):
                with open(self.cache_path) as f:
                    tables = LatencyTables.from_json(json.load(f))
                self.cache_hit = True
                paths = [t.path for t in self.layers]
                if len(paths) == len(tables.layers):  # the same architecture: its layers in the same order
                    tables = dataclasses.replace(tables, layers=dict(zip(paths, tables.layers.values(), strict=True)))
                return tables
        calibration = {}
        if calibrate:
            from tfprune.pruning.planning import plan as uniform_plan  # here: pruning imports this module's users
            from tfprune.pruning.rebuilding import rebuild

            for r in sorted({round(1 - g, 6) for g in self.grid if g < 1}):
                for step in calibration_steps(self.runtime):
                    calibration[r, step] = rebuild(model, uniform_plan(model, r, round_to=step, graph=self.graph),
                                                   graph=self.graph)
        tables = measure_tables(self.graph.model, self.layers, self.runtime, self.threads, self.grid, runs, warmup,
                                pin, progress, calibration, channel_tile(self.runtime))
        tables = dataclasses.replace(tables, runtime_version=version, cpu=cpu)
        if self.cache_path is not None:
            os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
            partial = self.cache_path + f".{os.getpid()}.tmp"
            with open(partial, "w") as f:
                json.dump(tables.to_json(), f)
            os.replace(partial, self.cache_path)
        return tables


def calibration_steps(runtime):
    """The `round_to` of the uniform widths the whole model is timed at for calibration: as they come and in whole
    tiles for LiteRT; in whole tiles only for ONNX Runtime, whose convolutions leave their blocked layout for a
    slower path at other widths, a cost the tables (timed in whole tiles) cannot follow and a fit to it would spread
    over the widths they do follow (`tfprune.plan_for_latency` warns about such widths)."""
    tile = channel_tile(runtime)
    return (tile,) if runtime == "onnxruntime" else tuple(sorted({1, tile}))


def _check_grid(grid):
    try:
        values = tuple(float(g) for g in grid)
    except (TypeError, ValueError):
        values = ()
    if not values or any(not 0 < g <= 1 for g in values) or list(values) != sorted(set(values)):
        raise ValueError(f"grid must list increasing fractions in (0, 1], e.g. {DEFAULT_GRID}; got {grid!r}.")
    return values if values[-1] == 1.0 else (*values, 1.0)


def _input_shapes(model, prefix=""):
    """`{layer path: input shape}` of the first call of every layer (nested models entered)."""
    shapes = {}
    for node in call_nodes(model):
        path = prefix + node.operation.name
        if is_graph_model(node.operation):
            shapes.update(_input_shapes(node.operation, path + "/"))
        elif node.arguments.keras_tensors and path not in shapes:
            shapes[path] = tuple(node.arguments.keras_tensors[0].shape)
    return shapes


# The rules of the layers a table times (EinsumDense as Dense).
_TABLED_RULES = (producer_rules.DepthwiseConv, producer_rules.Conv, producer_rules.ConvTranspose,
                 producer_rules.SeparableConv, producer_rules.Dense, einsum_rules.EinsumDense)


def tabled_layers(graph) -> list:
    """The layers of `graph`'s model that get a latency table (see the module docstring), in execution order.

    Raises:
        NotImplementedError: for layers whose cost depends on the widths but that have no table kind (attention
            layers, a patch embedding, a tied output projection), naming them and the targets that price them.
        ValueError: for a tabled layer whose input shape is not fixed.
    """
    shapes = _input_shapes(graph.model)
    tabled, untabled, unshaped = [], [], None
    for path, count in layer_counts(graph.model).items():
        if not count.macs:
            continue
        layer, rule = graph.layers.get(path), graph.rules.get(path)
        if layer is None or isinstance(rule, Boundary) or not graph.recorded(path):
            continue  # its channels are fixed: part of the rest
        if not isinstance(rule, _TABLED_RULES):
            untabled.append((path, layer, graph.recorded(path)))
            continue
        shape = shapes.get(path)
        if shape is None or any(d is None for d in shape[1:]):
            unshaped = unshaped or (f"Cannot time layer '{path}' ({type(layer).__name__}) alone: its input shape "
                                    f"{shape} is not fixed. Latency tables need a model built for a fixed input size.")
            continue
        n_in = len(graph.recorded(path)["in"])
        groups = getattr(layer, "groups", 1)
        if isinstance(rule, producer_rules.DepthwiseConv) or (
                isinstance(rule, producer_rules.Conv) and groups > 1 and groups == n_in):
            kind, unit = "1d", 1
        else:
            kind, unit = "2d", groups
        positions = count.macs // max(1, _macs_per_position(layer, rule, n_in, len(graph.recorded(path)["out"])))
        fixed = tuple(not any(graph.groups[g].prunable for g in set(graph.channels(graph.recorded(path)[side])[0]))
                      for side in ("in", "out"))
        tabled.append(_Tabled(path, layer, rule, (1, *shape[1:]), int(positions), count.calls, kind, unit, fixed))
    if untabled:  # first: a model with a layer no table measures has no latency model at any input size
        raise NotImplementedError(_untabled_message(untabled))
    if unshaped:
        raise ValueError(unshaped)
    return tabled


def _untabled_message(untabled):
    """Why a model with layers no table measures has no latency model, and what prices it instead."""
    attention = [(path, layer) for path, layer, sides in untabled if {"heads", "kv_heads", "query_heads"} & set(sides)]
    others = [(path, layer) for path, layer, sides in untabled
              if not {"heads", "kv_heads", "query_heads"} & set(sides)]

    def named(layers):
        text = ", ".join(f"'{path}' ({type(layer).__name__})" for path, layer in layers[:3])
        return text + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")

    parts = []
    if attention:
        parts.append(f"no latency table for the attention layer(s) {named(attention)}: latency tables time a "
                     "layer alone at kept input × kept output channels, while an attention layer's time depends on "
                     "its heads, head width and sequence length together, which no table measures yet")
    if others:
        parts.append(f"no latency table for layer(s) {named(others)}, whose cost depends on the widths a plan "
                     "chooses")
    return ("LatencyModel has " + "; and ".join(parts) + ". It tables Conv, DepthwiseConv, SeparableConv, "
            "ConvTranspose, Dense and EinsumDense layers only. Use a MACs or params target for this model instead: "
            '{"macs": r} or {"params": r} (tfprune.plan_for_macs, the searches and DMCP take them; MACs count '
            "attention's projections, QKᵀ and AV exactly), and measure the slim model's latency with "
            "tfprune.measurement.runtime_latency.measure_ratio.")


def _macs_per_position(layer, rule, n_in, n_out):
    """MACs per output position (so that MACs / this = output positions × calls) of a tabled layer."""
    k = math.prod(getattr(layer, "kernel_size", (1,)))
    if isinstance(rule, producer_rules.SeparableConv):
        return n_in * layer.depth_multiplier * (k + layer.filters)
    if isinstance(rule, producer_rules.DepthwiseConv):
        return k * n_in * layer.depth_multiplier
    if isinstance(rule, producer_rules.ConvTranspose):
        return k * n_in * n_out  # per input position: a scatter of one kernel
    if isinstance(rule, producer_rules.Conv):
        return k * n_in // getattr(layer, "groups", 1) * n_out
    return n_in * n_out


def grid_counts(width, grid, unit=1) -> tuple:
    """The kept counts a table is measured at: each fraction of `width`, rounded up to a multiple of `unit`.

    Example:

    >>> from tfprune.measurement.latency_tables import grid_counts
    >>> grid_counts(64, (0.25, 0.5, 0.75, 1.0)), grid_counts(6, (0.25, 0.5, 1.0)), grid_counts(12, (0.1, 1.0), unit=4)
    ((16, 32, 48, 64), (2, 3, 6), (4, 12))
    """
    counts = {min(width, max(unit, math.ceil(f * width / unit) * unit)) for f in grid}
    return tuple(sorted(counts | {width}))


def one_layer_model(tabled, n_in, n_out=None):
    """A model of the layer alone, keeping its first `n_in` input and `n_out` output channels (its own kept
    outputs for a "1d" layer), at its input shape with batch 1."""
    layer, rule = tabled.layer, tabled.rule
    keep_in = np.arange(tabled.input_shape[-1]) < n_in
    if tabled.kind == "1d":
        multiplier = getattr(layer, "depth_multiplier", None) or layer.filters // layer.groups
        keep = {"in": keep_in, "out": np.repeat(keep_in, multiplier)}
    else:
        width_out = _output_width(layer)
        keep = {"in": keep_in, "out": np.arange(width_out) < n_out}
    config = {**rule.updated_config(layer, rule.config(layer), keep), "name": "tabled"}
    new = rule.new_layer(layer, config)
    inputs = keras.Input(batch_shape=(1, *tabled.input_shape[1:-1], int(keep_in.sum())))
    return keras.Model(inputs, new(inputs))


def _output_width(layer):
    for attribute in ("filters", "units"):
        if getattr(layer, attribute, None):
            return int(getattr(layer, attribute))
    return int(layer.kernel.shape[-1])  # EinsumDense


def _key(tabled):
    config = {k: v for k, v in tabled.rule.config(tabled.layer).items() if k not in ("name", "trainable")}
    text = json.dumps([type(tabled.layer).__name__, config, list(tabled.input_shape), tabled.fixed], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_tables(model, layers, runtime, threads=1, grid=DEFAULT_GRID, runs=20, warmup=3, pin=True,
                   progress=None, calibration=None, tile=1) -> LatencyTables:
    """Measure the latency tables of `layers` (from `tabled_layers`) and the whole model on the runtime.

    Every distinct layer configuration is written as one-layer models at the grid's kept counts, and all are
    timed in one subprocess (`tfprune.measurement.runtime_latency.time_files`), a configuration's grid points in
    turn with the whole model, whose time in each batch against its median over all batches undoes the changes of
    the machine's load between batches. TensorFlow backend (the converters need it). `calibration`, `{(r,
    round_to): slim model}`, are timed in the first batch, in turn with the whole model and unprimed. Output counts
    are multiples of `tile`; for ONNX Runtime, a layer's input counts too: its blocked (NCHWc) convolutions run a
    slower path on a partial tile of inputs (MobileNetV2's `block_1_expand`, 16 inputs: 1.3 ms at 12 against 0.8 ms
    at 16), which a table made non-decreasing would carry up to the layer's full width.

    Returns:
        `LatencyTables` (its `runtime_version` and `cpu` left for the caller to fill in).
    """
    require_backend("tensorflow", "measuring latency tables")
    notify = progress or (lambda message: None)
    start = time.perf_counter()
    grid = _check_grid(grid)
    by_key, points = {}, {}
    input_tile = tile if runtime == "onnxruntime" else 1
    for t in layers:
        by_key.setdefault(_key(t), t)
    with tempfile.TemporaryDirectory() as workdir:
        batches = []
        notify(f"writing the whole model and {len(by_key)} layer configuration(s) for {runtime}")
        whole = runtime_file(model, workdir, "whole", runtime)
        for n, (key, t) in enumerate(by_key.items()):
            inputs, outputs = t.counts(grid, t.input_shape[-1], _output_width(t.layer), tile, input_tile)
            batch = []
            for i in inputs:
                for o in (outputs or (None,)):
                    label = f"{key}:{i}:{o}"
                    batch.append((label, runtime_file(one_layer_model(t, i, o), workdir, label.replace(":", "_"),
                                                      runtime, frozen=True)))
            batches.append(batch)
            points[key] = (inputs, outputs)
            notify(f"layer configuration {n + 1}/{len(by_key)} ({t.path}): {len(batch)} grid point(s) written")
        notify(f"timing {sum(len(b) for b in batches)} one-layer models and the whole model on {runtime}")
        # The whole model is timed in every batch, in turn with its one-layer models: the load of the machine
        # changes between batches, and each batch's times are scaled by how much slower or faster the whole model
        # ran then than over all batches (its median).
        slim = [(f"calibration:{r}:{step}", runtime_file(m, workdir, f"calibration_{n}", runtime))
                for n, ((r, step), m) in enumerate((calibration or {}).items())]
        timed = [[("whole:0", whole), *slim]] + [[(f"whole:{b + 1}", whole), *batch] for b, batch in enumerate(batches)]
        kernels = [label for batch in batches for label, _ in batch] if runtime == "onnxruntime" else ()
        # The calibration models unprimed, as `measure_ratio` times a slim model: primed, a small model found more of
        # itself in the CPU's caches than it does after a call of the whole model (MobileNetV2 at half its widths on
        # ONNX Runtime: 2.5 against 3.0 ms), and the fit made every prediction low.
        seconds = time_files(timed[:1], runtime, threads, runs, warmup, pin)
        seconds.update(time_files(timed[1:], runtime, threads, runs, warmup, pin, primed=True, kernels=kernels))
    per_batch = [float(np.median(seconds[f"whole:{b}"])) * 1000 for b in range(len(timed))]
    whole_ms = float(np.median(per_batch))
    tables = {}
    for b, (key, (inputs, outputs)) in enumerate(points.items(), start=1):
        ms = [[float(np.median(seconds[f"{key}:{i}:{o}"])) * 1000 * whole_ms / per_batch[b]
               for o in (outputs or (None,))] for i in inputs]
        tables[key] = LayerTable(inputs, outputs, np.asarray(ms)[:, 0] if outputs is None else ms)
    calibrated = [(float(r), int(step),
                   float(np.median(seconds[f"calibration:{r}:{step}"])) * 1000 * whole_ms / per_batch[0])
                  for r, step in (calibration or {})]
    return LatencyTables(runtime=runtime, threads=threads, runtime_version="", cpu="", grid=grid,
                         whole_ms=whole_ms, tables=tables, layers={t.path: _key(t) for t in layers},
                         build_seconds=time.perf_counter() - start, calibration=calibrated, tile=int(tile),
                         input_tile=int(input_tile))


def fit_coefficients(points, overhead=0.0):
    """`((scale, rest, fixed), largest relative error)`: the coefficients of `scale · tabled + rest · activations +
    fixed` closest to the measured `ms` of `points`, `[(tabled, activations, ms), ...]`, in relative error (least
    squares; the largest of those errors is returned). The scale is positive and the rest not negative; the fixed term
    is at least `-scale · overhead`: a negative one is the per-call cost that every layer timed alone paid and the
    whole model pays once, so `overhead` is at most the tables' fastest calls (0: the fixed term is not negative).
    Of the terms beside the scale, either may be left out (0).

    Example:

    >>> from tfprune.measurement.latency_tables import fit_coefficients
    >>> (scale, rest, fixed), error = fit_coefficients([(10, 1, 8.5), (5, 0.5, 4.3), (2, 0.25, 1.8), (1, 0.1, 0.94)])
    >>> round(scale, 3), round(rest, 3), round(fixed, 3), error < 1e-9
    (0.8, 0.4, 0.1, True)
    >>> (scale, rest, fixed), error = fit_coefficients([(10, 1, 7.0), (6, 0.5, 4.0), (3, 0.3, 1.75)], overhead=2)
    >>> round(scale, 3), round(rest, 3), round(fixed, 3), error < 1e-9
    (0.75, 0.0, -0.5, True)
    """
    x = np.asarray([(t, a, 1.0) for t, a, _ in points], np.float64)
    y = np.asarray([ms for _, _, ms in points], np.float64)
    weight = 1.0 / np.maximum(y, 1e-12)
    best = None
    for columns in ((0, 1, 2), (0, 1), (0, 2), (0,)):  # the scale always; the others where they fit their bounds
        if len(columns) > len(points):
            continue
        solution = np.linalg.lstsq(x[:, columns] * weight[:, None], y * weight, rcond=None)[0]
        coefficients = np.zeros(3)
        coefficients[list(columns)] = solution
        scale, rest, fixed = coefficients
        if scale <= 0 or rest < 0 or fixed < -scale * overhead:
            continue
        relative = (x @ coefficients - y) * weight
        if best is None or relative @ relative < best[0]:
            best = (float(relative @ relative), tuple(float(c) for c in coefficients), float(np.max(np.abs(relative))))
    if best is None:  # no tabled time at all: nothing to scale
        return (1.0, 0.0, 0.0), float(np.max(np.abs(x[:, 0] - y) * weight))
    return best[1], best[2]


def synthetic_tables(model, ms_per_mac, rest_ms=0.0, grid=DEFAULT_GRID, graph=None) -> LatencyTables:
    """Tables in which every layer takes `ms_per_mac` per MAC at each grid point, and the rest `rest_ms`: a
    stand-in with known answers for tests and examples (nothing is measured).

    Args:
        model: the model the tables are for.
        ms_per_mac: milliseconds per MAC of every tabled layer.
        rest_ms: the whole model's latency beyond its tabled layers.
        grid: the grid's fractions.
        graph: the model's `ChannelGraph`, if already built.
    """
    from tfprune.graph import ChannelGraph

    graph = graph or ChannelGraph(model)
    grid = _check_grid(grid)
    tables, layers, total = {}, {}, 0.0
    for t in tabled_layers(graph):
        n_in, n_out = len(graph.recorded(t.path)["in"]), len(graph.recorded(t.path)["out"])
        inputs, outputs = t.counts(grid, n_in, n_out)
        macs_full = t.calls * t.output_positions * _macs_per_position(t.layer, t.rule, n_in, n_out)
        if t.kind == "1d":
            ms = [ms_per_mac * macs_full * i / n_in for i in inputs]
            table = LayerTable(inputs, None, ms)
        else:
            ms = [[ms_per_mac * macs_full * i * o / (n_in * n_out) for o in outputs] for i in inputs]
            table = LayerTable(inputs, outputs, ms)
        key = f"synthetic:{t.path}"
        tables[key], layers[t.path] = table, key
        total += table.at(n_in) if t.kind == "1d" else table.at(n_in, n_out)
    return LatencyTables(runtime="litert", threads=1, runtime_version="synthetic", cpu="synthetic", grid=grid,
                         whole_ms=total + rest_ms, tables=tables, layers=layers)
