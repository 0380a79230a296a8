"""The README's zoo table: every keras.applications CNN, the offline keras-hub/keras-cv backbones and task models,
and three subclassed user models: traced where needed, analysed, planned at 30% per layer (L1), rebuilt, checked
for equivalence and saved/reloaded.

    python benchmarks/zoo_table.py [--only=ResNet50,keras_hub VGG]

Writes benchmarks/results/zoo.md. The same checks, as assertions, are tests/test_zoo.py.
"""

import os
import sys
import tempfile
import time

import keras
import numpy as np
from absl import app, flags

import shared_setup

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tfprune  # noqa: E402
from tests.user_models import USER_MODELS  # noqa: E402
from tests.zoo import (  # noqa: E402
    APPLICATIONS,
    BACKBONES,
    RELOAD_FAILS,
    application,
    randomize_channel_parameters,
)
from tfprune.deployment.verification import check_equivalence, random_inputs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("only", None, "Restrict to these model names.")
shared_setup.define_out("zoo.md", "Markdown output.")


def row(name, model):
    randomize_channel_parameters(model)
    start = time.perf_counter()
    graph = tfprune.ChannelGraph(model)  # traces custom layers and subclassed models
    plan = tfprune.plan(model, 0.3, graph=graph)
    slim = tfprune.rebuild(model, plan, graph=graph)
    seconds = time.perf_counter() - start
    traced = graph.model
    x = random_inputs(traced)
    exact = tfprune.plan(model, {g.name: 0.3 for g in graph.prunable_groups if not g.spanning}, graph=graph)
    difference = check_equivalence(traced, exact, inputs=x)
    with tempfile.TemporaryDirectory() as tmp:
        slim.save(os.path.join(tmp, "slim.keras"))
        if name in RELOAD_FAILS:
            reload = "Keras cannot reload it as a plain Functional model (pruned or not)"
        else:
            loaded = keras.models.load_model(os.path.join(tmp, "slim.keras"))
            same = all(np.allclose(a, b, atol=1e-6) for a, b in zip(
                keras.tree.flatten(slim.predict(x, verbose=0)), keras.tree.flatten(loaded.predict(x, verbose=0)),
                strict=True))
            reload = "ok" if same else "DIFFERS"
    macs, slim_macs = tfprune.count_macs(traced), tfprune.count_macs(slim)
    spanning = sum(1 for g in graph.prunable_groups if g.spanning)
    stopped = sorted({why.split(",")[0].split(":")[0] for g in graph.groups for why in g.reasons
                      if "passes through" in why})
    notes = [f"{spanning} groups through LayerNorm/GroupNorm"] if spanning else []
    if graph.model is not model:
        opened = len(list(_submodel_paths(traced))) - len(list(_submodel_paths(model)))
        subclassed = "subclassed model traced, " if not hasattr(model, "_nodes_by_depth") else ""
        notes.append(f"{subclassed}{opened} custom layers opened")
    if graph.closed:
        notes.append(f"{len(graph.closed)} left closed, e.g. '{next(iter(graph.closed))}': "
                     f"{next(iter(graph.closed.values()))[:90]}")
    if not graph.prunable_groups:
        notes.append("nothing prunable: " + "; ".join(stopped[:2]) + (" ..." if len(stopped) > 2 else ""))
    note = "; ".join(notes)
    shape = "×".join(str(d) for d in traced.inputs[0].shape[1:3])
    return (f"| {name} | {shape} | {len(graph.prunable_groups)}/{len(graph.groups)} | "
            f"{macs / 1e6:.1f}M → {slim_macs / 1e6:.1f}M ({slim_macs / macs:.2f}) | {seconds:.2f} | "
            f"{difference:.0e} | {reload} | {note} |")


def _submodel_paths(model, prefix=""):
    """Paths of the nested graph models (opened custom layers are nested Functional models)."""
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "_nodes_by_depth"):
            yield prefix + layer.name
            yield from _submodel_paths(layer, prefix + layer.name + "/")


def main(argv):
    del argv
    models = ([(n, lambda n=n: application(n)) for n in APPLICATIONS] + sorted(BACKBONES.items())
              + sorted(USER_MODELS.items()))
    if FLAGS.only:
        models = [(n, f) for n, f in models if n in FLAGS.only]
    lines = ["| model | input | prunable groups / all | MACs before → after (ratio) | analyse+plan+rebuild s | "
             "max rel. difference rebuilt vs masked | .keras reload | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for name, build in models:
        try:
            line = row(name, build())
        except Exception as e:  # noqa: BLE001 - the table must list every model, failures with their reason
            line = f"| {name} | | | | | | | FAILED: {type(e).__name__}: {str(e)[:200]} |"
        print(line, flush=True)
        lines.append(line)
        keras.backend.clear_session()
    settings = (f"30% of the channels of every prunable group removed (L1), {os.cpu_count()} CPU cores, random "
                "weights, smallest valid input.")
    shared_setup.write_text(FLAGS.out, settings + "\n\n" + "\n".join(lines) + "\n")
    print(f"written {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
