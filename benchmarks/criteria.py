"""Compare channel criteria on real Fashion-MNIST at about 50% fewer MACs, and time their measurement on ResNet50.

    nice -n 10 python benchmarks/criteria.py [--train_size=8000] [--test_size=2000] [--epochs=2]
        [--finetune_epochs=1] [--models=small_vgg,small_resnet] [--cost_images=256] [--skip_cost]

For each reference model (`tfprune.models.small_vgg`, `small_resnet`): train briefly, then for each criterion plan
the same per-group widths (one uniform per-layer ratio chosen so the slim model has about half the MACs; the
sensitivity row instead uses per-group ratios from `tfprune.sensitivity(...).ratios_for_macs(0.5)`), rebuild, and
report the test accuracy before fine-tuning and after `finetune_epochs` of fine-tuning. Data-driven criteria measure
on 512 training images. Then time each criterion's measurement pass on ResNet50 (224×224, random weights,
`cost_images` random images). Writes benchmarks/results/criteria.md and criteria.png (+ the sensitivity curves).
"""

import os
import time

import keras
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

import tfprune
from tfprune import criteria
from tfprune.training.datasets import fashion_mnist

import shared_setup

FLAGS = flags.FLAGS
shared_setup.define_fashion_mnist(train_size=8000, test_size=2000,
                                  train_help="Training images (of 60,000; the last 500 are held out for sensitivity).")
shared_setup.define_training(epochs=3, finetune_epochs=1, epochs_help="Training epochs before pruning.",
                             finetune_help="Fine-tuning epochs after pruning.")
shared_setup.define_models(["small_vgg", "small_resnet"])
flags.DEFINE_float("macs_reduction", 0.5, "Fraction of MACs to remove.")
flags.DEFINE_integer("cost_images", 256, "Images for the ResNet50 measurement-pass timing.")
flags.DEFINE_bool("skip_cost", False, "Skip the ResNet50 timing.")
flags.DEFINE_string("out", shared_setup.RESULTS_DIR, "Output folder.")
SAMPLE = 512  # images the data-driven criteria measure on
HELD_OUT = 500  # training images kept out of training for the sensitivity analysis


NOTES = """Reading the tables:

* Before fine-tuning, every criterion but He et al.'s with reconstruction loses most of the accuracy when ~31% of
  *every* layer goes at once: each removal shifts the inputs of the next BatchNormalization away from its moving
  statistics, and the errors compound (the sensitivity curves, which prune one group at a time, stay much higher
  at the same ratio).
* After fine-tuning, rows can beat the unpruned model: the reference models are trained only briefly, and the
  fine-tuning epoch continues their training. Compare the rows with each other, and mind the noise of a single run.
* He et al.'s rows select by LASSO on 512 training images × 10 positions per layer; "+ reconstruction" then refits
  each pruned layer by least squares against the original network's outputs (`tfprune.prune(..., criterion=
  "lasso")`). Reconstruction is what keeps the accuracy before fine-tuning; after
  fine-tuning the rows are close again. 512 images give 512 samples for small_vgg's Dense `fc`
  layer (one position per image) against its 802 unknowns per filter, so that layer is left as sliced (a warning
  says so); `benchmarks/results/lasso.md` samples 1500 images, has the per-layer errors, and `lasso_cost.md` the
  cost of the refit on ResNet50."""


def criteria_to_compare():
    """`{row label: (criterion factory, needs labels, reconstruct)}`; ratios come from the uniform search unless
    noted. The two He et al. rows share one LassoSelection, so its measurement pass runs once."""
    lasso = criteria.LassoSelection(images=SAMPLE, seed=0)
    return {
        "L1 (Li et al.)": (lambda: "l1", False, False),
        "L1 greedy (Li et al.)": (lambda: criteria.FilterNorm(variant="greedy"), False, False),
        "L1 + sensitivity ratios": (lambda: "l1", False, False),
        "HRank (4×128 images)": (lambda: criteria.HRank(batch_size=128, steps=4, verbose=0), False, False),
        "mean activation": (lambda: criteria.MeanActivation(batch_size=128, verbose=0), False, False),
        "APoZ": (lambda: criteria.APoZ(batch_size=128, verbose=0), False, False),
        "Taylor": (lambda: criteria.Taylor(batch_size=128, verbose=0), True, False),
        "He et al. LASSO, no reconstruction": (lambda: lasso, False, False),
        "He et al. LASSO + reconstruction": (lambda: lasso, False, True),
        "random": (lambda: "random", False, False),
    }


def compiled(model, lr=1e-3):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def uniform_ratio(model, graph, reduction):
    """The smallest per-layer ratio (to 0.01) whose slim model has at most (1 - reduction) of the MACs."""
    full = tfprune.count_macs(model)
    lo, hi = 0, 99
    while lo < hi:
        mid = (lo + hi) // 2
        slim = tfprune.rebuild(model, tfprune.plan(model, mid / 100, graph=graph), graph=graph)
        if tfprune.count_macs(slim) <= (1 - reduction) * full:
            hi = mid
        else:
            lo = mid + 1
    return lo / 100


def accuracy(model, x, y):
    return float(model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)["accuracy"])


def run_model(name, data):
    (x_train, y_train), (x_held, y_held), (x_test, y_test) = data
    keras.utils.set_random_seed(0)
    model = compiled(shared_setup.reference_cnn(name)())
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=64, epochs=FLAGS.epochs, verbose=2)
    train_s = time.perf_counter() - t0
    baseline = accuracy(model, x_test, y_test)
    graph = tfprune.ChannelGraph(model)
    ratio = uniform_ratio(model, graph, FLAGS.macs_reduction)
    full_macs = tfprune.count_macs(model)
    print(f"{name}: baseline {baseline:.4f}, uniform ratio {ratio}", flush=True)

    t0 = time.perf_counter()
    sens = tfprune.sensitivity(model, (x_held, y_held), graph=graph, verbose=0)
    sens_s = time.perf_counter() - t0
    sens_ratios = sens.ratios_for_macs(FLAGS.macs_reduction)
    sens.figure(title=f"Sensitivity of {name} (L1, no retraining)").savefig(
        os.path.join(FLAGS.out, f"criteria_sensitivity_{name}.png"), dpi=110)

    rows = []
    sample = (x_train[:SAMPLE], y_train[:SAMPLE])
    for label, (factory, needs_labels, refit) in criteria_to_compare().items():
        crit = factory()
        ratios = {k: v for k, v in sens_ratios.items() if v > 0} if "sensitivity" in label else ratio
        t0 = time.perf_counter()
        plan = tfprune.plan(model, ratios, criterion=crit, data=sample if needs_labels else sample[0], graph=graph,
                            seed=0)
        keras.utils.set_random_seed(0)
        slim = tfprune.rebuild(model, plan, graph=graph)
        if refit:
            crit.reconstruct(model, slim, plan, sample[0])
        plan_s = time.perf_counter() - t0 + (sens_s if "sensitivity" in label else 0)
        slim = compiled(slim, lr=5e-4)
        before = accuracy(slim, x_test, y_test)
        slim.fit(x_train, y_train, batch_size=64, epochs=FLAGS.finetune_epochs, verbose=0)
        after = accuracy(slim, x_test, y_test)
        macs = tfprune.count_macs(slim) / full_macs
        rows.append((label, macs, before, after, plan_s))
        print(f"  {label:28s} MACs {macs:.2f}  before FT {before:.4f}  after FT {after:.4f}  plan {plan_s:.1f}s",
              flush=True)
    return {"baseline": baseline, "ratio": ratio, "rows": rows, "train_s": train_s, "macs": full_macs,
            "sensitivity": sens}


def cost_on_resnet50():
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    rng = np.random.default_rng(0)
    x = rng.random((FLAGS.cost_images, 224, 224, 3), dtype=np.float32)
    y = rng.integers(0, 1000, FLAGS.cost_images)
    graph = tfprune.ChannelGraph(model)
    results = []
    timed = [("L1 (weights only)", lambda: criteria.FilterNorm(), None),
             ("mean activation", lambda: criteria.MeanActivation(batch_size=32, verbose=0), x),
             ("APoZ", lambda: criteria.APoZ(batch_size=32, verbose=0), x),
             ("HRank", lambda: criteria.HRank(batch_size=32, steps=None, verbose=0), x),
             ("Taylor", lambda: criteria.Taylor(loss="sparse_categorical_crossentropy", batch_size=32, verbose=0),
              (x, y)),
             ("He et al. LASSO (selection; refit: lasso_cost.md)",
              lambda: criteria.LassoSelection(images=FLAGS.cost_images, batch_size=32, seed=0), x)]
    for label, factory, data in timed:
        crit = factory()
        t0 = time.perf_counter()
        tfprune.plan(model, 0.5, criterion=crit, data=data, graph=graph)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        tfprune.plan(model, 0.3, criterion=crit, data=data, graph=graph)  # cached: no second pass
        cached = time.perf_counter() - t0
        results.append((label, first, cached))
        print(f"ResNet50 {label:20s} measurement + plan {first:7.1f} s, second plan (cached) {cached:.2f} s",
              flush=True)
    return results


def bar_chart(results, path):
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, res) in zip(axes, results.items(), strict=True):
        labels = [r[0] for r in res["rows"]]
        pos = np.arange(len(labels))
        ax.barh(pos + 0.2, [r[2] for r in res["rows"]], height=0.4, label="before fine-tuning")
        ax.barh(pos - 0.2, [r[3] for r in res["rows"]], height=0.4, label=f"after {FLAGS.finetune_epochs} epoch(s)")
        ax.axvline(res["baseline"], color="k", lw=1, ls="--", label="unpruned")
        ax.set_yticks(pos, labels, fontsize="small")
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{name}: ~{FLAGS.macs_reduction:.0%} fewer MACs", fontsize="medium")
        ax.set_xlabel("test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="small")
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    os.makedirs(FLAGS.out, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = fashion_mnist(train_size=FLAGS.train_size, test_size=FLAGS.test_size)
    data = ((x_train[:-HELD_OUT], y_train[:-HELD_OUT]), (x_train[-HELD_OUT:], y_train[-HELD_OUT:]), (x_test, y_test))
    results = {name: run_model(name, data) for name in FLAGS.models}
    cost = [] if FLAGS.skip_cost else cost_on_resnet50()
    bar_chart(results, os.path.join(FLAGS.out, "criteria.png"))

    lines = ["# Channel criteria on Fashion-MNIST", "",
             f"`nice -n 10 python benchmarks/criteria.py --cost_images={FLAGS.cost_images}` — "
             f"{FLAGS.train_size - HELD_OUT} training images ({FLAGS.epochs} epochs, Adam 1e-3, batch 64), "
             f"{FLAGS.test_size} test images, {HELD_OUT} held-out training images for the sensitivity analysis; "
             f"{os.cpu_count()} CPU cores (shared). Every criterion plans the "
             f"same widths (one per-layer ratio giving about {FLAGS.macs_reduction:.0%} fewer MACs) except the "
             "sensitivity row, whose per-group ratios come from `tfprune.sensitivity(...).ratios_for_macs`. "
             f"Data-driven criteria measure on {SAMPLE} training images. Fine-tuning: {FLAGS.finetune_epochs} "
             "epoch(s), Adam 5e-4. One run, seed 0: differences of a few tenths of a percent are noise.", ""]
    for name, res in results.items():
        lines += [f"## {name}", "",
                  f"Unpruned: test accuracy {res['baseline']:.4f}, {res['macs'] / 1e6:.2f}M MACs; uniform ratio "
                  f"{res['ratio']} per group; training {res['train_s']:.0f} s.", "",
                  "| criterion | MACs kept | accuracy before fine-tuning | after fine-tuning "
                  "| plan + rebuild (+ refit) s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | {macs:.2f} | {before:.4f} | {after:.4f} | {plan_s:.1f} |"
                  for label, macs, before, after, plan_s in res["rows"]]
        lines += ["", "Sensitivity curves (L1, no retraining):", "", res["sensitivity"].table(), "",
                  f"![sensitivity](criteria_sensitivity_{name}.png)", ""]
    lines += ["![accuracy by criterion](criteria.png)", "", NOTES, ""]
    if cost:
        lines += ["## Cost of the measurement pass on ResNet50", "",
                  f"ResNet50 (random weights), 224×224, {FLAGS.cost_images} random images, batch 32, "
                  f"{os.cpu_count()} shared CPU cores. First plan = tracing + one pass over the images + planning; "
                  "second plan with the same criterion object reads the cached scores.", "",
                  "| criterion | first plan s | second plan (cached) s |", "|---|---|---|"]
        lines += [f"| {label} | {first:.1f} | {cached:.2f} |" for label, first, cached in cost]
        lines.append("")
    path = os.path.join(FLAGS.out, "criteria.md")
    shared_setup.write_text(path, "\n".join(lines))
    print(f"written {path}")


if __name__ == "__main__":
    app.run(main)
