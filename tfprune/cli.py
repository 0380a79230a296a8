"""The `tfprune` command: summary, prune, rebuild, export and bench on .keras (and .tflite, .onnx) files.

    tfprune summary MODEL.keras
    tfprune prune MODEL.keras --ratio 0.5 [--criterion l1] [--scope global] [--plan-out PLAN.json] -o SLIM.keras
    tfprune prune MODEL.keras --macs 0.5 | --params 0.5 | --latency 0.5 [--runtime litert] [--round-to auto] -o ...
    tfprune rebuild MODEL.keras PLAN.json -o SLIM.keras
    tfprune export SLIM.keras --format tflite|onnx|saved_model|keras [--quantize int8 --calibration DATA.npz]
    tfprune bench MODEL.keras SLIM.keras|SLIM.tflite|SLIM.onnx ... [--engines tensorflow,tflite,onnxruntime]

Every subcommand prints a readable result on stdout, or JSON with `--json`. Models load with Keras safe mode on.
Anything wrong with the input (a missing, corrupt or non-Keras file, a model that needs unregistered custom objects, a
plan that does not fit, a bad ratio) ends the command with one line on stderr, `tfprune <command>: error: ...`, and
exit status 1 (2 for command-line usage errors). Progress goes to stderr when it is a terminal.

TensorFlow is imported only when a subcommand needs it (so `--help` and most input errors are quick). What
TensorFlow, LiteRT, ONNX Runtime and the converters log on stderr (file descriptor 2) is hidden unless `--verbose`
is given. .tflite files run in LiteRT (`ai_edge_litert`), .onnx files in ONNX Runtime.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import zipfile

_TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of a TFLite model, at bytes 4-8


class CommandError(Exception):
    """Something about the command's input that the user must fix; its message is the one line printed."""


def main(argv=None) -> int:
    """Run the `tfprune` command with `argv` (default `sys.argv[1:]`); returns the exit status."""
    args = _parser().parse_args(argv)
    with _Console(capture=not args.verbose) as console:
        status, output = _run(args, console)
    if output is not None:
        try:
            print(output, flush=True)
        except BrokenPipeError:  # e.g. `tfprune ... --json | head`: the reader left; end quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


def _run(args, console):
    """(exit status, text for stdout or None); errors are reported on the console as one line."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow is first imported, below
        progress = _Progress(console, enabled=not args.quiet and console.isatty())
        try:
            data, text = args.run(args, progress)
        finally:
            progress.done()
    except KeyboardInterrupt:
        console.write(f"tfprune {args.command}: interrupted\n")
        return 130, None
    except (CommandError, ValueError, TypeError, OSError) as error:  # PlanError, UnsupportedModelError included
        console.write(f"tfprune {args.command}: error: {_one_line(error)}\n")
        return 1, None
    except Exception as error:  # not an input problem we know of: still one line, with its type
        hint = "" if args.verbose else " (--verbose shows TensorFlow's log)"
        console.write(f"tfprune {args.command}: error: {type(error).__name__}: {_one_line(error)}{hint}\n")
        return 1, None
    return 0, json.dumps(data, indent=1) if args.json else text


# --------------------------------------------------------------------------------------------------- subcommands

def _summary(args, progress):
    model = _load_model(args.model, progress)
    from tfprune.measurement.counting import count_macs, count_params, layer_counts
    from tfprune.measurement.summaries import attention_heads, summary

    text = summary(model, print_fn=lambda line: None)
    layers = [dataclasses.asdict(c) for c in layer_counts(model).values() if c.params or c.macs]
    data = {"model": args.model, "name": model.name, "params": count_params(model), "macs": count_macs(model),
            "layers": layers, "heads": attention_heads(model)}
    return data, text


def _prune(args, progress):
    _check_output(args.output, ".keras")
    if args.plan_out is not None:
        _check_output(args.plan_out, ".json")
    data = None if args.data is None else _arrays(args.data, "--data", labels_as_pair=True)
    model = _load_model(args.model, progress)
    from tfprune.deployment.channel_tiles import resolve_round_to
    from tfprune.graph import ChannelGraph
    from tfprune.pruning.planning import plan
    from tfprune.pruning.rebuilding import rebuild

    progress("analysing channel groups")
    graph = ChannelGraph(model, prune_outputs=args.prune_outputs)
    round_to = resolve_round_to(args.round_to, args.runtime)

    def make_plan(ratio):
        return plan(model, ratio, criterion=args.criterion, scope=args.scope, min_channels=args.min_channels,
                    round_to=round_to, data=data, seed=args.seed, graph=graph)

    fit = None
    if args.ratio is not None:
        progress(f"planning ({args.criterion}, {args.scope} scope, ratio {args.ratio})")
        chosen = make_plan(args.ratio)
    elif args.latency is not None:
        from tfprune.pruning.targets import plan_for_latency

        chosen, fit = plan_for_latency(model, args.latency, runtime=args.runtime, threads=args.threads,
                                       make_plan=make_plan, graph=graph, progress=progress)
    else:
        from tfprune.pruning.targets import plan_for_macs

        kind, value = ("macs", args.macs) if args.macs is not None else ("params", args.params)
        progress(f"planning ({args.criterion}, {args.scope} scope) for {value} of the {kind}")
        chosen, reached = plan_for_macs(model, {kind: value}, make_plan, graph=graph)
        if reached > value:
            raise CommandError(f"--{kind} {value} cannot be reached: the smallest plan tried keeps {reached:.3f} of "
                               f"the {kind} (--round-to {args.round_to}, --min-channels {args.min_channels}).")
    progress("rebuilding")
    slim = rebuild(model, chosen, graph=graph)
    return _save_slim(args, model, slim, chosen, args.plan_out, progress, fit)


def _rebuild(args, progress):
    from tfprune.errors import PlanError
    from tfprune.pruning.plans import Plan

    _check_output(args.output, ".keras")
    _check_input(args.plan, "plan")
    try:
        chosen = Plan.load(args.plan)
    except UnicodeDecodeError:
        raise PlanError(f"{args.plan}: not a tfprune plan (not a text file).") from None
    model = _load_model(args.model, progress)
    from tfprune.pruning.rebuilding import rebuild

    progress("rebuilding")
    slim = rebuild(model, chosen, reinit=args.reinit, seed=args.seed)
    return _save_slim(args, model, slim, chosen, None, progress)


def _save_slim(args, model, slim, chosen, plan_out, progress, fit=None):
    from tfprune.measurement.counting import count_macs, count_params
    from tfprune.measurement.summaries import attention_heads

    progress(f"saving {args.output}")
    slim.save(args.output)
    if plan_out is not None:
        chosen.save(plan_out)
    before = {"params": count_params(model), "macs": count_macs(model)}
    after = {"params": count_params(slim), "macs": count_macs(slim)}
    pruned = sum(len(kept) < chosen.widths[name] for name, kept in chosen.keep.items())
    heads_before, heads_after = attention_heads(model), attention_heads(slim)
    heads = {path: {"before": n, "after": heads_after.get(path)} for path, n in heads_before.items()}
    data = {"model": args.model, "output": args.output, "plan": plan_out, "groups_pruned": pruned,
            "before": before, "after": after, "heads": heads}
    lines = [f"params {before['params']:,} → {after['params']:,} ({_ratio(after['params'], before['params'])}), "
             f"MACs {before['macs']:,} → {after['macs']:,} ({_ratio(after['macs'], before['macs'])}); "
             f"{pruned} channel group(s) pruned"]
    if heads:  # "heads: mha 4 → 2, gqa 8/4 → 4/2"
        lines.append("heads: " + ", ".join(f"{path} {n['before']} → {n['after']}" for path, n in heads.items()))
    if fit is not None:  # plan_for_latency's check
        data["latency"] = {"runtime": args.runtime, "threads": args.threads, "target": fit.target,
                           "predicted_ratio": fit.predicted_ratio, "measured_ratio": fit.measured_ratio,
                           "original_ms": fit.original_ms, "slim_ms": fit.slim_ms, "corrections": fit.corrections}
        lines.append(f"latency on {args.runtime} ({args.threads} thread(s)): {fit.original_ms:.3f} ms → "
                     f"{fit.slim_ms:.3f} ms, measured ratio {fit.measured_ratio:.3f} "
                     f"(predicted {fit.predicted_ratio:.3f}, target {fit.target})")
    lines.append(f"wrote {args.output}" + (f" and plan {plan_out}" if plan_out else ""))
    return data, "\n".join(lines)


def _export(args, progress):
    output = args.output or _default_export_path(args.model, args.format, args.quantize)
    if args.format in ("keras", "tflite", "onnx"):
        _check_output(output, f".{args.format}")
    if args.quantize is not None and args.format != "tflite":
        raise CommandError(f"--quantize applies to --format tflite only, not --format {args.format}.")
    if args.quantize == "int8" and args.calibration is None:
        raise CommandError("--quantize int8 needs --calibration DATA.npz (example inputs to calibrate "
                           "activation ranges).")
    examples = labels = None
    if args.calibration is not None:
        examples, labels = _arrays(args.calibration, "--calibration")
    model = _load_model(args.model, progress)
    from tfprune.deployment.exporting import export

    progress(f"exporting {args.format}" + (f" ({args.quantize})" if args.quantize else "") + f" to {output}")
    result = export(model, output, format=args.format, quantize=args.quantize, representative_data=examples,
                    labels=labels)
    data = dataclasses.asdict(result)
    text = (f"wrote {result.path} ({args.format}{', ' + args.quantize if args.quantize else ''}, "
            f"{result.size_bytes:,} bytes); reloaded in {result.runtime}, max |output difference| vs the Keras "
            f"model {result.max_abs_difference:.2e}")
    if result.accuracy is not None:
        text += f"\naccuracy on the {len(examples)} calibration examples: {result.accuracy:.4f} " \
                f"(Keras model: {result.reference_accuracy:.4f})"
    return data, text


def _bench(args, progress):
    threads = tuple(None if t == "all" else _int(t, "--threads") for t in args.threads.split(","))
    batch_sizes = tuple(_int(b, "--batch-sizes") for b in args.batch_sizes.split(","))
    for path in args.models:  # every file checked before any is loaded
        if path.endswith(".tflite"):
            _check_tflite(path)
        elif path.endswith(".onnx"):
            _check_onnx(path)
        else:
            _check_model_file(path)
    if args.engines == "auto":
        engines = ("tensorflow", "tflite") + (("onnxruntime",) if any(p.endswith(".onnx") for p in args.models) else ())
    else:
        engines = tuple(args.engines.split(","))
    models = {}
    for path in args.models:
        label = os.path.basename(path) if os.path.basename(path) not in models else path
        models[label] = path if path.endswith((".tflite", ".onnx")) else _load_model(path, progress)
    from tfprune.measurement.benchmarking import benchmark

    report = benchmark(models, batch_sizes=batch_sizes, threads=threads, engines=engines, runs=args.runs,
                       warmup=args.warmup, progress=progress)
    return {"reference": report.reference, "rows": report.to_dicts()}, report.table()


# ---------------------------------------------------------------------------------------------------- input checks

def _load_model(path, progress):
    """`keras.models.load_model(path, safe_mode=True)`, or a CommandError that says in one line what is wrong."""
    config = _check_model_file(path)
    progress(f"loading {path}")
    import keras

    _register_tfprune_layers(path, config)
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as error:
        missing = _unknown_classes(config)
        if missing:
            raise CommandError(f"{path}: needs custom objects that are not registered with Keras: "
                               f"{', '.join(missing)}. The command line loads models built from Keras layers only "
                               "(custom classes would have to be importable and registered with "
                               "@keras.saving.register_keras_serializable).") from None
        if "safe_mode" in str(error):
            raise CommandError(f"{path}: contains Python code (a Lambda layer) that Keras safe mode refuses to load; "
                               "the command line only loads models without it.") from None
        raise CommandError(f"{path}: Keras could not load it: {_one_line(error)}") from None
    if not isinstance(model, keras.Model):
        raise CommandError(f"{path}: holds a {type(model).__name__}, not a keras.Model.")
    return model


def _register_tfprune_layers(path, config):
    """Import the modules of the tfprune layers a saved config names (a slim Llama's `LlamaAttentionWithHeadDim`),
    which registers them with Keras: Keras imports the modules of its own classes only."""
    import importlib

    modules = set()

    def visit(node):
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str) and module.startswith("tfprune.layers."):
                modules.add(module)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    for module in sorted(modules):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise CommandError(f"{path}: holds layers of {module}, which cannot be imported "
                               f"({_one_line(error)}); install what it needs (keras-hub for a slim Llama).") from None


def _check_model_file(path):
    """The model config of a .keras file, or a CommandError saying why the file is not one (without loading it)."""
    _check_input(path, "model")
    if not path.endswith(".keras"):
        raise CommandError(f"{path}: expected a .keras file (the Keras 3 format); save the model with "
                           "model.save('name.keras').")
    if not zipfile.is_zipfile(path):
        raise CommandError(f"{path}: not a Keras model file (a .keras file is a zip archive; this one is not, "
                           "or is truncated or corrupt).")
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise CommandError(f"{path}: a zip archive but not a Keras model (it has no config.json).")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise CommandError(f"{path}: corrupt Keras model file ({_one_line(error)}).") from None
    return config


def _unknown_classes(config):
    """Names of the classes in a saved Keras config that Keras cannot find (neither registered nor importable)."""
    import importlib

    import keras

    found = []

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and "module" in node and "config" in node:
                registered = node.get("registered_name")
                if registered is not None and keras.saving.get_registered_object(registered) is not None:
                    pass
                elif node["module"] is None:  # Keras' own objects have a module; a custom one has only its name
                    if registered is not None:
                        found.append(registered)
                elif not _importable(node["module"], node["class_name"]):
                    found.append(registered or node["class_name"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    def _importable(module, class_name):
        try:
            return hasattr(importlib.import_module(module), class_name)
        except Exception:
            return False

    visit(config)
    return sorted(set(found))


def _check_input(path, what):
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file ({what}).")
    if os.path.isdir(path):
        raise CommandError(f"{path}: is a directory, not a {what} file.")


def _check_output(path, suffix):
    if not path.endswith(suffix):
        raise CommandError(f"{path}: the output must be a {suffix} file.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"{path}: folder {folder} does not exist.")


def _check_tflite(path):
    _check_input(path, "TFLite")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != _TFLITE_IDENTIFIER:
        raise CommandError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier).")


def _check_onnx(path):
    _check_input(path, "ONNX")
    from tfprune.deployment.runtimes import onnx_session

    try:
        onnx_session(path)
    except ImportError:
        raise
    except Exception as error:
        raise CommandError(f"{path}: not an ONNX model that ONNX Runtime can load ({_one_line(error)}).") from None


def _arrays(path, flag, labels_as_pair=False):
    """Examples (and labels, or None) from an .npz with arrays "x" (and "y"), or with a single array."""
    import numpy as np

    _check_input(path, flag)
    try:
        stored = np.load(path, allow_pickle=False)
    except Exception as error:
        raise CommandError(f"{path}: {flag} must be an .npz file of arrays ({_one_line(error)}).") from None
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise CommandError(f"{path}: {flag} must be an .npz file (from numpy.savez), not a single .npy array.")
    with stored:
        arrays = {name: stored[name] for name in stored.files}
    if "x" in arrays:
        x, y = arrays["x"], arrays.get("y")
    elif len(arrays) == 1:
        (x,), y = arrays.values(), None
    else:
        raise CommandError(f"{path}: {flag} needs an array named 'x' (examples) and optionally 'y' (labels); "
                           f"found {sorted(arrays)}.")
    x = x.astype("float32")
    if labels_as_pair:
        return x if y is None else (x, y)
    return x, y


def _default_export_path(model_path, format, quantize):
    stem = model_path[: -len(".keras")] if model_path.endswith(".keras") else model_path
    suffix = f"_{quantize}" if quantize else ""
    return {"tflite": f"{stem}{suffix}.tflite", "saved_model": f"{stem}_saved_model",
            "keras": f"{stem}_export.keras", "onnx": f"{stem}.onnx"}[format]


def _int(text, flag):
    try:
        return int(text)
    except ValueError:
        raise CommandError(f"{flag}: {text!r} is not an integer.") from None


# ---------------------------------------------------------------------------------------------------- plumbing

class _Console:
    """The terminal's stderr for progress and errors, while file descriptor 2 (where TensorFlow, TFLite and the
    converter write their logs from C++) goes to a temporary file that is discarded, unless `capture` is False."""

    def __init__(self, capture):
        self.capture = capture

    def __enter__(self):
        sys.stderr.flush()
        if not self.capture:
            self.stream = sys.stderr
            return self
        self.saved = os.dup(2)
        self.stream = os.fdopen(os.dup(2), "w")
        self.log = tempfile.TemporaryFile()
        os.dup2(self.log.fileno(), 2)
        return self

    def __exit__(self, *exc_info):
        self.stream.flush()
        if self.capture:
            sys.stderr.flush()
            os.dup2(self.saved, 2)
            os.close(self.saved)
            self.stream.close()
            self.log.close()
        return False

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()

    def isatty(self):
        return self.stream.isatty()


class _Progress:
    """One line of progress on the console, rewritten in place (only when enabled: a terminal, no --quiet)."""

    def __init__(self, console, enabled):
        self.console = console
        self.enabled = enabled
        self.shown = False

    def __call__(self, message):
        if self.enabled:
            self.console.write(f"\r\033[K{message} …")
            self.shown = True

    def done(self):
        if self.shown:
            self.console.write("\r\033[K")


def _one_line(error):
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _round_to(text):
    """`--round-to`: "auto" or an integer >= 1."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}")
    return value


def _ratio(after, before):
    return f"{after / before:.3f}" if before else "n/a"


def _parser():
    parser = argparse.ArgumentParser(prog="tfprune", description="Structured pruning of Keras CNNs: remove whole "
                                     "filters and channels and save a physically smaller model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, run, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        sub.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
        sub.add_argument("-v", "--verbose", action="store_true",
                         help="let TensorFlow's own log through to stderr (hidden by default)")
        return sub

    sub = command("summary", _summary, "Per-layer channels, parameters and MACs of a model.")
    sub.add_argument("model", metavar="MODEL.keras")

    sub = command("prune", _prune, "Plan and rebuild: remove a fraction of the channels and save the slim model.")
    sub.add_argument("model", metavar="MODEL.keras")
    budget = sub.add_mutually_exclusive_group(required=True)
    budget.add_argument("--ratio", type=float,
                        help="fraction of channels to remove, in [0, 1): per group (layer scope) or overall (global)")
    budget.add_argument("--macs", type=float, metavar="R", help="keep this fraction of the MACs, in (0, 1]")
    budget.add_argument("--params", type=float, metavar="R", help="keep this fraction of the params, in (0, 1]")
    budget.add_argument("--latency", type=float, metavar="R",
                        help="run in this fraction of the latency on --runtime, measured on this CPU, in (0, 1]")
    sub.add_argument("--runtime", choices=("litert", "onnxruntime"), default="litert",
                     help="the runtime of --latency (default litert)")
    sub.add_argument("--threads", type=int, default=1, help="the runtime's CPU threads for --latency (default 1)")
    sub.add_argument("--criterion", default="l1",
                     help="l1, l2, random, lasso, or with --data: mean_activation, apoz, hrank, taylor (default l1)")
    sub.add_argument("--scope", choices=("layer", "global"), default="layer", help="default layer")
    sub.add_argument("--min-channels", type=int, default=1, help="no group keeps fewer channels (default 1)")
    sub.add_argument("--round-to", type=_round_to, default=1,
                     help="round kept channel counts up to a multiple of this, or 'auto': the runtime's channel tile "
                          "on this CPU")
    sub.add_argument("--prune-outputs", action="store_true", help="also prune groups that reach a model output")
    sub.add_argument("--data", metavar="DATA.npz", help="examples 'x' (and labels 'y') for data-driven criteria")
    sub.add_argument("--seed", type=int, default=None, help="seed of the random and lasso criteria")
    sub.add_argument("--plan-out", metavar="PLAN.json", help="also write the plan as JSON")
    sub.add_argument("-o", "--output", metavar="SLIM.keras", required=True, help="where the slim model goes")

    sub = command("rebuild", _rebuild, "Rebuild a model with the channels a saved plan keeps.")
    sub.add_argument("model", metavar="MODEL.keras")
    sub.add_argument("plan", metavar="PLAN.json")
    sub.add_argument("--reinit", choices=("keep", "scratch"), default="keep",
                     help="keep the sliced trained weights (default) or start from fresh initialisers")
    sub.add_argument("--seed", type=int, default=None, help="seed of --reinit scratch")
    sub.add_argument("-o", "--output", metavar="SLIM.keras", required=True, help="where the slim model goes")

    sub = command("export", _export, "Write a model as TFLite, ONNX, SavedModel or .keras, load it back (LiteRT, "
                  "ONNX Runtime, TensorFlow, Keras) and check it against the model.")
    sub.add_argument("model", metavar="MODEL.keras")
    sub.add_argument("--format", choices=("tflite", "onnx", "saved_model", "keras"), default="tflite",
                     help="default tflite")
    sub.add_argument("--quantize", choices=("float16", "dynamic", "int8"), default=None,
                     help="TFLite quantisation (int8 needs --calibration)")
    sub.add_argument("--calibration", metavar="DATA.npz",
                     help="examples 'x' (and labels 'y': accuracy is then reported) to calibrate and check")
    sub.add_argument("-o", "--output", metavar="PATH",
                     help="output path (default: next to MODEL, e.g. MODEL.tflite, MODEL_int8.tflite)")

    sub = command("bench", _bench, "Inference latency of models on this CPU; ratios to the first model.")
    sub.add_argument("models", nargs="+", metavar="MODEL",
                     help=".keras, .tflite or .onnx files; the first is the reference")
    sub.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    sub.add_argument("--threads", default="1,all", help="comma-separated thread counts, 'all' = every CPU "
                     "(default 1,all)")
    sub.add_argument("--engines", default="auto",
                     help="comma-separated: tensorflow, tflite (LiteRT), onnxruntime; .keras files are converted "
                     "for tflite and onnxruntime (default auto: tensorflow,tflite, plus onnxruntime when an .onnx "
                     "file is given)")
    sub.add_argument("--runs", type=int, default=50, help="timed calls per model and setting (default 50)")
    sub.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
