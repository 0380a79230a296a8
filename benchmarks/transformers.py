"""A small ViT on Fashion-MNIST pruned to 50% and 25% of its MACs: heads, head widths and MLP widths (and, where
tfprune can do it exactly, the hidden width), fine-tuned with and without distillation, over seeds, exported and
timed in LiteRT and ONNX Runtime.

    nice -n 19 python benchmarks/transformers.py            # runs what is missing, appending each finished row to
                                                            # benchmarks/results/transformers.jsonl
    python benchmarks/transformers.py --report              # rewrites transformers.{md,png} from the rows
    python benchmarks/transformers.py --smoke               # the whole pipeline on a few images in ~3 minutes,
                                                            # written to /tmp/tfprune_transformers_smoke/
    python benchmarks/transformers.py --retime              # times every pruned ViT again (on a quiet machine,
                                                            # after the trainings), then --report

**Model** (`--vit`). "functional" (default): a ViT written with Keras layers — a Conv2D patch embedding
(`patch_size`), KerasHub's `PositionEmbedding`, `num_layers` pre-LayerNorm blocks of `keras.layers.MultiHeadAttention`
(`num_heads` heads of width `hidden_dim / num_heads`) and an MLP (`mlp_dim`, tanh-approximated GELU), a final
LayerNorm, global average pooling over the patches and a softmax Dense. "keras_hub": `keras_hub.models.ViTBackbone`
with the same sizes (and its class token) under the same pooling and head. Both have the same blocks; the
functional one is the default because KerasHub's MLP uses the exact GELU, whose `Erfc` op tf2onnx cannot convert,
so the KerasHub ViT has no ONNX file to check or time (its rows record the export error).

**Data.** The Fashion-MNIST training images (`train_size`, all 60,000 by default) for every training; the 10,000
test images (`test_size`) for the reported accuracies and nothing else.

**Baseline.** Trained once (seed `baseline_seed`) with one recipe: AdamW (decoupled weight decay `weight_decay`),
learning rate warmed up linearly over `warmup_epochs` epochs to `learning_rate`, then cosine decay to 0 over the
rest of `epochs`, batch `batch_size`, augmentation: 2-pixel zero padding + random 28×28 crop + horizontal flip
(`shared_setup.augmented`: the same batches for the same seed). Kept in `work_dir`; an interrupted training resumes
from its last finished epoch.

**Pruning.** L1 scores, global scope (`tfprune.plan(model, r, scope="global")`), the ratio bisected by
`tfprune.plan_for_macs` to ≤ each MACs target (MACs include QKᵀ and AV). Variants:
  heads_mlp  attention heads, head widths and MLP widths only (any hidden-width group is left out of the plan);
  hidden     also the hidden width (the residual stream through the LayerNorms, patch and position embeddings),
             opted in with `tfprune.plan(..., prune_spanning=True)`: the slim LayerNorms normalise over the kept
             channels only, so the kept values change too; the row records how much ("output_change": rebuild's
             figure on random inputs; "test_output_change": on 256 test images, both relative to the output
             scale). If the graph finds no prunable hidden-width group, the report records why and nothing is
             trained.
The plan does not depend on the seed: each (variant, target) is pruned, measured, exported and timed once.

**Fine-tuning**, from the pruned weights, for each seed: `finetune_epochs` epochs of the same recipe at
`finetune_learning_rate` (no warm-up), without ("finetune") and with ("finetune_kd") knowledge distillation from the
baseline (`tfprune.fine_tune(slim, data, epochs, teacher=baseline)`, temperature 3, student loss weight 0.5). An
interrupted fine-tuning resumes from its last finished epoch (`keras.callbacks.BackupAndRestore` in `work_dir`;
the row's `sittings` counts the runs it took, and its seconds add them up).

**Rows** (one JSON line per finished run, so that an interrupted run resumes): test accuracy before and after
fine-tuning, its drop against the baseline, MACs and params and their ratios, the LiteRT and ONNX Runtime latency
ratios (slim over full, batch 1, one thread, the two timed in turn by `tfprune.benchmark`), and the export check of
each file (`tfprune.export` runs it back and gives the largest absolute difference from the Keras model).
"""

import json
import math
import os
import re
import shutil
import statistics
import time
import warnings

import keras
import matplotlib
from absl import app, flags, logging

import tfprune
from tfprune.deployment.verification import output_change
from tfprune.errors import ExportError, OutputChangeWarning

import shared_setup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("vit", "functional", ["functional", "keras_hub"],
                  "The ViT: written with keras.layers.MultiHeadAttention, or keras_hub.models.ViTBackbone.")
flags.DEFINE_integer("patch_size", 4, "Patch height and width (28 must be a multiple).", lower_bound=1)
flags.DEFINE_integer("num_layers", 4, "Transformer blocks.", lower_bound=1)
flags.DEFINE_integer("num_heads", 4, "Attention heads per block.", lower_bound=1)
flags.DEFINE_integer("hidden_dim", 64, "Hidden width (a multiple of num_heads).", lower_bound=1)
flags.DEFINE_integer("mlp_dim", 128, "MLP width.", lower_bound=1)
flags.DEFINE_list("variants", ["heads_mlp", "hidden"], "What is pruned: heads_mlp, hidden (see the docstring).")
shared_setup.define_targets(["0.5", "0.25"])
shared_setup.define_seeds(["0", "1", "2"], "Seeds of the fine-tuning.")
shared_setup.define_fashion_mnist(60000, 10000)
shared_setup.define_training(batch_size=128, learning_rate=1e-3, epochs=60, finetune_epochs=10,
                             learning_rate_help="Peak AdamW learning rate of the baseline.",
                             epochs_help="Epochs of the baseline.",
                             finetune_help="Fine-tuning epochs of every slim model.")
flags.DEFINE_float("finetune_learning_rate", 2e-4, "Peak learning rate of fine-tuning (cosine decay to 0).")
flags.DEFINE_float("weight_decay", 0.05, "AdamW's decoupled weight decay.")
flags.DEFINE_integer("warmup_epochs", 3, "Linear warm-up epochs of the baseline.", lower_bound=0)
flags.DEFINE_integer("baseline_seed", 0, "Seed of the baseline's initialisation and training.")
shared_setup.define_timing(200, "Timed calls per model, runtime and setting.", warmup=20)
shared_setup.define_out("transformers", "Output prefix (.jsonl rows, _baseline.json, .md, .png).")
shared_setup.define_work_dir("transformers", "Trained baseline and exported files (not committed; the default "
                             "configuration's baseline is also in benchmarks/results).")
flags.DEFINE_bool("report", False, "Run nothing: rewrite the table and figure from the rows.")
flags.DEFINE_bool("retime", False, "Train nothing: time the pruned ViTs of the rows again, write the ratios into the "
                  "rows, then report (the trainings time them while other work may run).")
flags.DEFINE_bool("smoke", False, "Prove the pipeline end to end in minutes: 2,000 training and 1,000 test images, "
                  "1 epoch, target 0.5, seed 0, 20 timed calls, output in /tmp/tfprune_transformers_smoke/ (flags "
                  "given on the command line win).")

SMOKE = {"train_size": 2000, "test_size": 1000, "epochs": 1, "finetune_epochs": 1, "warmup_epochs": 0,
         "targets": ["0.5"], "seeds": ["0"], "runs": 20, "warmup": 3,
         "out": "/tmp/tfprune_transformers_smoke/transformers", "work_dir": "/tmp/tfprune_transformers_smoke/cache"}
VARIANTS = {"heads_mlp": "heads + head width + MLP", "hidden": "+ hidden width"}
REGIMES = {"finetune": "fine-tune", "finetune_kd": "fine-tune + KD"}
SETTINGS = ("vit", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim", "train_size", "test_size",
            "epochs", "learning_rate", "warmup_epochs", "weight_decay", "batch_size", "baseline_seed",
            "finetune_epochs", "finetune_learning_rate", "runs")


# ---- model, data, training ---------------------------------------------------------------------------------------

def vit():
    """The ViT of `--vit`, uncompiled, with a softmax over the 10 classes."""
    inputs = keras.Input((28, 28, 1), name="image")
    if FLAGS.vit == "keras_hub":
        import keras_hub

        x = keras_hub.models.ViTBackbone(image_shape=(28, 28, 1), patch_size=FLAGS.patch_size,
                                         num_layers=FLAGS.num_layers, num_heads=FLAGS.num_heads,
                                         hidden_dim=FLAGS.hidden_dim, mlp_dim=FLAGS.mlp_dim, name="vit")(inputs)
    else:
        x = functional_vit_blocks(inputs)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="classes")(x), name=f"vit_{FLAGS.vit}")


@keras.saving.register_keras_serializable(package="tfprune_benchmarks")
def gelu_tanh(x):
    """GELU in its tanh approximation: ONNX-convertible (the exact GELU's Erfc has no tf2onnx conversion)."""
    return keras.activations.gelu(x, approximate=True)


def functional_vit_blocks(inputs):
    """Patch embedding, position embedding, pre-LayerNorm transformer blocks and the final LayerNorm, as KerasHub's
    ViTBackbone has them (without its class token), with the tanh-approximated GELU."""
    import keras_hub

    layers, size, width = keras.layers, FLAGS.patch_size, FLAGS.hidden_dim
    x = layers.Conv2D(width, size, strides=size, name="patches")(inputs)
    x = layers.Reshape(((28 // size) ** 2, width), name="tokens")(x)
    x = layers.Add(name="position")([x, keras_hub.layers.PositionEmbedding((28 // size) ** 2, name="positions")(x)])
    for i in range(FLAGS.num_layers):
        y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        y = layers.MultiHeadAttention(FLAGS.num_heads, width // FLAGS.num_heads, name=f"block{i}_mha")(y, y)
        x = layers.Add(name=f"block{i}_add1")([x, y])
        y = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        y = layers.Dense(FLAGS.mlp_dim, activation=gelu_tanh, name=f"block{i}_mlp1")(y)
        y = layers.Dense(width, name=f"block{i}_mlp2")(y)
        x = layers.Add(name=f"block{i}_add2")([x, y])
    return layers.LayerNormalization(epsilon=1e-6, name="ln")(x)


def load_data():
    """((x_train, y_train), (x_test, y_test)); a subset (seed 0) if `train_size`/`test_size` ask for one."""
    return tfprune.datasets.fashion_mnist(train_size=None if FLAGS.train_size >= 60000 else FLAGS.train_size,
                                          test_size=None if FLAGS.test_size >= 10000 else FLAGS.test_size, seed=0)


def train(model, train_data, epochs, learning_rate, seed, warmup_epochs=0, callbacks=(), teacher=None, verbose=0):
    """Train `model` in place with the one recipe (AdamW, warm-up then cosine decay, augmentation)."""
    keras.utils.set_random_seed(seed)
    steps = math.ceil(len(train_data[0]) / FLAGS.batch_size)
    warmup = min(warmup_epochs, epochs - 1) * steps if epochs > 1 else 0
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else learning_rate, max(1, epochs * steps - warmup),
        warmup_target=learning_rate if warmup else None, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=FLAGS.weight_decay)
    return shared_setup.fit_augmented(model, train_data, epochs, optimizer, seed, FLAGS.batch_size, callbacks, teacher,
                                      verbose)


def baseline_prefix():
    config = "_".join(str(getattr(FLAGS, k)) for k in ("vit", "patch_size", "num_layers", "num_heads", "hidden_dim",
                                                       "mlp_dim", "train_size", "epochs", "baseline_seed"))
    return os.path.join(FLAGS.work_dir, f"vit_{config}")


def baseline(data):
    """The trained baseline and its record, trained once and kept in `work_dir`; its record includes the export
    check and files of the full model. A baseline committed in benchmarks/results (the default configuration's,
    so that rows measured in different sessions prune the same model) is copied there instead of training again,
    and its exports are written again where they are missing."""
    prefix = baseline_prefix()
    committed = shared_setup.results_path(os.path.basename(prefix))
    if not os.path.exists(prefix + ".keras") and os.path.exists(committed + ".keras"):
        os.makedirs(FLAGS.work_dir, exist_ok=True)
        for suffix in (".keras", ".json"):
            shutil.copyfile(committed + suffix, prefix + suffix)
    if os.path.exists(prefix + ".json"):
        record = shared_setup.read_json(prefix + ".json")
        if not all(os.path.exists(f.get("path", "")) for f in record["exported"].values() if "path" in f):
            model = keras.saving.load_model(prefix + ".keras", compile=False)
            shared_setup.write_json(prefix + ".json", dict(record, exported=exported(model, prefix + "_full")))
    if not os.path.exists(prefix + ".keras"):
        os.makedirs(FLAGS.work_dir, exist_ok=True)
        keras.utils.set_random_seed(FLAGS.baseline_seed)
        model = vit()
        callbacks = [keras.callbacks.BackupAndRestore(prefix + "_backup"), shared_setup.progress_callback(prefix)]
        train(model, data[0], FLAGS.epochs, FLAGS.learning_rate, FLAGS.baseline_seed, FLAGS.warmup_epochs,
              callbacks=callbacks, verbose=2)
        record = dict(shared_setup.read_json(prefix + "_progress.json"), vit=FLAGS.vit, epochs=FLAGS.epochs,
                      accuracy=shared_setup.accuracy(model, data[1]), macs=tfprune.count_macs(model),
                      params=tfprune.count_params(model), exported=exported(model, prefix + "_full"))
        shared_setup.write_json(prefix + ".json", record)
        model.save(prefix + ".keras")
    return keras.saving.load_model(prefix + ".keras", compile=False), shared_setup.read_json(prefix + ".json")


# ---- pruning, export, timing ---------------------------------------------------------------------------------------

def hidden_width_groups(graph):
    """The groups of the hidden width: the prunable groups that a LayerNormalization normalises over as a whole
    (`ChannelGraph.spanning_groups`), which plans prune only with `prune_spanning=True`; and, if there are none,
    why (None otherwise)."""
    groups = [g for g in graph.spanning_groups
              if any(isinstance(graph.layers.get(path), keras.layers.LayerNormalization) for path in g.spanning)]
    if groups:
        return groups, None
    fixed = [f"the hidden-width group {g.name!r} is fixed: {g.reasons[0]}" for g in graph.groups if g.reasons
             and any(isinstance(graph.layers.get(m.layer), keras.layers.LayerNormalization) for m in g.members)]
    return groups, "; ".join(fixed) or "no hidden-width group found"


def variant_plan(model, graph, target, variant):
    """(plan, MACs ratio) of `variant` at `target`, or (None, reason) if the variant cannot be pruned. The "hidden"
    variant opts in to the hidden width (`prune_spanning=True`): its slim LayerNorms normalise over the kept
    channels only, so `rebuild` warns with how much the outputs moved, which `structure` records."""
    _, reason = hidden_width_groups(graph)
    if variant == "hidden" and reason:
        return None, reason

    def make_plan(ratio):
        return tfprune.plan(model, ratio, scope="global", graph=graph, prune_spanning=variant == "hidden")

    return tfprune.plan_for_macs(model, target, make_plan, graph=graph)


def exported(model, stem):
    """`{format: {"path", "max_abs_difference"} or {"error"}}` of the LiteRT and ONNX files of `model`."""
    files = {}
    for fmt in ("tflite", "onnx"):
        try:
            result = tfprune.export(model, f"{stem}.{fmt}", format=fmt)
            files[fmt] = {"path": result.path, "max_abs_difference": result.max_abs_difference}
        except ExportError as error:
            ops = sorted(set(re.findall(r"op type (\w+)", str(error))))
            files[fmt] = {"error": str(error).split(":")[0] + (f" (op type {', '.join(ops)})" if ops else ""),
                          "error_detail": str(error)}
            logging.warning("%s: no %s file: %s", stem, fmt, error)
    return files


def latency_ratios(full, slim):
    """`{format: slim / full median latency}` at batch 1 on one thread (None where a file is missing), and
    `{format: [full ms, slim ms]}`."""
    ratios, milliseconds = {}, {}
    for fmt, engine in (("tflite", "tflite"), ("onnx", "onnxruntime")):
        if "path" not in full[fmt] or "path" not in slim[fmt]:
            ratios[fmt] = None
            continue
        report = tfprune.benchmark({"full": full[fmt]["path"], "slim": slim[fmt]["path"]}, batch_sizes=(1,),
                                   threads=(1,), engines=(engine,), runs=FLAGS.runs, warmup=FLAGS.warmup)
        ratios[fmt] = report.get("slim", engine, 1, 1).ratio
        milliseconds[fmt] = [report.get(label, engine, 1, 1).median_ms for label in ("full", "slim")]
    return ratios, milliseconds


def structure(model, graph, record, target, variant, data):
    """The pruned model's measurements shared by every seed and regime (kept in `work_dir`): plan, MACs, params,
    accuracy before fine-tuning, export checks and latency ratios; or `{"unsupported": reason}`."""
    path = f"{baseline_prefix()}_{variant}_{target}.json"
    if not os.path.exists(path) or "unsupported" in shared_setup.read_json(path):  # an earlier version's refusal
        start = time.perf_counter()
        plan, macs_ratio = variant_plan(model, graph, target, variant)
        if plan is None:
            shared_setup.write_json(path, {"unsupported": macs_ratio})
            return shared_setup.read_json(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutputChangeWarning)
            slim = tfprune.rebuild(model, plan, graph=graph)
        changes = [w.message.change for w in caught if issubclass(w.category, OutputChangeWarning)]
        files = exported(slim, path.removesuffix(".json"))
        ratios, milliseconds = latency_ratios(record["exported"], files)
        shared_setup.write_json(path, {
            "plan": plan.to_json(), "macs": tfprune.count_macs(slim), "params": tfprune.count_params(slim),
            "macs_ratio": tfprune.count_macs(slim) / record["macs"], "planned_macs_ratio": macs_ratio,
            "params_ratio": tfprune.count_params(slim) / record["params"],
            "pruned_accuracy": shared_setup.accuracy(slim, data[1]), "exported": files, "latency_ratio": ratios,
            "latency_ms": milliseconds, "output_change": changes[0] if changes else 0.0,
            "test_output_change": output_change(model, slim, data[1][0][:256]),
            "seconds": time.perf_counter() - start, "load_average": shared_setup.load_average()})
    return shared_setup.read_json(path)


# ---- rows ----------------------------------------------------------------------------------------------------------

def _key(r):
    return r["vit"], r["target"], r["variant"], r["regime"], r["seed"]


def run(rows, record, model, data):
    rows_path = FLAGS.out + ".jsonl"
    graph = tfprune.ChannelGraph(model)
    done = {_key(r) for r in rows}
    for target in map(float, FLAGS.targets):
        for variant in FLAGS.variants:
            measured = structure(model, graph, record, target, variant, data)
            if "unsupported" in measured:
                if (FLAGS.vit, target, variant, "unsupported", None) not in done:
                    shared_setup.append_row(rows, dict(vit=FLAGS.vit, target=target, variant=variant,
                                                       regime="unsupported", seed=None, **measured), rows_path)
                    logging.info("%s at %s: unsupported: %s", variant, target, measured["unsupported"])
                continue
            for seed in map(int, FLAGS.seeds):
                for regime in REGIMES:
                    if (FLAGS.vit, target, variant, regime, seed) in done:
                        continue
                    with warnings.catch_warnings():  # the output change is recorded in `measured` already
                        warnings.simplefilter("ignore", OutputChangeWarning)
                        slim = tfprune.rebuild(model, tfprune.Plan.from_json(measured["plan"]), graph=graph)
                    stem = f"{baseline_prefix()}_{variant}_{target}_{regime}_{seed}"  # an interrupted one resumes
                    callbacks = [keras.callbacks.BackupAndRestore(stem + "_backup"),
                                 shared_setup.progress_callback(stem)]
                    train(slim, data[0], FLAGS.finetune_epochs, FLAGS.finetune_learning_rate, seed,
                          callbacks=callbacks, teacher=model if regime == "finetune_kd" else None)
                    progress = shared_setup.read_json(stem + "_progress.json")
                    row = dict(vit=FLAGS.vit, target=target, variant=variant, regime=regime, seed=seed,
                               **{k: v for k, v in measured.items() if k != "plan"},
                               accuracy=shared_setup.accuracy(slim, data[1]), train_seconds=progress["seconds"],
                               cpu_seconds=progress["cpu_seconds"], sittings=progress["sittings"])
                    row["drop"] = record["accuracy"] - row["accuracy"]
                    shared_setup.append_row(rows, row, rows_path)
                    os.remove(stem + "_progress.json")
                    logging.info("%s %s %s seed %d: MACs %.3f, accuracy %.4f -> %.4f (%.0f s)", variant, target,
                                 regime, seed, row["macs_ratio"], row["pruned_accuracy"], row["accuracy"],
                                 row["train_seconds"])


def retime(rows, record):
    """Time each pruned structure of `rows` against the baseline again, and write the ratios, milliseconds and load
    average into its rows (the .jsonl is rewritten) and its file in `work_dir`."""
    for target, variant in sorted({(r["target"], r["variant"]) for r in rows if r["regime"] in REGIMES}):
        path = f"{baseline_prefix()}_{variant}_{target}.json"
        measured = shared_setup.read_json(path)
        ratios, milliseconds = latency_ratios(record["exported"], measured["exported"])
        update = {"latency_ratio": ratios, "latency_ms": milliseconds, "load_average": shared_setup.load_average()}
        shared_setup.write_json(path, {**measured, **update})
        for r in rows:
            if (r["target"], r["variant"]) == (target, variant):
                r.update(update)
        logging.info("%s %s: latency ratios %s (load average %s)", variant, target, ratios, update["load_average"])
    shared_setup.write_text(FLAGS.out + ".jsonl", "".join(json.dumps(r) + "\n" for r in rows))


# ---- report --------------------------------------------------------------------------------------------------------

def _cell(values, scale=1.0, digits=4):
    mean = statistics.mean(values)
    spread = f" ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{scale * mean:.{digits}f}{spread}"


def _ratio(value):
    return "–" if value is None else f"{value:.2f}"


def _difference(files, fmt):
    return f"{files[fmt]['max_abs_difference']:.1e}" if "max_abs_difference" in files[fmt] else "–"


def report(rows, record):
    settings = ", ".join(f"{k}={v}" for k, v in (record or {}).get("settings", {}).items())
    lines = [f"`python benchmarks/transformers.py` ({settings}); see the script's docstring for the protocol. Test "
             "accuracy, mean ± standard deviation over n fine-tuning seeds; \"drop\" is in points against the "
             "baseline; latency ratios are slim over full at batch 1 on one thread, LiteRT (XNNPACK) for the "
             ".tflite files and ONNX Runtime (CPU) for the .onnx files; \"max diff\" is `tfprune.export`'s largest "
             "absolute difference between the file run back in its runtime and the Keras model (softmax outputs).",
             ""]
    if record:
        full = record["exported"]
        lines.append(f"**Baseline** ({record['vit']} ViT): test accuracy **{record['accuracy']:.4f}** after "
                     f"{record['epochs']} epochs, {record['seconds'] / 60:.0f} min; {record['macs']:,} MACs, "
                     f"{record['params']:,} params; export max diff LiteRT {_difference(full, 'tflite')}, "
                     f"ONNX Runtime {_difference(full, 'onnx')}.")
    lines += ["", "| MACs target | pruned | regime | n | MACs ratio | params ratio | LiteRT latency ratio | "
              "ORT latency ratio | pruned acc. | fine-tuned acc. | drop (points) | max diff LiteRT / ORT |",
              "|---" * 12 + "|"]
    groups = {}
    for r in rows:
        if r["regime"] in REGIMES:
            groups.setdefault((r["target"], r["variant"], r["regime"]), []).append(r)
    for (target, variant, regime), group in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2])):
        first = group[0]
        lines.append(
            f"| {target} | {VARIANTS[variant]} | {REGIMES[regime]} | {len(group)} | {first['macs_ratio']:.3f} | "
            f"{first['params_ratio']:.3f} | {_ratio(first['latency_ratio']['tflite'])} | "
            f"{_ratio(first['latency_ratio']['onnx'])} | {first['pruned_accuracy']:.4f} | "
            f"{_cell([r['accuracy'] for r in group])} | {_cell([r['drop'] for r in group], 100, 2)} | "
            f"{_difference(first['exported'], 'tflite')} / {_difference(first['exported'], 'onnx')} |")
    errors = {f"{fmt} export failed: {files[fmt]['error']}" for files in [record["exported"] if record else {}]
              + [r["exported"] for r in rows if "exported" in r] for fmt in files if "error" in files[fmt]}
    measured = {r["variant"] for r in rows if r["regime"] in REGIMES}
    unsupported = sorted({(r["variant"], r["unsupported"]) for r in rows
                          if r["regime"] == "unsupported" and r["variant"] not in measured})
    changes = sorted({(r["target"], r["output_change"], r.get("test_output_change")) for r in rows
                      if r["regime"] in REGIMES and r["variant"] == "hidden" and "output_change" in r}, reverse=True)
    if changes:
        lines += ["", "**How much the hidden width moves the outputs** before fine-tuning (the slim LayerNorms "
                  "normalise over the kept channels only): largest absolute difference between the baseline's and "
                  "the pruned model's softmax outputs, " + "; ".join(
                      f"target {t}: {c:.3f} on random inputs, {tc:.3f} on 256 test images" for t, c, tc in changes)
                  + "."]
    if errors or unsupported:
        lines += ["", "## Not measured", ""]
        lines += [f"- {VARIANTS[variant]}: unsupported — {reason}." for variant, reason in unsupported]
        lines += [f"- {error}." for error in sorted(errors)]
    shared_setup.write_text(FLAGS.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(groups, record)


def plot(groups, record):
    """Fine-tuned accuracy against the MACs ratio; latency ratios against the MACs ratio."""
    if not groups:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    if record:
        left.axhline(record["accuracy"], color="black", linestyle="--", label="unpruned")
    markers = {"finetune": "o", "finetune_kd": "s"}
    for variant in VARIANTS:
        for regime in REGIMES:
            points = sorted((g[0]["macs_ratio"], statistics.mean(r["accuracy"] for r in g),
                             statistics.stdev(r["accuracy"] for r in g) if len(g) > 1 else 0.0)
                            for k, g in groups.items() if k[1:] == (variant, regime))
            if points:
                x, y, e = zip(*points, strict=True)
                left.errorbar(x, y, yerr=e, marker=markers[regime], capsize=3,
                              label=f"{VARIANTS[variant]}, {REGIMES[regime]}")
    left.set(xlabel="MACs ratio (slim / original)", ylabel="test accuracy", title="Fine-tuned test accuracy")
    left.legend(fontsize="small")
    structures = sorted({(g[0]["macs_ratio"], k[1]): g[0]["latency_ratio"] for k, g in groups.items()}.items())
    for fmt, label in (("tflite", "LiteRT"), ("onnx", "ONNX Runtime")):
        points = [(m, ratios[fmt]) for (m, _), ratios in structures if ratios[fmt] is not None]
        if points:
            left_x, y = zip(*points, strict=True)
            right.plot(left_x, y, "o", label=label)
    right.plot([0, 1], [0, 1], color="grey", linestyle=":", label="latency = MACs")
    right.set(xlabel="MACs ratio (slim / original)", ylabel="latency ratio (batch 1, 1 thread)",
              title="Latency against MACs", xlim=(0, 1.05), ylim=(0, 1.2))
    right.legend(fontsize="small")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.savefig(FLAGS.out + ".png", dpi=110)


def main(_):
    shared_setup.apply_smoke(SMOKE, FLAGS.smoke)
    rows = shared_setup.read_rows([FLAGS.out + ".jsonl"], _key)
    record_path = FLAGS.out + "_baseline.json"
    record = shared_setup.read_json(record_path) if os.path.exists(record_path) else None
    if FLAGS.retime:
        retime(rows, record)
    elif not FLAGS.report:
        start = time.perf_counter()
        data = load_data()
        model, record = baseline(data)
        record["settings"] = {k: getattr(FLAGS, k) for k in SETTINGS}  # of the last run, for the report
        shared_setup.write_json(record_path, record)
        run(rows, record, model, data)
        logging.info("finished in %.0f s (load average %s)", time.perf_counter() - start, shared_setup.load_average())
    report(rows, record)


if __name__ == "__main__":
    flags.register_validator("variants", lambda values: set(values) <= set(VARIANTS),
                             message=f"--variants takes {', '.join(VARIANTS)}.")
    flags.register_multi_flags_validator(
        ["hidden_dim", "num_heads"], lambda f: f["hidden_dim"] % f["num_heads"] == 0,
        "--hidden_dim must be a multiple of --num_heads.")
    flags.register_validator("patch_size", lambda size: 28 % size == 0, message="--patch_size must divide 28.")
    app.run(main)
