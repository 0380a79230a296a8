"""How closely exported files match their Keras model: LiteRT (.tflite, every quantisation) and ONNX Runtime (.onnx).

    nice -n 10 python benchmarks/export_check.py [--model=ResNet50] [--input_size=224] [--ratio=0.5] [--examples=8]
                                                 [--variants=tflite,tflite:float16,tflite:dynamic,tflite:int8,onnx]

Builds a keras.applications model (random weights: nothing downloads; logits, no softmax, so that differences are
not squashed), prunes it with `tfprune.prune` (L1, `--ratio` per layer, kept widths rounded to multiples of 16),
and exports the original and the pruned model with `tfprune.export` as float32 TFLite, float16 / dynamic-range /
int8 TFLite, and ONNX. `tfprune.export` runs each file back in its runtime (LiteRT, ONNX Runtime) on the same
`--examples` random images and returns the maximum absolute difference from the Keras model; the table gives it
with the largest |output| for scale. Each finished row is written at once to benchmarks/results/export_check.md.
"""

import os
import tempfile
import time

import keras
import numpy as np
from absl import app, flags

import tfprune

import shared_setup

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "ResNet50", "A keras.applications constructor.")
shared_setup.define_input_size(224)
flags.DEFINE_float("ratio", 0.5, "Per-layer L1 pruning ratio.")
flags.DEFINE_integer("examples", 8, "Random images the files are checked on (and int8 is calibrated on).")
flags.DEFINE_list("variants", ["tflite", "tflite:float16", "tflite:dynamic", "tflite:int8", "onnx"],
                  "format[:quantisation] of each export.")
shared_setup.define_out("export_check.md", "The markdown file written.")


def main(argv):
    del argv
    if not hasattr(keras.applications, FLAGS.model):
        raise app.UsageError(f"--model: {FLAGS.model} is not a keras.applications constructor.")
    variants = [(v.split(":")[0], v.split(":")[1] if ":" in v else None) for v in FLAGS.variants]
    size = FLAGS.input_size
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, FLAGS.model)(weights=None, input_shape=(size, size, 3),
                                                     classifier_activation=None)
    slim = tfprune.prune(model, FLAGS.ratio, round_to=16)
    data = np.random.default_rng(0).standard_normal((FLAGS.examples, size, size, 3)).astype("float32")
    load = os.getloadavg()[0]
    header = (f"{FLAGS.model} at {size}×{size}, random weights, logits; pruned = `tfprune.prune(model, "
              f"{FLAGS.ratio}, round_to=16)` (MACs ratio {tfprune.count_macs(slim) / tfprune.count_macs(model):.3f})."
              f" Each file is written by `tfprune.export` and run back in its runtime on the same {FLAGS.examples} "
              f"random N(0, 1) images (int8 also calibrated on them); max abs difference from the Keras model's "
              f"outputs, largest abs output for scale. Load average {load:.1f} at the start.\n\n"
              "| model | format | quantisation | runtime | converter | size MB | max abs difference | largest output"
              " | relative | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n")
    shared_setup.write_text(FLAGS.out, header)  # then each row as it is measured
    for name, m in (("original", model), ("pruned", slim)):
        scale = float(np.abs(m(data, training=False)).max())
        for format, quantize in variants:
            with tempfile.TemporaryDirectory() as workdir:
                start = time.perf_counter()
                result = tfprune.export(m, os.path.join(workdir, f"m.{format}"), format=format, quantize=quantize,
                                        representative_data=data)
                seconds = time.perf_counter() - start
            row = (f"| {name} | {format} | {quantize or 'float32'} | {result.runtime} | {result.converter or '—'} | "
                   f"{result.size_bytes / 1e6:.1f} | {result.max_abs_difference:.2e} | {scale:.3g} | "
                   f"{result.max_abs_difference / scale:.1e} | {seconds:.0f} |\n")
            print(row, end="", flush=True)
            with open(FLAGS.out, "a") as f:
                f.write(row)


if __name__ == "__main__":
    app.run(main)
