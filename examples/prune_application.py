"""Prune a keras.applications model by L1 filter norm and show what it saves.

    python examples/prune_application.py --model=ResNet50 --ratio=0.5 --input_size=224

Builds the model (random weights: nothing is downloaded), analyses its channel groups, plans and rebuilds a slim
model, checks that the slim model computes what the masked original computes, and prints the per-layer summary.
"""

import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

import tfprune
from tfprune.deployment.verification import check_equivalence, random_inputs

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "ResNet50", "A keras.applications constructor name, e.g. MobileNetV2, VGG16.")
flags.DEFINE_float("ratio", 0.5, "Fraction of the channels of every prunable group to remove, in [0, 1).")
flags.DEFINE_enum("criterion", "l1", ["l1", "l2", "random"], "How channels are ranked.")
flags.DEFINE_enum("scope", "layer", ["layer", "global"], "Same ratio per group, or one global threshold.")
flags.DEFINE_integer("input_size", 224, "Height and width of the model input.")
flags.DEFINE_integer("round_to", 1, "Round kept channel counts up to a multiple of this.")
flags.DEFINE_integer("batch_size", 8, "Batch size of the latency measurement.")
flags.DEFINE_integer("runs", 10, "Timed runs of the latency measurement.")
flags.DEFINE_string("plan_out", None, "Write the plan as JSON to this path.")
flags.DEFINE_string("slim_out", None, "Save the slim model to this .keras path.")


def main(argv):
    del argv
    constructor = getattr(keras.applications, FLAGS.model, None)
    if constructor is None:
        raise app.UsageError(f"--model={FLAGS.model} is not a keras.applications constructor.")
    size = FLAGS.input_size
    model = constructor(weights=None, input_shape=(size, size, 3), classes=1000)

    start = time.perf_counter()
    graph = tfprune.ChannelGraph(model)
    analysed = time.perf_counter()
    plan = tfprune.plan(model, FLAGS.ratio, criterion=FLAGS.criterion, scope=FLAGS.scope, round_to=FLAGS.round_to,
                        graph=graph)
    planned = time.perf_counter()
    slim = tfprune.rebuild(model, plan, graph=graph)
    rebuilt = time.perf_counter()
    logging.info("%s: %d groups, %d prunable", model.name, len(graph.groups), len(graph.prunable_groups))
    logging.info("analysis %.2f s, plan %.2f s, rebuild %.2f s",
                 analysed - start, planned - analysed, rebuilt - planned)

    tfprune.summary(model, slim)

    exact = {g.name: FLAGS.ratio for g in graph.prunable_groups if not g.spanning}
    difference = check_equivalence(model, tfprune.plan(model, exact, criterion=FLAGS.criterion, graph=graph),
                                   inputs=random_inputs(model, batch_size=1))
    print(f"rebuilt vs masked model, max relative output difference: {difference:.1e}")
    x = tf.constant(random_inputs(model, batch_size=FLAGS.batch_size))
    latencies = {}
    for name, m in (("original", model), ("slim", slim)):
        forward = tf.function(lambda inputs, m=m: m(inputs, training=False))
        forward(x)  # trace and warm up
        runs = []
        for _ in range(FLAGS.runs):
            start = time.perf_counter()
            forward(x).numpy()
            runs.append(time.perf_counter() - start)
        latencies[name] = float(np.median(runs))
        print(f"{name:>8}: {latencies[name] * 1000:8.1f} ms per batch of {FLAGS.batch_size} (TensorFlow, median of "
              f"{FLAGS.runs})")
    print(f"latency ratio slim/original: {latencies['slim'] / latencies['original']:.2f}")
    if FLAGS.plan_out:
        plan.save(FLAGS.plan_out)
        print(f"plan written to {FLAGS.plan_out}")
    if FLAGS.slim_out:
        slim.save(FLAGS.slim_out)
        print(f"slim model saved to {FLAGS.slim_out}")
    np.testing.assert_equal(slim.output_shape, model.output_shape)


if __name__ == "__main__":
    app.run(main)
