"""The `tfprune` command: summary, prune, rebuild, export and bench on .keras (and .tflite, .onnx) files.

    tfprune summary MODEL.keras
    tfprune prune MODEL.keras --ratio 0.5 [--criterion l1] [--scope global] [--plan-out PLAN.json] -o SLIM.keras
    tfprune prune MODEL.keras --macs 0.5 | --params 0.5 | --latency 0.5 [--runtime litert] [--round-to auto] -o ...
    tfprune search abc|random|dmcp MODEL.keras --data DATA.npz|FOLDER|fashion_mnist --macs 0.5 | --params 0.5
        | --latency 0.5 [--runtime litert] [--fine-tune-epochs 2] -o SLIM.keras
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
    step = args.round_to if args.round_to is not None else "auto" if args.latency is not None else 1
    round_to = resolve_round_to(step, args.runtime)

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

        kind, value = _budget(args)
        progress(f"planning ({args.criterion}, {args.scope} scope) for {value} of the {kind}")
        chosen, reached = plan_for_macs(model, {kind: value}, make_plan, graph=graph)
        if reached > value:
            raise CommandError(f"--{kind} {value} cannot be reached: the smallest plan tried keeps {reached:.3f} of "
                               f"the {kind} (--round-to {step}, --min-channels {args.min_channels}).")
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


def _search(args, progress):
    _check_output(args.output, ".keras")
    if args.plan_out is not None:
        _check_output(args.plan_out, ".json")
    _check_model_file(args.model)
    progress(f"reading {args.data}")  # arrays are read and checked before the model is loaded, which is slower
    sources = [(args.data, "--data")] + ([(args.val_data, "--val-data")] if args.val_data is not None else [])
    read = [_labelled_arrays(source, flag) for source, flag in sources]
    model = _load_model(args.model, progress)
    train, *val = (_labelled(source, flag, model, args.rescale, arrays)
                   for (source, flag), arrays in zip(sources, read, strict=True))
    if val:
        val = val[0]
    else:
        train, val = _split(train, args.val_split, args.data)
    loss, default_loss = _search_loss(model)
    if default_loss:
        for flag, (_, y) in (("--data", train), ("--val-data" if args.val_data else "--data", val)):
            _check_class_labels(y, model, flag)
    import keras

    model.compile(keras.optimizers.SGD(args.learning_rate, momentum=0.9), loss, metrics=["accuracy"])
    kind, value = _budget(args)
    target = {kind: value, "runtime": args.runtime, "threads": args.threads} if kind == "latency" else {kind: value}
    if kind == "latency":
        progress(f"latency tables for {args.runtime}, {args.threads} thread(s) (cached after the first build)")
    progress(f"{args.method} search for {value} of the {kind}")
    result = _run_search(args, model, train, val, target)
    progress("rebuilding")
    slim = result.slim_model()
    accuracy = {"original": _accuracy(model, val, args.batch_size), "slim": _accuracy(slim, val, args.batch_size)}
    if args.fine_tune_epochs:
        from tfprune.training.fine_tuning import fine_tune

        progress(f"fine-tuning {args.fine_tune_epochs} epoch(s)")
        fine_tune(slim, train, args.fine_tune_epochs, optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
                  loss=loss, metrics=["accuracy"], batch_size=args.batch_size, verbose=0)
        accuracy["fine_tuned"] = _accuracy(slim, val, args.batch_size)
    search = {"method": result.method, "cost": result.cost, "target": value, "cost_ratio": result.cost_ratio,
              "macs_ratio": result.macs_ratio, "widths": result.widths, "evaluations": result.evaluations,
              "fitness": result.fitness, "seconds": result.seconds, "train_examples": len(train[0]),
              "val_examples": len(val[0]), "val_accuracy": accuracy}
    macs = "" if result.cost == "macs" else f", MACs ratio {result.macs_ratio:.3f}"
    lines = [f"{args.method} search: {result.cost} ratio {result.cost_ratio:.3f} (target {value}){macs}, "
             f"{result.evaluations} evaluation(s) in {result.seconds:.0f} s",
             f"validation accuracy ({len(val[0])} examples): original {accuracy['original']:.4f}, slim "
             f"{accuracy['slim']:.4f}" + (f", fine-tuned {args.fine_tune_epochs} epoch(s) "
                                          f"{accuracy['fine_tuned']:.4f}" if "fine_tuned" in accuracy else "")]
    return _save_slim(args, model, slim, result.plan, args.plan_out, progress, more=({"search": search}, lines))


def _run_search(args, model, train, val, target):
    """The `SearchResult` of `args.method` on the compiled `model`."""
    from tfprune.deployment.channel_tiles import resolve_round_to
    from tfprune.search import abc, dmcp, random_search

    if args.method == "dmcp":
        return dmcp(model, train, target, epochs=args.epochs, batch_size=args.batch_size,
                    warmup_fraction=args.warmup_fraction, seed=args.seed, verbose=0)
    common = dict(fine_tune_steps=args.fine_tune_steps, batch_size=args.batch_size, criterion=args.criterion,
                  round_to=resolve_round_to(args.round_to, args.runtime), seed=args.seed, verbose=0)
    if args.method == "abc":
        return abc(model, train, val, target, food_sources=args.food_sources, cycles=args.cycles, limit=args.limit,
                   **common)
    return random_search(model, train, val, target, evaluations=args.evaluations, **common)


def _search_loss(model):
    """(the loss the search trains with, whether it is the default): the model's compiled loss if it was saved
    with one, else sparse categorical cross-entropy (on logits unless the model ends in a softmax)."""
    import keras

    if getattr(model, "compiled", False) and getattr(model, "loss", None) is not None:
        return model.loss, False
    from tfprune.training.fine_tuning import _ends_in_softmax

    if len(model.outputs) != 1:
        raise CommandError(f"the model has {len(model.outputs)} outputs and was saved without a loss: the search's "
                           "default loss (sparse categorical cross-entropy) needs one output; save the model "
                           "compiled with its loss.")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not _ends_in_softmax(model)), True


def _accuracy(model, data, batch_size):
    """Top-1 accuracy of `model` on `(x, y)`, with class labels or one-hot labels (the model is not compiled)."""
    import numpy as np

    x, y = data
    predicted = np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)
    return float(np.mean(predicted == (y if y.ndim == 1 else np.argmax(y, axis=-1))))


def _save_slim(args, model, slim, chosen, plan_out, progress, fit=None, more=None):
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
    if more is not None:  # the search's own result
        data.update(more[0])
        lines += more[1]
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


def _labelled_arrays(source, flag):
    """`(x, y)` from an .npz with arrays "x" and "y" or from the name "fashion_mnist" (its training split, read
    offline); None for a folder of images, which is read at the model's input size (`_labelled`)."""
    if source == "fashion_mnist":
        from tfprune.training.datasets import fashion_mnist

        (x, y), _ = fashion_mnist()  # the test split is never searched on
        return x, y
    if os.path.isdir(source):
        return None
    x, y = _arrays(source, flag)
    if y is None:
        raise CommandError(f"{source}: {flag} needs labels: an array 'y' beside the examples 'x' "
                           "(numpy.savez(path, x=examples, y=labels)).")
    return x, y


def _labelled(source, flag, model, rescale, arrays):
    """Examples and labels `(x, y)` for a search: `arrays` (from `_labelled_arrays`) or, for a folder of images in
    one sub-folder per class, the images read at the model's input size; checked against the model's input."""
    import numpy as np

    x, y = arrays if arrays is not None else _image_folder(source, flag, model, rescale)
    if len(x) != len(y):
        raise CommandError(f"{source}: {flag} has {len(x)} examples in 'x' but {len(y)} labels in 'y'.")
    expected = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
    if expected is not None and (len(x.shape) != 1 + len(expected)
                                 or any(e is not None and e != n for e, n in zip(expected, x.shape[1:], strict=True))):
        raise CommandError(f"{source}: {flag} examples have shape {tuple(x.shape[1:])}, but the model takes "
                           f"{tuple(None if e is None else int(e) for e in expected)}.")
    if len(x) < 2:
        raise CommandError(f"{source}: {flag} has {len(x)} example(s); a search needs at least 2.")
    return x, np.asarray(y)


def _image_folder(path, flag, model, rescale):
    """`keras.utils.image_dataset_from_directory` at the model's input size, read into arrays (pixel values as
    Keras reads them, 0-255, times `--rescale`)."""
    import contextlib
    import io

    import keras
    import numpy as np

    shape = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else ()
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(shape[-1] if len(shape) == 4 else None)
    if mode is None or None in shape[1:3]:
        raise CommandError(f"{path}: {flag} is a folder of images, which needs a model with one image input of "
                           f"fixed height and width and 1, 3 or 4 channels; this one takes {shape or 'several'}.")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "Found N files belonging to K classes."
            images = keras.utils.image_dataset_from_directory(path, label_mode="int", color_mode=mode,
                                                              image_size=shape[1:3], batch_size=256, shuffle=False)
    except ValueError as error:
        raise CommandError(f"{path}: {flag} is not a folder of images in one sub-folder per class "
                           f"({_one_line(error)}).") from None
    batches = list(images.as_numpy_iterator())
    if not batches:
        raise CommandError(f"{path}: {flag} holds no images (.jpeg, .png, .bmp or .gif in one sub-folder per class).")
    return rescale * np.concatenate([b[0] for b in batches]).astype("float32"), np.concatenate([b[1] for b in batches])


def _check_class_labels(y, model, flag):
    """Integer class labels in [0, classes) for the default sparse categorical cross-entropy."""
    import numpy as np

    classes = model.outputs[0].shape[-1]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise CommandError(f"{flag}: the labels must be integer class indices of shape (N,) for the default loss "
                           f"(sparse categorical cross-entropy); got {y.dtype} of shape {y.shape}. Save the model "
                           "compiled with another loss to use other labels.")
    if len(y) and (y.min() < 0 or (classes is not None and y.max() >= classes)):
        raise CommandError(f"{flag}: labels range over [{y.min()}, {y.max()}], but the model has {classes} "
                           f"classes: labels must be in [0, {classes}).")


def _split(data, fraction, source):
    """(train, validation) of `data`: a random `fraction` of the examples (seed 0) held out for validation."""
    import numpy as np

    x, y = data
    held = round(fraction * len(x))
    if not 1 <= held < len(x):
        raise CommandError(f"{source}: --val-split {fraction} of {len(x)} examples leaves {held} for validation and "
                           f"{len(x) - held} for training; both need at least 1 (or give --val-data).")
    order = np.random.default_rng(0).permutation(len(x))
    return (x[order[held:]], y[order[held:]]), (x[order[:held]], y[order[:held]])


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


def _add_budget(sub, ratio):
    """The budget options of `prune` (with `--ratio`) and `search`: one of --macs, --params, --latency (with
    --runtime and --threads)."""
    budget = sub.add_mutually_exclusive_group(required=True)
    if ratio:
        budget.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1): per group (layer "
                            "scope) or overall (global)")
    budget.add_argument("--macs", type=float, metavar="R", help="keep this fraction of the MACs, in (0, 1]")
    budget.add_argument("--params", type=float, metavar="R", help="keep this fraction of the params, in (0, 1]")
    budget.add_argument("--latency", type=float, metavar="R",
                        help="run in this fraction of the latency on --runtime, measured on this CPU, in (0, 1]")
    sub.add_argument("--runtime", choices=("litert", "onnxruntime"), default="litert",
                     help="the runtime of --latency and of --round-to auto (default litert)")
    sub.add_argument("--threads", type=int, default=1, help="the runtime's CPU threads for --latency (default 1)")


def _budget(args):
    """(cost, ratio) of the budget given: ("macs", 0.5), ("params", ...) or ("latency", ...)."""
    return next((kind, getattr(args, kind)) for kind in ("macs", "params", "latency")
                if getattr(args, kind) is not None)


def _fraction(text):
    """A number such as 0.5 or a fraction such as 1/255."""
    import fractions

    try:
        return float(fractions.Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 1/255, got {text!r}") from None


def _ratio(after, before):
    return f"{after / before:.3f}" if before else "n/a"


SEARCH_HELP = {
    "abc": "ABCPruner (tfprune.search.abc): a bee colony searches per-group widths under the budget, each candidate "
           "fine-tuned briefly on --data and scored on the validation split.",
    "random": "Random search (tfprune.search.random_search): random per-group widths under the budget, the fittest "
              "on the validation split kept.",
    "dmcp": "DMCP (tfprune.search.dmcp): per-group widths learned by gradient descent on Markov channel gates "
            "while training on --data, under the budget."}
DATA_HELP = ("training examples for the search: an .npz file with arrays 'x' (examples, shaped as the model's "
             "input) and 'y' (labels: integer classes for the default loss); a folder of images with one "
             "sub-folder per class (read with keras.utils.image_dataset_from_directory at the model's input size, "
             "into memory); or 'fashion_mnist' (the training split of the local Debian copy, "
             "/usr/share/datasets/fashion-mnist)")


def _add_search_commands(commands, command):
    """`tfprune search abc|random|dmcp`: one sub-command per search, with the options they share defined once."""
    search = commands.add_parser("search", help="Search per-group widths under a MACs, params or latency budget "
                                 "(abc, random, dmcp) on data and save the slim model.",
                                 description="Search per-group widths under a budget on --data and save the slim "
                                 "model. The model is trained with SGD (momentum 0.9, --learning-rate) on its saved "
                                 "loss, or on sparse categorical cross-entropy if it was saved without one; the "
                                 "accuracy on the validation split is reported. Run `tfprune search METHOD --help`.")
    methods = search.add_subparsers(dest="method", required=True, metavar="METHOD")

    def method(name):
        sub = methods.add_parser(name, help=SEARCH_HELP[name], description=SEARCH_HELP[name])
        sub.set_defaults(run=_search)
        for flags, options in _common_options():
            sub.add_argument(*flags, **options)
        sub.add_argument("model", metavar="MODEL.keras")
        sub.add_argument("--data", required=True, metavar="DATA", help=DATA_HELP)
        sub.add_argument("--val-data", metavar="DATA", help="validation examples in the same forms as --data "
                         "(default: --val-split of --data; never the test set)")
        sub.add_argument("--val-split", type=float, default=0.1,
                         help="fraction of --data held out (at random, seed 0) for validation without --val-data "
                              "(default 0.1)")
        sub.add_argument("--rescale", type=_fraction, default=1.0,
                         help="multiply the pixel values of a folder of images by this, e.g. 1/255 for a model "
                              "trained on [0, 1] (default 1: 0-255)")
        _add_budget(sub, ratio=False)
        sub.add_argument("--learning-rate", type=float, default=0.01, help="SGD learning rate (default 0.01)")
        sub.add_argument("--batch-size", type=int, default=64, help="default 64")
        sub.add_argument("--fine-tune-epochs", type=int, default=0,
                         help="fine-tune the slim model this many epochs on --data before saving (default 0)")
        sub.add_argument("--seed", type=int, default=None, help="seeds the search: same seed, same result")
        sub.add_argument("--plan-out", metavar="PLAN.json", help="also write the plan as JSON")
        sub.add_argument("-o", "--output", metavar="SLIM.keras", required=True, help="where the slim model goes")
        return sub

    for name in ("abc", "random"):
        sub = method(name)
        sub.add_argument("--fine-tune-steps", type=int, default=50,
                         help="batches each candidate is fine-tuned before it is scored (default 50)")
        sub.add_argument("--criterion", default="l1", help="which channels a width keeps: l1, l2, random (default l1)")
        sub.add_argument("--round-to", type=_round_to, default=1,
                         help="widths are multiples of this, or 'auto': the runtime's channel tile on this CPU")
        if name == "abc":
            sub.add_argument("--food-sources", type=int, default=10, help="default 10")
            sub.add_argument("--cycles", type=int, default=10, help="default 10")
            sub.add_argument("--limit", type=int, default=5, help="unimproved trials before a source is abandoned "
                             "(default 5)")
        else:
            sub.add_argument("--evaluations", type=int, default=20, help="candidates scored (default 20)")
    sub = method("dmcp")
    sub.add_argument("--epochs", type=int, default=10, help="training epochs on --data in all (default 10)")
    sub.add_argument("--warmup-fraction", type=float, default=0.5,
                     help="fraction of the epochs that train the weights only, in [0, 1) (default 0.5)")


def _common_options():
    """The options of every subcommand: (flags, keyword arguments) of `add_argument`."""
    return ((("--json",), dict(action="store_true", help="print the result as JSON on stdout")),
            (("-q", "--quiet"), dict(action="store_true", help="no progress line on stderr")),
            (("-v", "--verbose"), dict(action="store_true",
                                       help="let TensorFlow's own log through to stderr (hidden by default)")))


def _parser():
    parser = argparse.ArgumentParser(prog="tfprune", description="Structured pruning of Keras CNNs: remove whole "
                                     "filters and channels and save a physically smaller model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, run, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        for flags, options in _common_options():
            sub.add_argument(*flags, **options)
        return sub

    sub = command("summary", _summary, "Per-layer channels, parameters and MACs of a model.")
    sub.add_argument("model", metavar="MODEL.keras")

    sub = command("prune", _prune, "Plan and rebuild: remove a fraction of the channels and save the slim model.")
    sub.add_argument("model", metavar="MODEL.keras")
    _add_budget(sub, ratio=True)
    sub.add_argument("--criterion", default="l1",
                     help="l1, l2, random, lasso, or with --data: mean_activation, apoz, hrank, taylor (default l1)")
    sub.add_argument("--scope", choices=("layer", "global"), default="layer", help="default layer")
    sub.add_argument("--min-channels", type=int, default=1, help="no group keeps fewer channels (default 1)")
    sub.add_argument("--round-to", type=_round_to, default=None,
                     help="round kept channel counts up to a multiple of this, or 'auto': the runtime's channel tile "
                          "on this CPU (default: auto with --latency, else 1)")
    sub.add_argument("--prune-outputs", action="store_true", help="also prune groups that reach a model output")
    sub.add_argument("--data", metavar="DATA.npz", help="examples 'x' (and labels 'y') for data-driven criteria")
    sub.add_argument("--seed", type=int, default=None, help="seed of the random and lasso criteria")
    sub.add_argument("--plan-out", metavar="PLAN.json", help="also write the plan as JSON")
    sub.add_argument("-o", "--output", metavar="SLIM.keras", required=True, help="where the slim model goes")

    _add_search_commands(commands, command)

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
