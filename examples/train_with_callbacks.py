"""Prune during training on Fashion-MNIST with one of tfprune's callbacks, rebuild, fine-tune, and compare.

    python examples/train_with_callbacks.py --method=dropnet --model=vgg --target_macs=0.5
    python examples/train_with_callbacks.py --method=slimming --model=resnet --target_macs=0.25

Methods:
  dropnet         DropNet, per layer ("minimum layer"): every epoch, mask 20% of each layer's remaining channels
                  with the lowest mean post-activation, until the MACs target is met.
  dropnet_global  DropNet over all layers at once ("minimum").
  slimming        Network Slimming: L1 on BatchNorm scales while training, then one global threshold on the scales
                  chosen to meet the MACs target.
  group_lasso     SSL group lasso on filters while training, then one global threshold on the filter norms.

Reads Fashion-MNIST from the Debian package dataset-fashion-mnist (nothing is downloaded).
"""

import keras
from absl import app, flags, logging

import tfprune
from tfprune.callbacks import DropNet, GroupLasso, NetworkSlimming

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "dropnet", ["dropnet", "dropnet_global", "slimming", "group_lasso"], "Callback to use.")
flags.DEFINE_enum("model", "vgg", ["vgg", "resnet"], "tfprune.models.small_vgg or small_resnet.")
flags.DEFINE_float("target_macs", 0.5, "MACs of the slim model over the original, in (0, 1].")
flags.DEFINE_integer("train_size", 12000, "Training images (of 60,000).")
flags.DEFINE_integer("test_size", 2000, "Test images (of 10,000).")
flags.DEFINE_integer("epochs", 4, "Epochs of training with the callback.")
flags.DEFINE_integer("finetune_epochs", 2, "Epochs of fine-tuning the slim model.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate (momentum 0.9).")
flags.DEFINE_float("strength", None, "l1 of slimming / strength of group_lasso (default: 1e-4 VGG, 1e-5 ResNet "
                   "for slimming as in the paper; 1e-3 for group_lasso).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity for fit.")


def compiled(model):
    model.compile(keras.optimizers.SGD(FLAGS.learning_rate, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def make_callback(x_sample):
    resnet = FLAGS.model == "resnet"
    if FLAGS.method.startswith("dropnet"):
        scope = "global" if FLAGS.method == "dropnet_global" else "layer"
        return DropNet(x_sample, fraction=0.2, scope=scope, target={"macs": FLAGS.target_macs}, rewind=None,
                       seed=FLAGS.seed, verbose=1)
    if FLAGS.method == "slimming":
        return NetworkSlimming(l1=FLAGS.strength or (1e-5 if resnet else 1e-4), verbose=1)
    return GroupLasso(strength=FLAGS.strength or 1e-3, groups="filter", verbose=1)


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    (x, y), (x_test, y_test) = tfprune.datasets.fashion_mnist(train_size=FLAGS.train_size, test_size=FLAGS.test_size,
                                                             seed=FLAGS.seed)
    model = compiled(tfprune.models.small_vgg() if FLAGS.model == "vgg" else tfprune.models.small_resnet())
    callback = make_callback(x[:1024])
    model.fit(x, y, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, validation_data=(x_test, y_test),
              callbacks=[callback], verbose=FLAGS.verbose)
    trained_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

    if isinstance(callback, DropNet):
        plan = callback.plan()
        macs_ratio = callback.history[-1]["macs"] if callback.history else 1.0
    else:
        plan, macs_ratio = tfprune.plan_for_macs(model, FLAGS.target_macs, callback.plan, graph=callback.graph)
    logging.info("plan keeps %s", {name: len(kept) for name, kept in plan.keep.items()})
    slim = compiled(callback.slim_model(plan))
    pruned_accuracy = slim.evaluate(x_test, y_test, verbose=0)[1]
    slim.fit(x, y, epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size, verbose=FLAGS.verbose)
    tuned_accuracy = slim.evaluate(x_test, y_test, verbose=0)[1]

    rows = [("test accuracy", f"{trained_accuracy:.4f}", f"{pruned_accuracy:.4f} → {tuned_accuracy:.4f} "
             "(pruned → fine-tuned)"),
            ("params", f"{tfprune.count_params(model):,}", f"{tfprune.count_params(slim):,}"),
            ("MACs", f"{tfprune.count_macs(model):,}", f"{tfprune.count_macs(slim):,} (ratio {macs_ratio:.3f})")]
    print(f"\n{FLAGS.method} on {model.name}, Fashion-MNIST ({FLAGS.train_size} train / {FLAGS.test_size} test)")
    print("| | trained with the callback | slim |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    app.run(main)
