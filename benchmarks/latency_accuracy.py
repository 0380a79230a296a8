"""Accuracy at equal measured latency: widths planned for a latency budget against widths planned for a MACs
budget, on small_resnet and small_vgg on Fashion-MNIST, fine-tuned the same way, over seeds (issue 30, item 5).

    nice -n 19 python benchmarks/latency_accuracy.py          # runs what is missing, appending each finished row to
                                                              # benchmarks/results/latency_accuracy.jsonl
    python benchmarks/latency_accuracy.py --report            # rewrites latency_accuracy.{md,png} from the rows
    nice -n 19 python benchmarks/latency_accuracy.py --smoke  # the whole pipeline in minutes, in
                                                              # /tmp/tfprune_latency_accuracy_smoke/

**Protocol: that of `benchmarks/methods.py`**, imported from it, with its flags (`--models`, `--seeds`,
`--train_images`, `--val_size`, `--epochs`, `--finetune_epochs`, `--finetune_learning_rate`, `--batch_size`,
`--baseline_seed`, `--work_dir`, ...): the same validation split, the same trained baselines (kept in the same
`work_dir`, `.bench_cache/methods`, so a baseline trained for the methods benchmark is reused, and trained there if
missing), the same fine-tuning (`finetune_epochs` epochs, cosine from `finetune_learning_rate`, the same
augmentation, seed-dependent order) and test accuracy on the 10,000 test images.

**Plans**, for each model and latency target t (`--targets`, latency ratios), L1 channels, weights inherited; they do
not depend on the seed, so each is planned and measured once and kept in `work_dir`:
  latency   `tfprune.plan_for_latency(model, t, runtime, threads, round_to=--round_to)`: one L1 ratio for every group
            (widths rounded to the runtime's channel tile on this CPU with the default `auto`), bisected on the
            latency tables, then measured against the original and re-aimed if it misses t by more than 5%;
  macs      the methods benchmark's L1 widths (`methods.matched_ratios`: one ratio bisected by `tfprune.plan_for_macs`,
            then channels given back, one at a time, while the MACs stay within the target) at the MACs ratio m whose
            measured latency is t: m starts at t and is re-aimed at m · t / measured, up to `match_steps` times,
            until the measured ratio is within `tolerance` of t; the closest plan not above t · (1 + tolerance) is
            kept.
With `--round_to=auto` on an x86 CPU with AVX2 (a tile of 16 channels), small_resnet's widths (16, 32, 64) leave
little to prune: the smoke run's latency plan could not go below 0.80 of the latency (predicted) at a target of
0.5, and its row says it did not reach the target; `--round_to=8` or `1` gives the latency plan room. With
`--round_to=1`, both plans are one L1 ratio for every group, so at equal measured latency they are about the same
widths: the comparison then checks the protocol, not the planner.
Both are measured the same way (`tfprune.measurement.runtime_latency.measure_ratio`: the original and the slim
model converted for `--runtime` and called in turn in one subprocess bound to `--threads` CPUs, batch 1, medians of
`--runs` calls), so the rows compare accuracy at the same measured latency.

**Rows** (one JSON line per finished (model, target, plan, seed), so an interrupted run resumes): the measured
latency ratio and milliseconds, the MACs and params ratios, the widths, the test accuracy before and after
fine-tuning, the validation accuracy, the machine's load average when the plan was measured.
"""

import os
import statistics
import time

import matplotlib
from absl import app, flags, logging

import tfprune
from tfprune.measurement.runtime_latency import measure_ratio

import methods  # its flags and protocol: data split, baselines, fine-tuning recipe, seeds
import shared_setup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.FLAGS
FLAGS.set_default("out", shared_setup.results_path("latency_accuracy"))
FLAGS["out"].help = "Output prefix (.jsonl rows, _baselines.json, .md, .png)."
FLAGS["targets"].help = "Latency ratios (slim / original, measured on --runtime) to reach."
FLAGS["seeds"].help = "Seeds of the fine-tuning."
for _name in ("models", "targets", "seeds", "train_images", "val_size", "epochs", "finetune_epochs",
              "finetune_learning_rate", "batch_size", "baseline_seed", "work_dir", "out", "report"):
    flags.declare_key_flag(_name)  # shown by --help beside this script's own flags
flags.DEFINE_list("plans", ["latency", "macs"], "Plans to compare: latency, macs (see the docstring).")
flags.DEFINE_enum("runtime", "litert", ["litert", "onnxruntime"], "The runtime whose latency is planned and measured.")
flags.DEFINE_integer("threads", 1, "The runtime's CPU threads.", lower_bound=1)
flags.DEFINE_string("round_to", "auto", "round_to of the latency plan: 'auto' (the runtime's channel tile on this "
                    "CPU) or an integer.")
flags.DEFINE_integer("runs", 100, "Timed batch-1 calls per model in each latency measurement.", lower_bound=50)
flags.DEFINE_float("tolerance", 0.05, "Accepted relative error of a plan's measured latency ratio.", lower_bound=0)
flags.DEFINE_integer("match_steps", 4, "Most re-aimed MACs targets of the macs plan.", lower_bound=0)
flags.DEFINE_list("grid", ["0.25", "0.5", "0.75", "1.0"], "Grid of the latency tables (fractions of each width).")
flags.DEFINE_string("cache_dir", None, "Where the latency tables are cached (default: tfprune's).")
flags.DEFINE_bool("smoke", False, "Prove the pipeline end to end in minutes: small_resnet, 3,000 training images, "
                  "2 epochs, target 0.5, seed 0, a coarse latency grid, output in /tmp/tfprune_latency_accuracy_smoke/ "
                  "(flags given on the command line win).")

SMOKE = {"models": ["resnet"], "train_images": 3000, "val_size": 500, "measure_images": 500, "epochs": 2,
         "rewind_epoch": 1, "finetune_epochs": 1, "targets": ["0.5"], "seeds": ["0"], "runs": 50,
         "grid": ["0.5", "1.0"], "out": "/tmp/tfprune_latency_accuracy_smoke/latency_accuracy",
         "work_dir": "/tmp/tfprune_latency_accuracy_smoke/cache",
         "cache_dir": "/tmp/tfprune_latency_accuracy_smoke/tables"}
LABELS = {"latency": "latency-planned (plan_for_latency)", "macs": "MACs-planned (plan_for_macs)"}
SETTINGS = ("train_images", "val_size", "epochs", "batch_size", "baseline_seed", "finetune_epochs",
            "finetune_learning_rate", "runtime", "threads", "round_to", "runs", "tolerance", "grid")


# ---- plans ---------------------------------------------------------------------------------------------------------

def latency_plan(model, target):
    """`plan_for_latency`'s plan and what it measured."""
    round_to = FLAGS.round_to if FLAGS.round_to == "auto" else int(FLAGS.round_to)
    start = time.perf_counter()
    plan, fit = tfprune.plan_for_latency(model, target, runtime=FLAGS.runtime, threads=FLAGS.threads,
                                         round_to=round_to, runs=FLAGS.runs, tolerance=FLAGS.tolerance,
                                         cache_dir=FLAGS.cache_dir, grid=tuple(float(g) for g in FLAGS.grid),
                                         progress=lambda message: logging.info("  %s", message))
    return plan, {"latency_ratio": fit.measured_ratio, "original_ms": fit.original_ms, "slim_ms": fit.slim_ms,
                  "predicted_ratio": fit.predicted_ratio, "corrections": fit.corrections,
                  "tables_build_seconds": fit.model.tables.build_seconds, "tables_from_cache": fit.model.cache_hit,
                  "plan_seconds": time.perf_counter() - start}


def macs_plan(model, target):
    """The methods benchmark's L1 widths at the MACs ratio whose measured latency ratio is `target`."""
    start, aim, tried = time.perf_counter(), target, []
    for _ in range(FLAGS.match_steps + 1):
        plan = tfprune.plan(model, methods.matched_ratios(model, aim))
        measured = measure_ratio(model, tfprune.rebuild(model, plan), FLAGS.runtime, FLAGS.threads, runs=FLAGS.runs)
        tried.append((plan, aim, measured))
        logging.info("  MACs target %.4f: measured latency ratio %.3f", aim, measured.ratio)
        if abs(measured.ratio / target - 1) <= FLAGS.tolerance:
            break
        aim = min(1.0, aim * target / measured.ratio)
    fitting = [t for t in tried if t[2].ratio <= target * (1 + FLAGS.tolerance)] or tried
    plan, aim, measured = min(fitting, key=lambda t: abs(t[2].ratio - target))
    return plan, {"latency_ratio": measured.ratio, "original_ms": measured.original_ms, "slim_ms": measured.slim_ms,
                  "macs_target": aim, "corrections": len(tried) - 1, "plan_seconds": time.perf_counter() - start}


def planned(name, model, target, kind):
    """(plan, its record) of `kind` for `model` at `target`, planned and measured once and kept in work_dir."""
    path = os.path.join(FLAGS.work_dir, f"latency_accuracy_{name}_{FLAGS.train_images}_{FLAGS.epochs}_"
                        f"{FLAGS.baseline_seed}_{kind}_{target}_{FLAGS.runtime}_{FLAGS.threads}.json")
    if not os.path.exists(path):
        logging.info("%s at %s of the latency: %s plan", name, target, kind)
        plan, record = (latency_plan if kind == "latency" else macs_plan)(model, target)
        shared_setup.write_json(path, dict(record, plan=plan.to_json(), load=shared_setup.load_average()))
    record = shared_setup.read_json(path)
    return tfprune.Plan.from_json(record.pop("plan")), record


# ---- rows ----------------------------------------------------------------------------------------------------------

def _key(row):
    return row["model"], row["target"], row["plan"], row["seed"]


def run(rows, baselines):
    data = methods.load_data()
    path = FLAGS.out + ".jsonl"
    for name in FLAGS.models:
        model, _, record = methods.baseline(name, data)
        baselines[name] = record
        shared_setup.write_json(FLAGS.out + "_baselines.json", baselines)
        for target in map(float, FLAGS.targets):
            for kind in FLAGS.plans:
                plan, measured = planned(name, model, target, kind)
                for seed in map(int, FLAGS.seeds):
                    if (name, target, kind, seed) in {_key(r) for r in rows}:
                        continue
                    slim = tfprune.rebuild(model, plan)
                    row = {"model": name, "target": target, "plan": kind, "seed": seed, **measured,
                           "macs_ratio": tfprune.count_macs(slim) / record["macs"],
                           "params_ratio": tfprune.count_params(slim) / record["params"],
                           "widths": {g: len(kept) for g, kept in plan.keep.items()},
                           "pruned_accuracy": shared_setup.accuracy(slim, data[2])}
                    start = time.perf_counter()
                    methods.train(slim, data[0], FLAGS.finetune_epochs, FLAGS.finetune_learning_rate, seed)
                    row.update(accuracy=shared_setup.accuracy(slim, data[2]),
                               val_accuracy=shared_setup.accuracy(slim, data[1]),
                               train_seconds=time.perf_counter() - start)
                    shared_setup.append_row(rows, row, path)
                    logging.info("%s %s %s seed %d: latency %.3f, MACs %.3f, accuracy %.4f", name, target, kind, seed,
                                 row["latency_ratio"], row["macs_ratio"], row["accuracy"])


# ---- report --------------------------------------------------------------------------------------------------------

def _cell(values, scale=1.0, digits=4):
    mean = statistics.mean(values)
    spread = f" ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{scale * mean:.{digits}f}{spread}"


def _reached(row):
    """Whether the row's measured latency ratio is within `tolerance` of its target."""
    return abs(row["latency_ratio"] / row["target"] - 1) <= FLAGS.tolerance


def report(rows, baselines):
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["target"], r["plan"]), []).append(r)
    settings = ", ".join(f"{k}={getattr(FLAGS, k)}" for k in SETTINGS)
    lines = ["# Accuracy at equal measured latency: latency-planned against MACs-planned widths", "",
             f"`python benchmarks/latency_accuracy.py` ({settings}); see the script's docstring for the protocol "
             "(that of the methods benchmark). Latency: measured on "
             f"{FLAGS.runtime}, batch 1, {FLAGS.threads} thread(s), slim over original, the two interleaved in one "
             "pinned subprocess. Test accuracy on the 10,000 test images after fine-tuning, mean ± standard "
             "deviation over n seeds; \"drop\" is in points against the unpruned baseline; \"reached\": the "
             f"measured latency ratio is within {FLAGS.tolerance:.0%} of the target (only then are two plans at "
             "equal latency). The plans do not depend on the seed: their figures are those of their one "
             "measurement.", ""]
    for name, b in sorted(baselines.items()):
        lines.append(f"**{shared_setup.reference_cnn_name(name)}** baseline: test accuracy {b['accuracy']:.4f}, "
                     f"{b['macs']:,} MACs, {b['params']:,} params.")
    lines += ["", "| model | latency target | plan | n | measured latency | reached | MACs ratio | params ratio | "
              "pruned | fine-tuned | drop (points) | load |", "|---" * 12 + "|"]
    for (name, target, kind), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        accuracy = [r["accuracy"] for r in group]
        base = baselines.get(name, {}).get("accuracy")
        drop = _cell([base - a for a in accuracy], 100, 2) if base is not None else ""
        lines.append(f"| {shared_setup.reference_cnn_name(name)} | {target} | {LABELS[kind]} | {len(group)} | "
                     f"{group[0]['latency_ratio']:.3f} | {'yes' if _reached(group[0]) else '**no**'} | "
                     f"{group[0]['macs_ratio']:.3f} | "
                     f"{group[0]['params_ratio']:.3f} | {group[0]['pruned_accuracy']:.4f} | {_cell(accuracy)} | "
                     f"{drop} | {group[0]['load'].split()[0]} |")
    paired = []
    for (name, target, kind), group in sorted(groups.items()):
        other = {r["seed"]: r["accuracy"] for r in groups.get((name, target, "macs"), [])}
        differences = [r["accuracy"] - other[r["seed"]] for r in group if kind == "latency" and r["seed"] in other]
        if differences and not (_reached(group[0]) and _reached(groups[(name, target, "macs")][0])):
            paired.append(f"- {shared_setup.reference_cnn_name(name)} at {target} of the latency: not compared, a "
                          f"plan missed the target by more than {FLAGS.tolerance:.0%} (\"reached\": no).")
        elif differences:
            paired.append(f"- {shared_setup.reference_cnn_name(name)} at {target} of the latency: latency-planned "
                          f"minus MACs-planned, same seeds: {_cell(differences, 100, 2)} points "
                          f"(n={len(differences)}).")
    if paired:
        lines += ["", "## Paired differences", ""] + paired
    shared_setup.write_text(FLAGS.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(groups, baselines)


def plot(groups, baselines):
    names = sorted({k[0] for k in groups})
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names, strict=True):
        if name in baselines:
            ax.axhline(baselines[name]["accuracy"], color="black", linestyle="--", label="unpruned")
        for kind, marker in zip(LABELS, "os", strict=True):
            points = sorted((g[0]["latency_ratio"], statistics.mean(r["accuracy"] for r in g),
                             statistics.stdev(r["accuracy"] for r in g) if len(g) > 1 else 0.0)
                            for k, g in groups.items() if k[0] == name and k[2] == kind)
            if points:
                x, y, e = zip(*points, strict=True)
                ax.errorbar(x, y, yerr=e, marker=marker, capsize=3, label=LABELS[kind])
        ax.set(title=f"{shared_setup.reference_cnn_name(name)}: fine-tuned accuracy at measured latency",
               xlabel=f"measured latency ratio ({FLAGS.runtime}, batch 1, {FLAGS.threads} thread(s))",
               ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(FLAGS.out + ".png", dpi=110)


def main(_):
    if FLAGS.smoke:
        for name, value in SMOKE.items():
            if not FLAGS[name].present:
                FLAGS[name].value = value
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    rows = shared_setup.read_rows([FLAGS.out + ".jsonl"], _key)
    baselines = shared_setup.read_json(FLAGS.out + "_baselines.json", {})
    if not FLAGS.report:
        start = time.perf_counter()
        run(rows, baselines)
        if FLAGS.smoke:  # a second pass finds every row done: the run resumes
            count = len(rows)
            run(rows, baselines)
            assert len(rows) == count, "the second pass re-ran rows that were written"
        logging.info("finished in %.0f s (load average %s)", time.perf_counter() - start, shared_setup.load_average())
    report(rows, baselines)


if __name__ == "__main__":
    flags.register_validator("plans", lambda values: set(values) <= set(LABELS),
                             message=f"--plans takes {', '.join(LABELS)}.")
    flags.register_validator("round_to", lambda value: value == "auto" or value.isdigit() and int(value) >= 1,
                             message="--round_to takes 'auto' or an integer >= 1.")
    app.run(main)
