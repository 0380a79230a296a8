"""Training-time pruning on Fashion-MNIST: DropNet (layer, global), Network Slimming and group lasso at about 50% and
75% fewer MACs, and the comparison of "Rethinking the Value of Network Pruning" on each slim architecture.

    python benchmarks/callbacks.py                       # writes benchmarks/results/callbacks.{md,json,png}
    python benchmarks/callbacks.py --replot              # redraws .md and .png from callbacks.json, no training
    python benchmarks/callbacks.py --seed=1 --out=benchmarks/results/callbacks_seed1      # another seed, then
    python benchmarks/callbacks.py --merge=benchmarks/results/callbacks.json,benchmarks/results/callbacks_seed1.json
                                                         # mean ± standard deviation over seeds: callbacks_seeds.md
    python benchmarks/callbacks.py --train_size=60000 --epochs=20 --finetune_epochs=5   # the full-size run

For each reference CNN (tfprune.models.small_vgg, small_resnet), from one random initialisation θ0:
  baseline       the unpruned model trained for E epochs;
  per method and target: the method's callback trains from θ0 for E epochs, the plan meets the MACs target (DropNet
  stops at it; Network Slimming and group lasso threshold their scores globally, bisected to it), then the slim
  architecture is
    fine-tuned   from the trained weights for F epochs,
    lottery      rewound to θ0 (the surviving channels' initial weights) and trained E epochs,
    scratch-E    re-initialised and trained E epochs,
    scratch-B    re-initialised and trained E × MACs(full) / MACs(slim) epochs (the same compute as the baseline).
Every accuracy is top-1 on the held-out test images. SGD with momentum 0.9 throughout.
"""

import json
import os
import statistics
import time

import keras
import matplotlib
import matplotlib.patches
from absl import app, flags, logging

import tfprune
from tfprune.callbacks import DropNet, GroupLasso, NetworkSlimming

import shared_setup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.FLAGS
shared_setup.define_models(["vgg", "resnet"])
flags.DEFINE_list("methods", ["dropnet", "dropnet_global", "slimming", "group_lasso"], "Methods to run.")
shared_setup.define_targets(["0.5", "0.25"])
shared_setup.define_fashion_mnist(train_size=8000, test_size=2000)
shared_setup.define_training(batch_size=128, learning_rate=0.05, epochs=3, finetune_epochs=2,
                             epochs_help="E: epochs of the baseline, of training with a callback, of lottery and "
                                         "scratch-E.")
flags.DEFINE_float("dropnet_fraction", 0.3, "DropNet's fraction of the remaining channels masked per epoch.")
flags.DEFINE_integer("seed", 0, "Seed of the data subset, θ0 and every run.")
shared_setup.define_out("callbacks", "Output path prefix.")
flags.DEFINE_bool("replot", False, "Train nothing: rewrite the table and plot from the .json of an earlier run.")
flags.DEFINE_list("merge", [], "Train nothing: summarise these .json files (runs with different seeds) over seeds "
                  "into <out>_seeds.md.")

SETTINGS = ("train_size", "test_size", "epochs", "finetune_epochs", "learning_rate", "batch_size", "seed",
            "dropnet_fraction", "methods")

LABELS = {"dropnet": "DropNet (layer)", "dropnet_global": "DropNet (global)", "slimming": "Network Slimming",
          "group_lasso": "Group lasso (SSL)"}
REGIMES = ("fine-tune", "lottery", "scratch-E", "scratch-B")


def compiled(model):
    return shared_setup.sgd_compiled(model, FLAGS.learning_rate)


def train(model, data, epochs, callbacks=()):
    (x, y), _ = data
    keras.utils.set_random_seed(FLAGS.seed)
    if epochs:
        model.fit(x, y, epochs=epochs, batch_size=FLAGS.batch_size, callbacks=list(callbacks), verbose=0)
    return model


def accuracy(model, data):
    _, (x_test, y_test) = data
    return float(model.evaluate(x_test, y_test, batch_size=512, verbose=0)[1])


def callback_for(method, model_name, x_sample, target):
    if method.startswith("dropnet"):
        scope = "global" if method == "dropnet_global" else "layer"
        return DropNet(x_sample, fraction=FLAGS.dropnet_fraction, scope=scope, target={"macs": target}, rewind=None,
                       seed=FLAGS.seed)
    if method == "slimming":  # the paper's strengths
        return NetworkSlimming(l1=1e-5 if model_name == "resnet" else 1e-4)
    return GroupLasso(strength=1e-3, groups="filter")


def slim_architectures(model_name, method, theta0, data, targets):
    """Train with the method's callback from θ0; yield (target, trained model, plan, MACs ratio) per target."""
    (x, _), _ = data
    shared = None
    for target in targets:
        if method.startswith("dropnet") or shared is None:
            model = compiled(shared_setup.reference_cnn(model_name)())
            model.set_weights(theta0)
            initial = {v.path: w for v, w in zip(model.weights, theta0, strict=True)}
            callback = callback_for(method, model_name, x[:1024], target)
            train(model, data, FLAGS.epochs, [callback])
            shared = (model, callback, initial)
        model, callback, initial = shared
        if isinstance(callback, DropNet):
            plan = callback.plan()
            macs = callback.history[-1]["macs"] if callback.history else 1.0
        else:
            plan, macs = tfprune.plan_for_macs(model, target, callback.plan, graph=callback.graph)
        yield target, model, callback, plan, macs, initial


def run_model(model_name, data, report):
    keras.utils.set_random_seed(FLAGS.seed)
    model = compiled(shared_setup.reference_cnn(model_name)())
    theta0 = model.get_weights()
    start = time.perf_counter()
    train(model, data, FLAGS.epochs)
    baseline = {"model": model.name, "accuracy": accuracy(model, data), "macs": tfprune.count_macs(model),
                "params": tfprune.count_params(model), "seconds": time.perf_counter() - start}
    logging.info("%s baseline: accuracy %.4f", model.name, baseline["accuracy"])
    rows = []
    report(baseline, rows)
    targets = [float(t) for t in FLAGS.targets]
    for method in FLAGS.methods:
        architectures = slim_architectures(model_name, method, theta0, data, targets)
        for target, trained, callback, plan, macs, initial in architectures:
            row = {"model": model.name, "method": method, "target": target, "macs_ratio": macs,
                   "trained": accuracy(trained, data)}
            slim = compiled(callback.slim_model(plan))
            row["params_ratio"] = tfprune.count_params(slim) / baseline["params"]
            row["pruned"] = accuracy(slim, data)
            row["fine-tune"] = accuracy(train(slim, data, FLAGS.finetune_epochs), data)
            lottery = compiled(callback.slim_model(plan, reinit="lottery", initial_weights=initial))
            row["lottery"] = accuracy(train(lottery, data, FLAGS.epochs), data)
            scratch = compiled(callback.slim_model(plan, reinit="scratch", seed=FLAGS.seed))
            row["scratch-E"] = accuracy(train(scratch, data, FLAGS.epochs), data)
            budget = tfprune.scratch_b_epochs(FLAGS.epochs, trained, slim)
            scratch = compiled(callback.slim_model(plan, reinit="scratch", seed=FLAGS.seed))
            row["scratch-B"] = accuracy(train(scratch, data, budget), data)
            row["scratch_b_epochs"] = budget
            logging.info("%s", row)
            rows.append(row)
            report(baseline, rows)
    return baseline, rows


def table(settings, baselines, rows):
    s = settings
    lines = [f"Fashion-MNIST, {s['train_size']} training / {s['test_size']} test images, E = {s['epochs']} "
             f"epochs, fine-tuning F = {s['finetune_epochs']} epochs, SGD {s['learning_rate']} momentum 0.9, "
             f"batch {s['batch_size']}, seed {s['seed']}; DropNet masks {s['dropnet_fraction']:.0%} of the "
             "remaining channels per epoch; Network Slimming l1 1e-4 (VGG) / 1e-5 (ResNet), proximal; group lasso "
             "1e-3 on filters, proximal. 2 CPU cores (`python benchmarks/callbacks.py`).", ""]
    for baseline in baselines:
        lines.append(f"**{baseline['model']}**: unpruned accuracy {baseline['accuracy']:.4f} after E epochs, "
                     f"{baseline['params']:,} params, {baseline['macs']:,} MACs.")
    lines += ["", "| model | method | MACs ratio | params ratio | with callback | pruned | fine-tuned | lottery (θ0) "
              "| scratch-E | scratch-B (epochs) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {LABELS[r['method']]} | {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
                     f"{r['trained']:.4f} | {r['pruned']:.4f} | {r['fine-tune']:.4f} | {r['lottery']:.4f} | "
                     f"{r['scratch-E']:.4f} | {r['scratch-B']:.4f} ({r['scratch_b_epochs']}) |")
    return "\n".join(lines) + "\n"


def plot(settings, baselines, rows, path):
    fig, axes = plt.subplots(1, len(baselines), figsize=(6.5 * len(baselines), 5), squeeze=False,
                             layout="constrained")
    markers = dict(zip(settings["methods"], "osD^v", strict=False))
    colors = dict(zip(REGIMES, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    for ax, baseline in zip(axes[0], baselines, strict=True):
        ax.axhline(baseline["accuracy"], color="black", linestyle="--", label="unpruned")
        for r in (r for r in rows if r["model"] == baseline["model"]):
            for regime in REGIMES:
                ax.scatter(r["macs_ratio"], r[regime], marker=markers[r["method"]], color=colors[regime])
        for regime in REGIMES:
            ax.add_patch(matplotlib.patches.Rectangle((0, 0), 0, 0, color=colors[regime], label=regime))
        for method in settings["methods"]:
            ax.scatter([], [], color="gray", marker=markers[method], label=LABELS[method])
        ax.set(title=baseline["model"], xlabel="MACs remaining (slim / original)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=5, fontsize=8)
    fig.savefig(path, dpi=120)


def write(results):
    """Write the .json (every figure), the .md table and the .png plot of `results`."""
    shared_setup.write_text(FLAGS.out + ".json", json.dumps(results, indent=1))
    shared_setup.write_text(FLAGS.out + ".md", table(**results))
    plot(**results, path=FLAGS.out + ".png")


def seeds_table(runs):
    """Mean ± standard deviation of each (model, method, target) over the runs that have it (at least two)."""
    def spread(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    seeds = [run["settings"]["seed"] for run in runs]
    lines = [f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))} (each seed draws its own data "
             "subset, θ0 and batches; all else as in callbacks.md); n: how many of the runs have the row. "
             "`python benchmarks/callbacks.py --merge=" + ",".join(os.path.basename(p) for p in FLAGS.merge) + "`",
             ""]
    for model in dict.fromkeys(b["model"] for run in runs for b in run["baselines"]):
        accuracies = [b["accuracy"] for run in runs for b in run["baselines"] if b["model"] == model]
        if len(accuracies) > 1:
            lines.append(f"**{model}**: unpruned accuracy {spread(accuracies)} (n = {len(accuracies)}).")
    lines += ["", "| model | method | target MACs | n | MACs ratio | fine-tuned | lottery (θ0) | scratch-E | scratch-B "
              "| scratch-B − fine-tuned |", "|---|---|---|---|---|---|---|---|---|---|"]
    grouped = {}
    for run in runs:
        for r in run["rows"]:
            grouped.setdefault((r["model"], r["method"], r["target"]), []).append(r)
    for (model, method, target), rows in grouped.items():
        if len(rows) < 2:
            continue
        cells = [spread([r[regime] for r in rows]) for regime in REGIMES]
        gain = spread([r["scratch-B"] - r["fine-tune"] for r in rows])
        lines.append(f"| {model} | {LABELS[method]} | {target:g} | {len(rows)} | "
                     f"{statistics.mean(r['macs_ratio'] for r in rows):.3f} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.merge:
        runs = []
        for path in FLAGS.merge:
            with open(path) as f:
                runs.append(json.load(f))
        shared_setup.write_text(FLAGS.out + "_seeds.md", seeds_table(runs))
        logging.info("wrote %s_seeds.md", FLAGS.out)
        return
    if FLAGS.replot:
        with open(FLAGS.out + ".json") as f:
            write(json.load(f))
        logging.info("rewrote %s.md and %s.png from %s.json", FLAGS.out, FLAGS.out, FLAGS.out)
        return
    data = tfprune.datasets.fashion_mnist(train_size=FLAGS.train_size, test_size=FLAGS.test_size, seed=FLAGS.seed)
    settings = {name: FLAGS[name].value for name in SETTINGS}
    baselines, rows = [], []

    def report(baseline, model_rows):  # rewrite the results after every run, so a long run can be followed
        done = [b for b in baselines if b["model"] != baseline["model"]] + [baseline]
        everything = [r for r in rows if r["model"] != baseline["model"]] + model_rows
        write({"settings": settings, "baselines": done, "rows": everything})

    for name in FLAGS.models:
        baseline, model_rows = run_model(name, data, report)
        baselines.append(baseline)
        rows += model_rows
    print(table(settings, baselines, rows))
    logging.info("wrote %s.{json,md,png}", FLAGS.out)


if __name__ == "__main__":
    app.run(main)
