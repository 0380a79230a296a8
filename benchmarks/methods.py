"""Every pruning method of tfprune at matched MACs on the full Fashion-MNIST, from converged baselines, over seeds.

    nice -n 10 python benchmarks/methods.py                # runs what is missing (methods, then regimes), appending
                                                           # each finished row to benchmarks/results/methods.jsonl
    python benchmarks/methods.py --report                  # rewrites methods.{md,png} and methods_regimes.png
    python benchmarks/methods.py --merge=a.jsonl,b.jsonl   # the same from rows of several runs (other machines)
    python benchmarks/methods.py --models=resnet --seeds=0 --stage=methods   # a part of the work

**Data.** The 60,000 Fashion-MNIST training images, split once (seed 0) into `val_size` validation images and the
rest for training. Criteria, sensitivity analysis and searches measure on the validation split only (the first
`measure_images` of it for criteria); the 10,000 test images are used for the reported accuracies and nothing else.

**Baselines.** tfprune.models.small_resnet and small_vgg, trained once (seed `baseline_seed`, 0 by default) with
one recipe: SGD, Nesterov momentum 0.9, learning rate `learning_rate` with cosine decay to 0 over `epochs` epochs,
decoupled weight decay `weight_decay`, batch `batch_size`, augmentation: 2-pixel zero padding + random 28×28 crop +
horizontal flip. θ0 (the initial weights) and θk (after epoch `rewind_epoch`) are kept for the lottery regimes.
The augmented batches are the same for the same seed, and a baseline trained twice from one seed gets the same
weights on the same machine and versions, so a lost `work_dir` can be rebuilt.

**Methods**, each reaching ≤ the MACs target (50% and 25% of the baseline's) from the same trained baseline:
  l1, apoz, hrank, taylor   one per-layer ratio for every group, bisected to the target by `plan_for_macs` (the
                    widths do not depend on the criterion here, so every criterion gets the same architecture);
  lasso             He et al.: LASSO channel selection at those widths, then least-squares reconstruction;
  l1_sensitivity    Li et al.: per-group ratios from `tfprune.sensitivity` on the validation split, scaled to the
                    target;
  slimming, group_lasso, dropnet   training-time methods: their callback trains the baseline `sparsity_epochs` more
                    epochs (fine-tuning schedule), then Network Slimming and group lasso threshold their scores
                    globally (bisected to the target) and DropNet stops at it;
  abc               ABCPruner (`tfprune.search.abc`), keep ratios on a grid of step 0.05; each candidate fine-tuned
                    30 steps (batch 64, SGD with momentum 0.9 at `finetune_learning_rate`), scored on the validation
                    split;
  dmcp              DMCP (`tfprune.search.dmcp`), `dmcp_epochs` epochs of supernet training from the baseline.
Every slim model is then fine-tuned the same `finetune_epochs` epochs (cosine from `finetune_learning_rate`, same
augmentation, seed-dependent order). Seeds vary the fine-tuning and every random choice of a method.

**Regimes** (`--stage=regimes`), for plain L1 and, at each target, the best `regime_methods` methods there by mean
fine-tuned accuracy (or those named by --regime_methods_list): fine-tuning with knowledge distillation from the
baseline (`tfprune.fine_tune(teacher=...)`, the same epochs); fine-tuning for `epochs` epochs instead of
`finetune_epochs` (the compute of Scratch-E: does longer fine-tuning close the gap?), without and with distillation;
lottery rewind to θ0 and to θk, and Scratch-E, each trained `epochs` epochs with the baseline's recipe; Scratch-B
trained `epochs × MACs(full) / MACs(slim)` epochs. Scratch-E and Scratch-B run once per architecture and seed: methods
with the same widths share them. With "fine-tune E epochs" comes its control: the unpruned baseline fine-tuned the
same epochs (method `unpruned`).

Every row also has the MACs and params ratios, the LiteRT (TFLite) latency ratio at batch 1 and one thread, and the
method's cost: its seconds (measuring, searching, sparsity training) and its extra training epochs.
"""

import json
import math
import os
import statistics
import time

import keras
import matplotlib
import numpy as np
from absl import app, flags, logging

import tfprune
from tfprune import criteria
from tfprune.callbacks import DropNet, GroupLasso, NetworkSlimming

import shared_setup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.FLAGS
shared_setup.define_models(["resnet", "vgg"])
flags.DEFINE_list("methods", ["l1", "l1_sensitivity", "apoz", "hrank", "taylor", "lasso", "slimming", "group_lasso",
                              "dropnet", "abc", "dmcp"], "Methods to run.")
shared_setup.define_targets(["0.5", "0.25"])
shared_setup.define_seeds(["0", "1", "2"], "Seeds of the methods and of the fine-tuning.")
flags.DEFINE_enum("stage", "all", ["all", "methods", "regimes"], "What to run: the methods, the regimes, or both.")
flags.DEFINE_integer("train_images", 60000, "Training images used, of 60,000 (the validation split included).")
flags.DEFINE_integer("val_size", 5000, "Validation images carved from the training images.")
flags.DEFINE_integer("measure_images", 2000, "Validation images the data-driven criteria measure on.")
flags.DEFINE_integer("baseline_seed", 0, "Seed of the baselines' initialisation and training; another seed gives a "
                     "second baseline, to check that the readings are not one baseline's.")
shared_setup.define_training(batch_size=128, learning_rate=0.1, epochs=30, finetune_epochs=5,
                             learning_rate_help="Peak learning rate of training (cosine decay to 0).",
                             epochs_help="E: epochs of the baselines, lottery and Scratch-E.",
                             finetune_help="F: fine-tuning epochs of every slim model.")
flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay of every training.")
flags.DEFINE_integer("rewind_epoch", 2, "k of the θk lottery rewind.")
flags.DEFINE_float("finetune_learning_rate", 0.01, "Peak learning rate of fine-tuning (cosine decay to 0).")
flags.DEFINE_integer("sparsity_epochs", 5, "Epochs the training-time methods train the baseline with their callback.")
flags.DEFINE_integer("dmcp_epochs", 2, "DMCP's supernet epochs from the baseline (half warm-up, half search).")
flags.DEFINE_integer("abc_cycles", 3, "ABCPruner cycles (5 food sources, limit 3, 30 fitness batches of 64).")
flags.DEFINE_integer("regime_methods", 2,
                     "Best methods per target (by mean fine-tuned accuracy) run in every regime, besides l1.")
flags.DEFINE_list("regime_methods_list", [], "Run the regimes for these methods instead of the best ones.")
flags.DEFINE_list("regimes", ["finetune_kd", "finetune_long", "finetune_long_kd", "lottery_0", "lottery_k",
                              "scratch_e", "scratch_b"],
                  "Regimes to run.")
shared_setup.define_out("methods", "Output prefix.")
shared_setup.define_work_dir("methods", "Trained baselines, snapshots and pruned models between runs (not committed).")
flags.DEFINE_bool("report", False, "Run nothing: rewrite the tables and plots from the rows.")
flags.DEFINE_list("merge", [], "Run nothing: report the rows of these .jsonl files (and their _baselines.json).")

LABELS = {"l1": "L1 (uniform)", "l1_sensitivity": "L1 + sensitivity (Li)", "apoz": "APoZ", "hrank": "HRank",
          "taylor": "Taylor", "lasso": "LASSO + reconstruction (He)", "slimming": "Network Slimming",
          "group_lasso": "group lasso (SSL)", "dropnet": "DropNet", "abc": "ABCPruner", "dmcp": "DMCP",
          "unpruned": "unpruned (control)"}
REGIME_LABELS = {"finetune": "fine-tune", "finetune_kd": "fine-tune + KD", "finetune_long": "fine-tune E epochs",
                 "finetune_long_kd": "fine-tune E epochs + KD",
                 "lottery_0": "lottery θ0", "lottery_k": "lottery θk", "scratch_e": "Scratch-E",
                 "scratch_b": "Scratch-B"}
# ABC's keep ratios: a step of 0.05 rather than the paper's (and tfprune's default) 0.1, whose steps left the best
# candidate at 25% of the MACs 4% under the budget, outside the ±2% every row is matched to
ABC_GRID = tuple(round(0.05 * i, 2) for i in range(1, 21))
SETTINGS = ("baseline_seed", "train_images", "val_size", "measure_images", "epochs", "learning_rate", "weight_decay",
            "batch_size", "rewind_epoch", "finetune_epochs", "finetune_learning_rate", "sparsity_epochs", "dmcp_epochs",
            "abc_cycles")


# ---- data and training ------------------------------------------------------------------------------------------

def load_data():
    """(train, val, test) as (x, y) arrays; val is carved once (seed 0) from the training images."""
    (x, y), test = tfprune.datasets.fashion_mnist()
    order = np.random.default_rng(0).permutation(len(x))[:FLAGS.train_images]
    val, train = order[:FLAGS.val_size], order[FLAGS.val_size:]
    return (x[train], y[train]), (x[val], y[val]), test


def train(model, train_data, epochs, learning_rate, seed, callbacks=(), teacher=None, verbose=0):
    """Train `model` in place with the one recipe (cosine-decayed SGD, weight decay, augmentation); return it."""
    keras.utils.set_random_seed(seed)
    steps = math.ceil(len(train_data[0]) / FLAGS.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, epochs * steps))
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=FLAGS.weight_decay)
    return shared_setup.fit_augmented(model, train_data, epochs, optimizer, seed, FLAGS.batch_size, callbacks, teacher,
                                      verbose)


def baseline(name, data):
    """The trained baseline of `name`, θ0, θk and its record; trained once and kept in `work_dir`. An interrupted
    training resumes from its last finished epoch (`keras.callbacks.BackupAndRestore`) in the next run."""
    prefix = os.path.join(FLAGS.work_dir, f"{name}_{FLAGS.train_images}_{FLAGS.epochs}_{FLAGS.baseline_seed}")
    if not os.path.exists(prefix + ".keras"):
        os.makedirs(FLAGS.work_dir, exist_ok=True)
        keras.utils.set_random_seed(FLAGS.baseline_seed)
        model = shared_setup.reference_cnn(name)()
        if not os.path.exists(prefix + "_theta0.json"):
            shared_setup.write_weights(prefix + "_theta0.json", model)
        callbacks = [keras.callbacks.BackupAndRestore(prefix + "_backup"),
                     shared_setup.progress_callback(prefix, FLAGS.rewind_epoch)]
        train(model, data[0], FLAGS.epochs, FLAGS.learning_rate, FLAGS.baseline_seed, callbacks=callbacks, verbose=2)
        record = dict(shared_setup.read_json(prefix + "_progress.json"), model=name, epochs=FLAGS.epochs,
                      val_accuracy=shared_setup.accuracy(model, data[1]),
                      accuracy=shared_setup.accuracy(model, data[2]),
                      macs=tfprune.count_macs(model), params=tfprune.count_params(model))
        shared_setup.write_json(prefix + ".json", record)
        model.save(prefix + ".keras")
    model = keras.saving.load_model(prefix + ".keras", compile=False)
    # what the methods that score or train the baseline itself use (the sensitivity analysis's metric, ABC's
    # fitness fine-tuning, DMCP's supernet): compiled once here, so no method depends on which ran before it
    shared_setup.sgd_compiled(model, FLAGS.finetune_learning_rate)
    snapshots = [{path: np.asarray(w, np.float32) for path, w in shared_setup.read_json(f"{prefix}_{key}.json").items()}
                 for key in ("theta0", "thetak")]
    return model, snapshots, shared_setup.read_json(prefix + ".json")


# ---- methods: each returns (slim model with inherited weights, plan, extra epochs) ------------------------------

def matched_ratios(model, target):
    """Per-group ratios of near-uniform widths at the target, the same for every criterion (at layer scope the widths
    do not depend on the criterion; only which channels go does).

    One per-layer ratio is bisected to the target by `plan_for_macs`; with groups of 16 channels its MACs fall up
    to 5% below the target, so channels are then given back one at a time, widest groups first and round after
    round, while the MACs stay within the target."""
    plan, _ = tfprune.plan_for_macs(model, target, lambda r: tfprune.plan(model, r))
    macs = tfprune.macs_model.MacsModel(model)
    groups = sorted(macs.graph.prunable_groups, key=lambda g: -g.width)
    widths = {g.name: g.width - plan.removed(g.name) for g in groups}
    grown = True
    while grown:
        grown = False
        for g in groups:
            if widths[g.name] < g.width:
                widths[g.name] += 1
                if macs.macs_of_widths(widths) <= target * macs.full:
                    grown = True
                else:
                    widths[g.name] -= 1
    return {g.name: (g.width - widths[g.name] + 0.5) / g.width for g in groups}


_SENSITIVITY = {}


def sensitivity_analysis(model, name, val):
    """Li et al.'s per-group ratios; the analysis depends on neither seed nor target and is computed once per run."""
    if name not in _SENSITIVITY:
        start = time.perf_counter()
        _SENSITIVITY[name] = tfprune.sensitivity(model, val, verbose=0), time.perf_counter() - start
    return _SENSITIVITY[name]


def dropnet_fraction(target):
    """The fraction per step (one per epoch) that reaches the MACs target after `sparsity_epochs - 1` steps, leaving
    the last epoch to recover: MACs shrink about as the square of the kept channels."""
    return 1 - target ** (1 / (2 * max(1, FLAGS.sparsity_epochs - 1)))


def _copy(model):
    """A copy of `model` with its weights, to train without touching the baseline."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def run_method(method, name, model, target, seed, data):
    """(slim model with inherited weights, plan, method seconds, extra epochs) of one method."""
    train_data, val, _ = data
    sample = (val[0][:FLAGS.measure_images], val[1][:FLAGS.measure_images])
    start = time.perf_counter()
    extra = 0.0
    if method in ("l1", "apoz", "hrank", "taylor"):
        score = {"l1": "l1", "apoz": criteria.APoZ(verbose=0), "hrank": criteria.HRank(verbose=0),
                 "taylor": criteria.Taylor(loss=shared_setup.LOSS, verbose=0)}[method]
        plan = tfprune.plan(model, matched_ratios(model, target), criterion=score,
                            data=sample if method == "taylor" else sample[0])
        slim = tfprune.rebuild(model, plan)
    elif method == "lasso":
        selection = criteria.LassoSelection(images=FLAGS.measure_images, seed=seed)
        plan = tfprune.plan(model, matched_ratios(model, target), criterion=selection, data=sample[0])
        slim = tfprune.rebuild(model, plan)
        selection.reconstruct(model, slim, plan, sample[0])
    elif method == "l1_sensitivity":
        analysis, seconds = sensitivity_analysis(model, name, sample)
        start = time.perf_counter() - seconds
        plan = analysis.plan_for_macs(target)
        slim = tfprune.rebuild(model, plan)
    elif method in ("slimming", "group_lasso", "dropnet"):
        copy = _copy(model)
        callback = {"slimming": lambda: NetworkSlimming(l1=1e-4),
                    "group_lasso": lambda: GroupLasso(strength=1e-3, groups="filter"),
                    "dropnet": lambda: DropNet(sample[0][:1024], fraction=dropnet_fraction(target), rewind=None,
                                               target={"macs": target}, seed=seed)}[method]()
        train(copy, train_data, FLAGS.sparsity_epochs, FLAGS.finetune_learning_rate, seed, callbacks=[callback])
        if method == "dropnet":
            plan = callback.plan()
        else:
            plan, _ = tfprune.plan_for_macs(copy, target, callback.plan, graph=callback.graph)
        slim = callback.slim_model(plan)
        extra = FLAGS.sparsity_epochs
    elif method == "abc":
        result = tfprune.search.abc(model, train_data, sample, target_macs=target, grid=ABC_GRID, food_sources=5,
                                    limit=3, cycles=FLAGS.abc_cycles, fine_tune_steps=30, seed=seed, verbose=0)
        plan, slim = result.plan, result.slim_model()
        extra = result.evaluations * 30 * 64 / len(train_data[0])
    elif method == "dmcp":
        result = tfprune.search.dmcp(model, train_data, target, epochs=FLAGS.dmcp_epochs,
                                     batch_size=FLAGS.batch_size, seed=seed, verbose=0)
        plan, slim = result.plan, result.slim_model()
        extra = FLAGS.dmcp_epochs * 4  # the sandwich rule trains 4 sub-networks per step
    else:
        raise ValueError(f"unknown method {method!r}")
    return slim, plan, time.perf_counter() - start, extra


# ---- rows ----------------------------------------------------------------------------------------------------------

def latency_ratio(full, slim):
    report = tfprune.benchmark({"full": full, "slim": slim}, batch_sizes=(1,), threads=(1,), engines=("tflite",),
                               runs=200, warmup=20)
    return report.get("slim", "tflite", 1, 1).ratio


def method_row(name, model, record, target, method, seed, data):
    cpu = time.process_time()
    slim, plan, seconds, extra = run_method(method, name, model, target, seed, data)
    macs_ratio = tfprune.count_macs(slim) / record["macs"]
    if abs(macs_ratio / target - 1) > 0.02:
        logging.warning("%s on %s: MACs ratio %.3f is not within 2%% of the target %s", method, name, macs_ratio,
                        target)
    pruned = shared_setup.accuracy(slim, data[2])
    path = os.path.join(FLAGS.work_dir, f"{name}_{method}_{target}_{seed}_pruned.keras")
    slim.save(path)  # the regimes fine-tune it again with distillation
    start = time.perf_counter()
    train(slim, data[0], FLAGS.finetune_epochs, FLAGS.finetune_learning_rate, seed)
    return {"model": name, "target": target, "method": method, "regime": "finetune", "seed": seed,
            "macs_ratio": macs_ratio, "params_ratio": tfprune.count_params(slim) / record["params"],
            "latency_ratio": latency_ratio(model, slim), "pruned_accuracy": pruned,
            "accuracy": shared_setup.accuracy(slim, data[2]), "val_accuracy": shared_setup.accuracy(slim, data[1]),
            "method_seconds": seconds, "extra_epochs": extra, "train_epochs": FLAGS.finetune_epochs,
            "train_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "plan": plan.to_json()}


def regime_row(name, model, snapshots, source, regime, data):
    """One regime on the slim architecture of the method row `source`: its pruned model for the fine-tuning regimes,
    its plan for the others."""
    seed, target = source["seed"], source["target"]
    plan = tfprune.Plan.from_json(source["plan"])
    teacher = model if regime.endswith("_kd") else None
    if regime.startswith("finetune"):
        slim = keras.saving.load_model(compile=False, filepath=os.path.join(
            FLAGS.work_dir, f"{name}_{source['method']}_{target}_{seed}_pruned.keras"))
        epochs = FLAGS.epochs if regime.startswith("finetune_long") else FLAGS.finetune_epochs
        learning_rate = FLAGS.finetune_learning_rate
    else:
        if regime.startswith("lottery"):
            snapshot = snapshots[0 if regime == "lottery_0" else 1]
            slim = tfprune.rebuild(model, plan, reinit="lottery", initial_weights=snapshot)
        else:
            slim = tfprune.rebuild(model, plan, reinit="scratch", seed=seed)
        epochs = tfprune.scratch_b_epochs(FLAGS.epochs, model, slim) if regime == "scratch_b" else FLAGS.epochs
        learning_rate = FLAGS.learning_rate
    prefix = os.path.join(FLAGS.work_dir, f"{name}_{source['method']}_{target}_{seed}_{regime}")
    return dict(source, regime=regime,
                **trained(slim, data, epochs, learning_rate, seed, prefix, teacher=teacher))


def trained(model, data, epochs, learning_rate, seed, prefix, teacher=None):
    """Train `model` in place with the one recipe; its test and validation accuracy, epochs and time. A training
    longer than 10 epochs resumes across sittings (from `prefix` files) and counts the time of every sitting."""
    resumable = epochs > 10
    callbacks = [keras.callbacks.BackupAndRestore(prefix + "_backup"),
                 shared_setup.progress_callback(prefix)] if resumable else []
    start, cpu = time.perf_counter(), time.process_time()
    train(model, data[0], epochs, learning_rate, seed, callbacks=callbacks, teacher=teacher)
    times = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    if resumable:
        times = shared_setup.read_json(prefix + "_progress.json")
        os.remove(prefix + "_progress.json")
    return dict(accuracy=shared_setup.accuracy(model, data[2]), val_accuracy=shared_setup.accuracy(model, data[1]),
                train_epochs=epochs, train_seconds=times["seconds"], cpu_seconds=times["cpu_seconds"])


def control_row(name, model, seed, data):
    """The control of the "fine-tune E epochs" regime: the unpruned baseline itself fine-tuned the same `epochs`
    epochs at `finetune_learning_rate`, so that a slim model's drop can be read against equal training."""
    copy = _copy(model)
    prefix = os.path.join(FLAGS.work_dir, f"{name}_unpruned_{seed}_finetune_long")
    return dict(model=name, target=1.0, method="unpruned", regime="finetune_long", seed=seed, macs_ratio=1.0,
                params_ratio=1.0, method_seconds=0.0, extra_epochs=0.0,
                **trained(copy, data, FLAGS.epochs, FLAGS.finetune_learning_rate, seed, prefix))


def regime_sources(name, rows):
    """The method rows whose architectures get every regime: l1's and, at each target, the best methods' there (by
    mean fine-tuned accuracy over seeds)."""
    sources = []
    for target in map(float, FLAGS.targets):
        mine = [r for r in rows if r["model"] == name and r["regime"] == "finetune" and r["target"] == target]
        if FLAGS.regime_methods_list:
            chosen = set(FLAGS.regime_methods_list)
        else:
            by_method = {}
            for r in mine:
                by_method.setdefault(r["method"], []).append(r["accuracy"])
            ranked = sorted((m for m in by_method if m != "l1"), key=lambda m: -statistics.mean(by_method[m]))
            chosen = set(ranked[:FLAGS.regime_methods])
        sources += [r for r in mine if r["method"] in chosen | {"l1"} and str(r["seed"]) in FLAGS.seeds]
    return sources


def same_training(source, regime, rows):
    """The row already written of the same Scratch training as `regime` on `source`'s architecture, if any.

    Scratch-E and Scratch-B depend only on the widths and the seed, not on which channels a criterion kept, so methods
    that share widths (l1, apoz, hrank, taylor and lasso all get `matched_ratios`'s) share these rows."""
    def widths(row):
        return {g: len(v["keep"]) for g, v in json.loads(row["plan"])["groups"].items()}

    if regime.startswith("scratch"):
        return next((r for r in rows if r["regime"] == regime and _key(r)[:2] == _key(source)[:2]
                     and r["seed"] == source["seed"] and widths(r) == widths(source)), None)
    return None


def read_rows(paths):
    return shared_setup.read_rows(paths, _key)


def _key(r):
    return r["model"], r["target"], r["method"], r["regime"], r["seed"]


def append(rows, row, path):
    shared_setup.append_row(rows, row, path)
    logging.info("%s %s %s %s seed %d: MACs %.3f, accuracy %.4f, method %.0f s, training %.0f s", row["model"],
                 row["target"], row["method"], row["regime"], row["seed"], row["macs_ratio"], row["accuracy"],
                 row["method_seconds"], row["train_seconds"])


def run(rows, baselines):
    data = load_data()
    rows_path = FLAGS.out + ".jsonl"
    for name in FLAGS.models:
        model, snapshots, record = baseline(name, data)
        baselines[name] = record
        shared_setup.write_text(FLAGS.out + "_baselines.json", json.dumps(baselines, indent=1))
        logging.info("%s baseline: test accuracy %.4f", name, record["accuracy"])
        for seed in map(int, FLAGS.seeds):
            for target in map(float, FLAGS.targets):
                for method in FLAGS.methods if FLAGS.stage != "regimes" else ():
                    if (name, target, method, "finetune", seed) not in {_key(r) for r in rows}:
                        append(rows, method_row(name, model, record, target, method, seed, data), rows_path)
        if FLAGS.stage == "methods":
            continue
        for source in regime_sources(name, rows):
            for regime in FLAGS.regimes:
                if (name, source["target"], source["method"], regime, source["seed"]) in {_key(r) for r in rows}:
                    continue
                twin = same_training(source, regime, rows)
                if twin:
                    logging.info("%s %s %s %s seed %d: not run, the same training as %s's", name, source["target"],
                                 source["method"], regime, source["seed"], twin["method"])
                else:
                    append(rows, regime_row(name, model, snapshots, source, regime, data), rows_path)
        for seed in map(int, FLAGS.seeds) if any(g.startswith("finetune_long") for g in FLAGS.regimes) else ():
            if (name, 1.0, "unpruned", "finetune_long", seed) not in {_key(r) for r in rows}:
                append(rows, control_row(name, model, seed, data), rows_path)


# ---- report --------------------------------------------------------------------------------------------------------

def _stats(values):
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values, scale=1.0, digits=4):
    mean, std = _stats(values)
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if len(values) > 1 else "")


def summarise(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["target"], r["method"], r["regime"]), []).append(r)
    return groups


def report(rows, baselines):
    groups = summarise(rows)
    settings = ", ".join(f"{k}={getattr(FLAGS, k)}" for k in SETTINGS)
    lines = ["# Every method at matched MACs on Fashion-MNIST", "",
             f"`python benchmarks/methods.py` ({settings}); see the script's docstring for the protocol. Test "
             "accuracy on the 10,000 test images, mean ± standard deviation over n seeds; \"drop\" is in points "
             "against the unpruned baseline; latency is LiteRT at batch 1 on one thread, slim over full; method "
             "seconds include measuring, searching and sparsity training; extra epochs are the method's own "
             "training, in epochs of the training split.", ""]
    for name, b in sorted(baselines.items()):
        lines.append(f"**{shared_setup.reference_cnn_name(name)}** (`--models={name}`) baseline: test accuracy "
                     f"**{b['accuracy']:.4f}** (validation {b['val_accuracy']:.4f})"
                     f" after {b['epochs']} epochs, {b['seconds'] / 60:.0f} min; {b['macs']:,} MACs, "
                     f"{b['params']:,} params.")
    lines += ["", "| model | MACs target | method | n | MACs ratio | params ratio | latency ratio | pruned | "
              "fine-tuned | drop (points) | method s | extra epochs |", "|---" * 12 + "|"]
    order = list(LABELS)
    for (name, target, method, regime), group in sorted(
            groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], order.index(kv[0][2]))):
        if regime != "finetune":
            continue
        acc = [r["accuracy"] for r in group]
        base = baselines[name]["accuracy"]
        lines.append(
            f"| {shared_setup.reference_cnn_name(name)} | {target} | {LABELS[method]} | {len(group)} | "
            f"{statistics.mean(r['macs_ratio'] for r in group):.3f} | "
            f"{statistics.mean(r['params_ratio'] for r in group):.3f} | "
            f"{statistics.mean(r['latency_ratio'] for r in group):.2f} | "
            f"{statistics.mean(r['pruned_accuracy'] for r in group):.4f} | {_cell(acc)} | "
            f"{_cell([base - a for a in acc], 100, 2)} | {statistics.mean(r['method_seconds'] for r in group):.0f} | "
            f"{statistics.mean(r['extra_epochs'] for r in group):.1f} |")
    regimes = [g for g in ("finetune",) + tuple(REGIME_LABELS)[1:] if any(k[3] == g for k in groups)]
    if len(regimes) > 1:
        lines += ["", "## Regimes", "", "Test accuracy of each slim architecture per regime (n seeds).", "",
                  "| model | MACs target | method | " + " | ".join(REGIME_LABELS[g] for g in regimes) + " |",
                  "|---" * (3 + len(regimes)) + "|"]
        for name, target, method in sorted({k[:3] for k in groups if k[3] != "finetune"},
                                           key=lambda k: (k[0], -k[1], order.index(k[2]))):
            cells = [f"{_cell([r['accuracy'] for r in groups[(name, target, method, g)]])} "
                     f"(n={len(groups[(name, target, method, g)])})" if (name, target, method, g) in groups else
                     _twin_cell(groups.get((name, target, method, "finetune"), []), g, rows) for g in regimes]
            lines.append(f"| {shared_setup.reference_cnn_name(name)} | {target} | {LABELS[method]} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## Compass: accuracy drop against the unpruned baseline", ""] + compass(groups, baselines)
    lines += ["", "## Compute per method", "", "Wall-clock minutes summed over every row of the method: its own "
              "work (measuring, searching, sparsity training), the fine-tuning of the method rows, and the regime "
              "trainings of its architectures.", "", "| method | rows | method min | fine-tuning min | regimes min |",
              "|---|---|---|---|---|"]
    for method in (m for m in LABELS if any(r["method"] == m for r in rows)):
        mine = [r for r in rows if r["method"] == method]
        tuned = [r for r in mine if r["regime"] == "finetune"]
        lines.append(f"| {LABELS[method]} | {len(mine)} | {sum(r['method_seconds'] for r in tuned) / 60:.0f} | "
                     f"{sum(r['train_seconds'] for r in tuned) / 60:.0f} | "
                     f"{sum(r['train_seconds'] for r in mine if r['regime'] != 'finetune') / 60:.0f} |")
    seconds = sum(b["seconds"] for b in baselines.values()) + sum(r["method_seconds"] * (r["regime"] == "finetune")
                                                                   + r["train_seconds"] for r in rows)
    entries = list(baselines.values()) + rows
    cpu = sum(e["cpu_seconds"] for e in entries if "cpu_seconds" in e)
    lines += ["", f"Total compute of these rows and baselines: {seconds / 3600:.1f} wall-clock hours on a shared "
              f"2-core machine; {cpu / 3600:.1f} CPU hours in the {sum('cpu_seconds' in e for e in entries)} of "
              f"{len(entries)} runs that measured process CPU time."]
    shared_setup.write_text(FLAGS.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    pareto_plot(groups, baselines)
    ranking_plot(groups, baselines)
    regimes_plot(groups, regimes, baselines)


def _twin_cell(sources, regime, rows):
    """The regime table's cell of a regime not run because another method's architecture got the same training."""
    twin = next((t for t in (same_training(r, regime, rows) for r in sources) if t), None)
    return f"= {LABELS[twin['method']]}" if twin else "–"


def compass(groups, baselines):
    """The drop of plain L1 and of the best (method, regime) after fine-tuning, at each target, and of the best
    architecture trained again from a reset (lottery or scratch)."""
    lines = []
    for name in sorted(baselines):
        base = baselines[name]["accuracy"]
        control = [r["accuracy"] for r in groups.get((name, 1.0, "unpruned", "finetune_long"), ())]
        for target in sorted({k[1] for k in groups if k[0] == name and k[2] != "unpruned"}, reverse=True):
            mine = {k: [r["accuracy"] for r in g] for k, g in groups.items() if k[:2] == (name, target)}
            tuned = {k: v for k, v in mine.items() if k[3].startswith("finetune")}
            if not tuned:
                continue
            parts, bests = [], []
            retrained = set(mine) - set(tuned)
            for kind, keys in (("best fine-tuned:", tuned), ("best retrained (lottery or scratch):", retrained)):
                if keys:
                    top = max(statistics.mean(mine[k]) for k in keys)
                    tied = sorted(k for k in keys if statistics.mean(mine[k]) == top)
                    bests += tied
                    drops = [base - a for a in mine[tied[0]]]
                    who = ", ".join(f"{LABELS[k[2]]} ({REGIME_LABELS[k[3]]})" for k in tied)
                    parts.append(f"{kind} {who}{' tied at' if len(tied) > 1 else ''} "
                                 f"{_cell(drops, 100, 2)} points (n={len(drops)})")
            for regime in ("finetune", "finetune_kd", "finetune_long", "finetune_long_kd"):
                if (name, target, "l1", regime) in tuned and (name, target, "l1", regime) not in bests:
                    values = tuned[(name, target, "l1", regime)]
                    parts.append(f"L1 ({REGIME_LABELS[regime]}) {_cell([base - a for a in values], 100, 2)} points")
            for regime in ("finetune_long", "finetune_long_kd"):
                if control and (name, target, "l1", regime) in tuned:
                    drops = [statistics.mean(control) - a for a in tuned[(name, target, "l1", regime)]]
                    parts.append(f"L1 ({REGIME_LABELS[regime]}) against the unpruned model fine-tuned the same "
                                 f"epochs ({_cell(control)}, n={len(control)}) {_cell(drops, 100, 2)} points")
            lines.append(f"- {shared_setup.reference_cnn_name(name)} at {target} of the MACs (−{1 - target:.0%}): "
                         + "; ".join(parts) + ".")
    return lines


def pareto_plot(groups, baselines):
    names = sorted(baselines)
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5.5), squeeze=False, layout="constrained")
    markers = dict(zip(LABELS, "osD^v<>pPX*h", strict=True))
    for ax, name in zip(axes[0], names, strict=True):
        ax.axhline(baselines[name]["accuracy"], color="black", linestyle="--", label="unpruned")
        for method in LABELS:
            points = [(statistics.mean(r["macs_ratio"] for r in g), *_stats([r["accuracy"] for r in g]))
                      for k, g in groups.items() if k[0] == name and k[2] == method and k[3] == "finetune"]
            if points:
                x, y, e = zip(*sorted(points), strict=True)
                ax.errorbar(x, y, yerr=e, marker=markers[method], capsize=3, label=LABELS[method], alpha=0.85)
        ax.set(title=f"{shared_setup.reference_cnn_name(name)}: fine-tuned test accuracy against MACs",
               xlabel="MACs ratio (slim / original)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.savefig(FLAGS.out + ".png", dpi=110)


AIMS = {0.5: 0.003, 0.25: 0.01}  # the compass: at most this drop at -50% and at -75% of the MACs


def ranking_plot(groups, baselines):
    """One panel per model and target: every method's fine-tuned accuracy (mean ± sd), best on top, against the
    unpruned baseline and the compass aim."""
    panels = sorted({k[:2] for k in groups if k[3] == "finetune"}, key=lambda k: (k[0], -k[1]))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False, layout="constrained")
    for ax, (name, target) in zip(axes[0], panels, strict=True):
        stats = sorted((_stats([r["accuracy"] for r in g]) + (len(g), LABELS[k[2]]) for k, g in groups.items()
                        if k[:2] == (name, target) and k[3] == "finetune"))
        means, stds, counts, labels = zip(*stats, strict=True)
        ax.errorbar(means, range(len(means)), xerr=stds, fmt="o", capsize=3)
        ax.set_yticks(range(len(means)), [f"{label} (n={n})" for label, n in zip(labels, counts, strict=True)])
        base = baselines[name]["accuracy"]
        ax.axvline(base, color="black", linestyle="--", label="unpruned")
        if target in AIMS:
            ax.axvline(base - AIMS[target], color="tab:green", linestyle=":",
                       label=f"aim: −{100 * AIMS[target]:.1f} points")
        ax.set(title=f"{shared_setup.reference_cnn_name(name)}, {target:g} of the MACs",
               xlabel="fine-tuned test accuracy")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.savefig(FLAGS.out + "_ranking.png", dpi=110)


def regimes_plot(groups, regimes, baselines):
    """One group of bars per slim architecture, only the regimes it ran (colour = regime), n over each bar; the
    unpruned baseline and its control (fine-tuned the same extra epochs) as lines."""
    panels = sorted({k[:3] for k in groups if k[3] != "finetune" and k[2] != "unpruned"},
                    key=lambda k: (k[0], -k[1], list(LABELS).index(k[2])))
    if not panels:
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(panels)), 5), layout="constrained")
    colours = dict(zip(REGIME_LABELS, plt.get_cmap("tab10").colors, strict=False))
    width, labelled, values = 0.8 / len(regimes), set(), []
    for x, panel in enumerate(panels):
        ran = [g for g in regimes if panel + (g,) in groups]
        for i, regime in enumerate(ran):
            accuracy = [r["accuracy"] for r in groups[panel + (regime,)]]
            mean, std = _stats(accuracy)
            position = x + (i - (len(ran) - 1) / 2) * width
            ax.bar(position, mean, width, yerr=std, capsize=2, color=colours[regime],
                   label=None if regime in labelled else REGIME_LABELS[regime])
            ax.annotate(f"{len(accuracy)}", (position, mean + std), xytext=(0, 2), textcoords="offset points",
                        ha="center", fontsize="x-small")
            labelled.add(regime)
            values += accuracy
    ax.set_xticks(np.arange(len(panels)), [f"{n} {t}\n{LABELS[m]}" for n, t, m in panels], fontsize="small")
    for style, name in zip(("--", ":", "-."), sorted({p[0] for p in panels} & set(baselines)), strict=False):
        values.append(baselines[name]["accuracy"])
        ax.axhline(values[-1], color="black", linestyle=style, linewidth=1,
                   label=f"unpruned {shared_setup.reference_cnn_name(name)}")
        control = [r["accuracy"] for r in groups.get((name, 1.0, "unpruned", "finetune_long"), ())]
        if control:
            values.append(statistics.mean(control))
            ax.axhline(values[-1], color="grey", linestyle=style, linewidth=1,
                       label=f"unpruned {shared_setup.reference_cnn_name(name)}, fine-tuned E more epochs "
                             f"(n={len(control)})")
    ax.set_ylim(min(values) - 0.01, max(values) + 0.01)
    ax.set(ylabel="test accuracy", title="Test accuracy per regime (the number over a bar is its n of seeds)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize="small", ncol=4)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(FLAGS.out + "_regimes.png", dpi=110)


def main(_):
    paths = FLAGS.merge or [FLAGS.out + ".jsonl"]
    rows = read_rows(paths)
    baselines = {}
    for path in paths:
        baselines_path = path.removesuffix(".jsonl") + "_baselines.json"
        if os.path.exists(baselines_path):
            with open(baselines_path) as f:
                baselines.update(json.load(f))
    if not (FLAGS.report or FLAGS.merge):
        run(rows, baselines)
    report(rows, baselines)


if __name__ == "__main__":
    flags.register_multi_flags_validator(
        ["rewind_epoch", "epochs"], lambda f: 0 < f["rewind_epoch"] < f["epochs"],
        "--rewind_epoch must be at least 1 and less than --epochs (θk is kept after epoch k).")
    app.run(main)
