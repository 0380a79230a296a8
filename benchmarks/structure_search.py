"""Structure search on Fashion-MNIST: ABCPruner against random search, uniform widths and Li et al.'s per-layer L1
ratios from sensitivity analysis, at about 50% and 25% of the MACs.

    python benchmarks/structure_search.py                 # runs what is missing, appends each finished row to
                                                          # benchmarks/results/structure_search.jsonl, then reports
    python benchmarks/structure_search.py --report        # rewrites structure_search.{md,png} from the rows only

For each reference CNN (tfprune.models.small_vgg, small_resnet), trained once (seed 0) on `train_size` images with
a validation split of `val_size` images carved from the rest of the 60,000 training images:
  abc           tfprune.search.abc: food sources × cycles of candidates, each fine-tuned `fitness_steps` batches
                and scored on `fitness_val` validation images; the fittest widths win;
  random        tfprune.search.random_search with the same number of evaluations as that seed's ABC run;
  uniform       one common keep ratio for every group, the largest under the budget;
  l1_sensitivity  Li et al. (ICLR 2017): per-group ratios from the sensitivity curves on the validation split,
                the least sensitive groups pruned most, bisected to the MACs target.
Every method keeps channels by filter L1 norm with the trained weights inherited, and every slim model is then
fine-tuned the same `finetune_epochs` epochs (SGD, momentum 0.9) with a seed-dependent order; its accuracy is top-1
on the 10,000 test images, which no method sees. Seeds vary the search and the fine-tuning.
"""

import json
import os
import statistics
import time

import keras
import matplotlib
import numpy as np
from absl import app, flags, logging

import tfprune

import shared_setup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.FLAGS
shared_setup.define_models(["vgg", "resnet"])
flags.DEFINE_list("methods", ["uniform", "l1_sensitivity", "abc", "random"], "Methods to run.")
shared_setup.define_targets(["0.5", "0.25"])
shared_setup.define_seeds(["0", "1", "2"], "Seeds of the searches and of fine-tuning.")
shared_setup.define_fashion_mnist(train_size=15000)
flags.DEFINE_integer("val_size", 5000, "Validation images, carved from the training images not used for training.")
shared_setup.define_training(batch_size=128, learning_rate=0.05, epochs=5, finetune_epochs=2,
                             epochs_help="Epochs of the baseline.",
                             finetune_help="Epochs of fine-tuning of every slim model.")
flags.DEFINE_integer("food_sources", 5, "ABC food sources.")
flags.DEFINE_integer("cycles", 3, "ABC cycles.")
flags.DEFINE_integer("limit", 3, "ABC limit of unimproved trials.")
flags.DEFINE_integer("fitness_steps", 30, "Fine-tuning batches (of 64) of each candidate in a search.")
flags.DEFINE_integer("fitness_val", 2000, "Validation images each search candidate is scored on.")
shared_setup.define_out("structure_search", "Output prefix.")
shared_setup.define_work_dir("structure_search", "Where the trained baselines are kept between runs (not committed).")
flags.DEFINE_bool("report", False, "Run nothing: rewrite the table and plot from the rows.")

LABELS = {"abc": "ABCPruner", "random": "random search", "uniform": "uniform widths",
          "l1_sensitivity": "L1 + sensitivity (Li et al.)"}
SETTINGS = ("train_size", "val_size", "epochs", "finetune_epochs", "batch_size", "learning_rate", "food_sources",
            "cycles", "limit", "fitness_steps", "fitness_val")


def compiled(model):
    return shared_setup.sgd_compiled(model, FLAGS.learning_rate)


def load_data():
    (x, y), test = tfprune.datasets.fashion_mnist()
    order = np.random.default_rng(0).permutation(len(x))
    train = order[:FLAGS.train_size]
    val = order[FLAGS.train_size:FLAGS.train_size + FLAGS.val_size]
    return (x[train], y[train]), (x[val], y[val]), test


def baseline(name, data):
    path = os.path.join(FLAGS.work_dir, f"{name}_{FLAGS.train_size}_{FLAGS.epochs}.keras")
    if os.path.exists(path):
        return compiled(keras.saving.load_model(path, compile=False))
    (x, y), _, _ = data
    keras.utils.set_random_seed(0)
    model = compiled(shared_setup.reference_cnn(name)())
    model.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, verbose=2)
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    model.save(path)
    return model


def accuracy(model, data):
    x, y = data
    return float(model.evaluate(x, y, batch_size=512, verbose=0, return_dict=True)["accuracy"])


def search(method, model, target, seed, data, abc_evaluations):
    """(plan, search seconds, evaluations, fitness) of one method."""
    train, val, _ = data
    fitness_val = (val[0][:FLAGS.fitness_val], val[1][:FLAGS.fitness_val])
    options = dict(target_macs=target, fine_tune_steps=FLAGS.fitness_steps, seed=seed, verbose=1)
    start = time.perf_counter()
    if method == "abc":
        result = tfprune.search.abc(model, train, fitness_val, food_sources=FLAGS.food_sources, cycles=FLAGS.cycles,
                                    limit=FLAGS.limit, **options)
    elif method == "random":
        result = tfprune.search.random_search(model, train, fitness_val, evaluations=abc_evaluations, **options)
    elif method == "uniform":
        space = tfprune.search.WidthSpace(model, target)
        return space.uniform_candidate()[1], time.perf_counter() - start, 0, None
    else:
        analysis, analysis_seconds = _sensitivity(model, val)
        start = time.perf_counter() - analysis_seconds
        plan = analysis.plan_for_macs(target)
        return plan, time.perf_counter() - start, 0, None
    return result.plan, time.perf_counter() - start, result.evaluations, result.fitness


_SENSITIVITY = {}


def _sensitivity(model, val):
    """The sensitivity analysis of a model and the seconds it took: it depends on neither seed nor target, so it is
    computed once per model and process and its time is counted in every row that uses it."""
    if id(model) not in _SENSITIVITY:
        start = time.perf_counter()
        analysis = tfprune.sensitivity(model, val, verbose=0)
        _SENSITIVITY[id(model)] = analysis, time.perf_counter() - start
    return _SENSITIVITY[id(model)]


def run_row(name, model, target, method, seed, data, rows):
    train, _, test = data
    abc_row = next((r for r in rows if (r["model"], r["target"], r["method"], r["seed"]) == (name, target, "abc",
                                                                                            seed)), None)
    if method == "random" and abc_row is None:
        logging.warning("random search at %s/%s seed %d waits for the ABC row (its evaluation count)", name, target,
                        seed)
        return None
    plan, seconds, evaluations, fitness = search(method, model, target, seed, data,
                                                 abc_row["evaluations"] if abc_row else 0)
    slim = compiled(tfprune.rebuild(model, plan))
    pruned = accuracy(slim, test)
    keras.utils.set_random_seed(seed)
    slim.fit(*train, epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size, verbose=0)
    full = {g.name: g.width for g in tfprune.ChannelGraph(model).prunable_groups}
    widths = {g: len(plan.keep.get(g, range(w))) for g, w in full.items()}
    return {"model": name, "target": target, "method": method, "seed": seed,
            "macs_ratio": tfprune.count_macs(slim) / tfprune.count_macs(model),
            "params_ratio": tfprune.count_params(slim) / tfprune.count_params(model),
            "pruned_accuracy": pruned, "accuracy": accuracy(slim, test), "search_seconds": seconds,
            "evaluations": evaluations, "fitness": fitness,
            "keep_ratios": {g: widths[g] / w for g, w in full.items()}}


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def report(rows, baselines):
    summary = {}
    for r in rows:
        summary.setdefault((r["model"], r["target"], r["method"]), []).append(r)
    settings = ", ".join(f"{k}={getattr(FLAGS, k)}" for k in SETTINGS)
    lines = ["# Structure search on Fashion-MNIST", "",
             f"`python benchmarks/structure_search.py` ({settings}). Test accuracy on the 10,000 test images after "
             f"{FLAGS.finetune_epochs} fine-tuning epochs, mean ± standard deviation over n seeds; \"pruned\" is "
             "before fine-tuning. Search seconds include every candidate's fine-tuning.", ""]
    for name, acc in sorted(baselines.items()):
        lines.append(f"Unpruned {shared_setup.reference_cnn_name(name)}: test accuracy {acc:.4f}.")
    lines += ["", "| model | MACs target | method | n | MACs ratio | params ratio | pruned | fine-tuned | "
              "search s | evaluations |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, target, method), group in sorted(summary.items(), key=lambda kv: (kv[0][0], -kv[0][1],
                                                                                  FLAGS.methods.index(kv[0][2])
                                                                                  if kv[0][2] in FLAGS.methods
                                                                                  else 9)):
        acc = [r["accuracy"] for r in group]
        spread = f" ± {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        lines.append(
            f"| {shared_setup.reference_cnn_name(name)} | {target} | {LABELS[method]} | {len(group)} | "
            f"{statistics.mean(r['macs_ratio'] for r in group):.3f} | "
            f"{statistics.mean(r['params_ratio'] for r in group):.3f} | "
            f"{statistics.mean(r['pruned_accuracy'] for r in group):.4f} | {statistics.mean(acc):.4f}{spread} | "
            f"{_mean_seconds(group)} | "
            f"{statistics.mean(r['evaluations'] for r in group):.0f} |")
    shared_setup.write_text(FLAGS.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(summary)


def _mean_seconds(group):
    """Mean search seconds of the rows that measured them (a row whose process was paused has None)."""
    seconds = [r["search_seconds"] for r in group if r["search_seconds"] is not None]
    return f"{statistics.mean(seconds):.0f}" + ("" if len(seconds) == len(group) else f" (n={len(seconds)})") \
        if seconds else "–"


def plot(summary):
    panels = sorted({(name, target) for name, target, _ in summary}, key=lambda p: (p[0], -p[1]))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), layout="constrained", squeeze=False)
    for ax, (name, target) in zip(axes[:, 0], panels, strict=True):
        methods = [m for m in FLAGS.methods if (name, target, m) in summary]
        groups = list(summary[(name, target, methods[0])][0]["keep_ratios"])
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            ratios = np.array([[r["keep_ratios"][g] for g in groups] for r in summary[(name, target, method)]])
            x = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, ratios.mean(axis=0), width, label=LABELS[method], alpha=0.85)
            if len(ratios) > 1:
                ax.errorbar(x, ratios.mean(axis=0), yerr=ratios.std(axis=0), fmt="none", ecolor="k", lw=0.7)
        ax.set_xticks(np.arange(len(groups)), groups, rotation=40, ha="right", fontsize="x-small")
        ax.set_ylabel("fraction kept")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{shared_setup.reference_cnn_name(name)} at {target} of the MACs: keep ratio per group "
                     "(mean over seeds)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize="small", ncol=len(FLAGS.methods))
    fig.savefig(FLAGS.out + ".png", dpi=110)


def main(_):
    rows_path = FLAGS.out + ".jsonl"
    rows = read_rows(rows_path)
    baselines_path = FLAGS.out + "_baselines.json"
    baselines = {}
    if os.path.exists(baselines_path):
        with open(baselines_path) as f:
            baselines = json.load(f)
    if not FLAGS.report:
        data = load_data()
        for name in FLAGS.models:
            model = baseline(name, data)
            baselines[name] = accuracy(model, data[2])
            shared_setup.write_text(baselines_path, json.dumps(baselines, indent=1))
            logging.info("%s baseline test accuracy %.4f", name, baselines[name])
            for seed in map(int, FLAGS.seeds):
                for target in map(float, FLAGS.targets):
                    for method in FLAGS.methods:
                        done = {(r["model"], r["target"], r["method"], r["seed"]) for r in rows}
                        if (name, target, method, seed) in done:
                            continue
                        row = run_row(name, model, target, method, seed, data, rows)
                        if row is None:
                            continue
                        rows.append(row)
                        with open(rows_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
                        logging.info("%s %s %s seed %d: MACs %.3f, accuracy %.4f (pruned %.4f), %.0f s", name,
                                     target, method, seed, row["macs_ratio"], row["accuracy"],
                                     row["pruned_accuracy"], row["search_seconds"])
    report(rows, baselines)


if __name__ == "__main__":
    app.run(main)
