"""DMCP on Fashion-MNIST against uniform widths of the same MACs, over seeds.

    nice -n 10 python benchmarks/dmcp.py                 # appends to benchmarks/results/dmcp.jsonl, resumes
    python benchmarks/dmcp.py --summarize                # rewrites dmcp.md from dmcp.jsonl, trains nothing

For each reference CNN (tfprune.models.small_vgg, small_resnet), MACs target and seed:
  search            `tfprune.search.dmcp` from a fresh model (the paper searches from scratch too): S epochs in all,
                    the first half the sandwich warm-up; channel order "identity" (the model is untrained);
  DMCP              the searched widths, rebuilt;
  uniform           one common keep fraction for every group, the largest whose MACs do not exceed DMCP's (within
                    2%, checked), keeping each group's first channels like DMCP;
  scratch           each slim architecture re-initialised and trained F epochs (DMCP's paper protocol: the pruned
                    network is trained from scratch);
  fine-tuned        each slim architecture inheriting the supernet's weights, trained F epochs;
  full              the unpruned model trained F epochs (once per model and seed), for reference.
Every accuracy is top-1 on the 10,000 test images. SGD with momentum 0.9 throughout. One JSON line per finished
(model, target, seed) is appended at once; a rerun skips the lines already there.
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
from tfprune.pruning.planning import plan_removals
from tfprune.search.dmcp import repair_widths

import shared_setup

matplotlib.use("Agg")

FLAGS = flags.FLAGS
shared_setup.define_models(["small_vgg", "small_resnet"])
shared_setup.define_targets(["0.5", "0.25"])
shared_setup.define_seeds(["0", "1", "2"], "Seeds (initialisation, shuffling, width sampling).")
shared_setup.define_fashion_mnist(train_size=8000)
flags.DEFINE_integer("search_epochs", 4, "S: epochs of the DMCP search (half warm-up).")
flags.DEFINE_integer("train_epochs", 3, "F: epochs of training each slim model (scratch and fine-tuned).")
shared_setup.define_training(batch_size=128, learning_rate=0.05)
flags.DEFINE_float("arch_learning_rate", 0.05, "Learning rate of DMCP's architecture parameters.")
flags.DEFINE_float("budget_weight", 0.1, "DMCP's budget loss weight.")
shared_setup.define_out("dmcp", "Output path prefix.")
flags.DEFINE_bool("summarize", False, "Train nothing: rewrite <out>.md from <out>.jsonl.")

REGIMES = ("dmcp_scratch", "uniform_scratch", "dmcp_finetuned", "uniform_finetuned")


def compiled(model):
    return shared_setup.sgd_compiled(model, FLAGS.learning_rate)


def train_and_test(model, data, seed):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    compiled(model).fit(x, y, epochs=FLAGS.train_epochs, batch_size=FLAGS.batch_size, verbose=0)
    return float(model.evaluate(x_test, y_test, batch_size=512, verbose=0)[1])


def uniform_plan(result, ratio):
    """Uniform keep fraction, each group's first channels, MACs at most `ratio`."""
    graph = tfprune.ChannelGraph(result.model)
    macs = tfprune.macs_model.MacsModel(result.model, graph)
    full = {name: graph[name].width for name in result.widths}
    ranks = {name: np.arange(w) for name, w in full.items()}
    widths = repair_widths({n: float(w) for n, w in full.items()}, macs, ranks, ratio, dict.fromkeys(full, 1))
    plan = plan_removals(graph, {n: -r.astype(float) for n, r in ranks.items()},
                         {n: full[n] - w for n, w in widths.items()})
    return plan, macs.ratio(plan)


def run(model_name, target, seed, data, done):
    builder = shared_setup.reference_cnn(model_name)
    row = {"model": model_name, "target": target, "seed": seed, "train_size": FLAGS.train_size,
           "search_epochs": FLAGS.search_epochs, "train_epochs": FLAGS.train_epochs}
    if (model_name, None, seed) not in done:  # the unpruned reference, once per model and seed
        keras.utils.set_random_seed(seed)
        full = {"model": model_name, "target": None, "seed": seed, "full": train_and_test(builder(), data, seed),
                "train_size": FLAGS.train_size, "train_epochs": FLAGS.train_epochs}
        append(full)
        done.add((model_name, None, seed))
    keras.utils.set_random_seed(seed)
    model = compiled(builder())
    (x, y), _ = data
    result = tfprune.search.dmcp(model, (x, y), target, epochs=FLAGS.search_epochs, batch_size=FLAGS.batch_size,
                                 channel_order="identity", arch_learning_rate=FLAGS.arch_learning_rate,
                                 budget_weight=FLAGS.budget_weight, seed=seed, verbose=0)
    row.update(search_seconds=round(result.seconds, 1), dmcp_macs=result.macs_ratio,
               expected_macs=result.expected_macs, expected_architecture_macs=result.expected_architecture_ratio,
               dmcp_widths=result.widths, expected_widths={k: round(v, 2) for k, v in result.expected_widths.items()})
    plan, uniform_macs = uniform_plan(result, result.macs_ratio)
    if abs(uniform_macs - result.macs_ratio) > 0.02 * result.macs_ratio:
        logging.warning("uniform MACs %.4f not within 2%% of DMCP's %.4f", uniform_macs, result.macs_ratio)
    row.update(uniform_macs=uniform_macs, uniform_widths={k: len(v) for k, v in plan.keep.items()})
    if seed == min(int(s) for s in FLAGS.seeds):
        result.figure().savefig(f"{FLAGS.out}_{model_name}_{target}.png", dpi=110)
    row["dmcp_scratch"] = train_and_test(result.slim_model(reinit="scratch", seed=seed), data, seed)
    row["uniform_scratch"] = train_and_test(tfprune.rebuild(result.model, plan, reinit="scratch", seed=seed), data,
                                            seed)
    row["dmcp_finetuned"] = train_and_test(result.slim_model(), data, seed)
    row["uniform_finetuned"] = train_and_test(tfprune.rebuild(result.model, plan), data, seed)
    append(row)


def append(row):
    with open(FLAGS.out + ".jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    logging.info("%s", row)
    summarize()


def read_rows():
    if not os.path.exists(FLAGS.out + ".jsonl"):
        return []
    with open(FLAGS.out + ".jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def spread(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f} (n=1)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)})"


def summarize():
    rows = read_rows()
    lines = ["# DMCP on Fashion-MNIST against uniform widths of the same MACs", "",
             "Written by `benchmarks/dmcp.py` (see its docstring for the protocol). Mean ± sample standard deviation "
             "over seeds; n = seeds finished. Accuracy is top-1 on the 10,000 test images.", ""]
    settings = sorted({(r["train_size"], r.get("search_epochs"), r["train_epochs"]) for r in rows if r["target"]})
    for train_size, search_epochs, train_epochs in settings:
        lines.append(f"Training images: {train_size}; search epochs S = {search_epochs}; training epochs F = "
                     f"{train_epochs}.")
    lines += ["", "| model | target | MACs DMCP | MACs uniform | search s | DMCP scratch | uniform scratch | "
              "DMCP fine-tuned | uniform fine-tuned |", "|---|---|---|---|---|---|---|---|---|"]
    for model in FLAGS.models:
        full = [r["full"] for r in rows if r["model"] == model and r["target"] is None]
        lines.append(f"| {model} | 1.0 (unpruned) | 1.000 | 1.000 | – | {spread(full)} | | | |")
        for target in sorted({r["target"] for r in rows if r["model"] == model and r["target"]}, reverse=True):
            group = [r for r in rows if r["model"] == model and r["target"] == target]
            macs = [f"{statistics.mean(r[k] for r in group):.3f}" for k in ("dmcp_macs", "uniform_macs")]
            seconds = f"{statistics.mean(r['search_seconds'] for r in group):.0f}"
            lines.append(f"| {model} | {target} | {macs[0]} | {macs[1]} | {seconds} | "
                         + " | ".join(spread([r[k] for r in group]) for k in REGIMES) + " |")
    lines += ["", "Widths chosen (first seed of each setting; uniform in brackets):", ""]
    for r in rows:
        if r["target"] and r["seed"] == min(x["seed"] for x in rows if x["target"]):
            shown = ", ".join(f"{k}: {v} ({r['uniform_widths'][k]})" for k, v in r["dmcp_widths"].items())
            lines.append(f"- {r['model']} @ {r['target']}: {shown}; expected MACs at the end of the search "
                         f"{r['expected_macs']:.3f}, expected widths rounded {r['expected_architecture_macs']:.3f}")
    shared_setup.write_text(FLAGS.out + ".md", "\n".join(lines) + "\n")


def main(argv):
    del argv
    if FLAGS.summarize:
        summarize()
        return
    done = {(r["model"], r["target"], r["seed"]) for r in read_rows()}
    data = tfprune.datasets.fashion_mnist(train_size=FLAGS.train_size, seed=0)
    for model_name in FLAGS.models:
        for seed in (int(s) for s in FLAGS.seeds):
            for target in (float(t) for t in FLAGS.targets):
                if (model_name, target, seed) in done:
                    continue
                start = time.time()
                run(model_name, target, seed, data, done)
                logging.info("%s @ %s seed %d: %.0f s", model_name, target, seed, time.time() - start)


if __name__ == "__main__":
    app.run(main)
