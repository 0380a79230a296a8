"""Cost of He et al.'s channel pruning on ResNet50 (224×224): the LASSO measurement pass and the reconstruction.

    nice -n 10 python benchmarks/lasso_cost.py [--images=128] [--locations=10] [--ratio=0.3]

Random weights and random inputs (the cost does not depend on them). Writes benchmarks/results/lasso_cost.md.
"""

import os
import time

import keras
import numpy as np
from absl import app, flags

import tfprune
from tfprune.criteria import LassoSelection

import shared_setup

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 128, "Images sampled.")
flags.DEFINE_integer("locations", 10, "Positions sampled per image and layer.")
flags.DEFINE_float("ratio", 0.3, "Fraction of channels removed per group.")
shared_setup.define_out("lasso_cost.md", "Markdown output.")


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    x = np.random.default_rng(0).uniform(-1, 1, size=(FLAGS.images, 224, 224, 3)).astype("float32")
    lasso = LassoSelection(images=FLAGS.images, locations_per_image=FLAGS.locations, batch_size=8, seed=0)
    graph = tfprune.ChannelGraph(model)
    t0 = time.perf_counter()
    lasso._grams(graph, model, x)  # the measurement pass alone
    measure = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = tfprune.plan(model, FLAGS.ratio, criterion=lasso, data=x, graph=graph)
    select = time.perf_counter() - t0
    slim = tfprune.rebuild(model, plan, graph=graph)
    t0 = time.perf_counter()
    report = tfprune.reconstruct(model, slim, plan, x, images=FLAGS.images, locations_per_image=FLAGS.locations,
                                 batch_size=8, graph=graph)
    refit = time.perf_counter() - t0
    exact = sum(s["exact"] for s in lasso.selections.values())
    lines = [f"ResNet50, 224×224, random weights and inputs, {FLAGS.images} images × {FLAGS.locations} positions, "
             f"{FLAGS.ratio:.0%} of every prunable group, {os.cpu_count()} CPU cores, load average "
             f"{os.getloadavg()[0]:.1f} at the end.", "",
             "| step | seconds |", "|---|---|",
             f"| LASSO measurement pass (one inference pass, patch moments of {len(plan.keep)} groups' readers) "
             f"| {measure:.1f} |",
             f"| LASSO α search, all groups ({exact}/{len(lasso.selections)} exact counts) | {select:.1f} |",
             f"| reconstruction ({len(report.fits)} layers refitted, {len(report.skipped)} skipped) | {refit:.1f} |",
             "", f"MACs {tfprune.count_macs(model) / 1e9:.2f}G → {tfprune.count_macs(slim) / 1e9:.2f}G.",
             "", "Command: `nice -n 10 python benchmarks/lasso_cost.py "
             f"--images={FLAGS.images} --locations={FLAGS.locations} --ratio={FLAGS.ratio}`", ""]
    print("\n".join(lines))
    shared_setup.write_text(FLAGS.out, "\n".join(lines))


if __name__ == "__main__":
    app.run(main)
