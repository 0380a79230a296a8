"""Accuracy at equal measured latency: widths searched under a latency budget against widths searched under a MACs
budget, on small_resnet and small_vgg on Fashion-MNIST, fine-tuned the same way, over seeds (issue 30, item 5).

    nice -n 19 python benchmarks/latency_accuracy.py          # runs what is missing, appending each finished row to
                                                              # benchmarks/results/latency_accuracy.jsonl
    python benchmarks/latency_accuracy.py --report            # rewrites latency_accuracy.{md,png} from the rows
    nice -n 19 python benchmarks/latency_accuracy.py --smoke  # the whole pipeline in minutes, in
                                                              # /tmp/tfprune_latency_accuracy_smoke/

**What is compared: width allocations.** One structure search (`--search`: ABCPruner, `tfprune.search.abc`, by
default; `random`, `tfprune.search.random_search`; or `dmcp`, `tfprune.search.dmcp`) is run twice per model,
latency target t (`--targets`) and seed, with the same settings but two budgets:
  latency   `{"latency": a, "runtime": --runtime, "threads": --threads}`: candidates priced by the per-layer latency
            tables (`tfprune.measurement.latency_tables.LatencyModel`, default grid); a starts at t. The searched
            model is measured; if its measured ratio misses t by more than `tolerance`, a is re-aimed at
            a · t / measured and the search run again, up to `match_steps` times;
  macs      `{"macs": m}`: candidates priced by MACs, with m re-aimed so that the searched model's *measured*
            latency equals that of the latency row of the same (model, t, seed): m starts at that row's MACs ratio
            and is re-aimed at m · goal / measured, up to `match_steps` times, until the two measured ratios are
            within `tolerance` of each other (or both within `tolerance` of t).
Once searches were measured on both sides of the goal, the next budget is interpolated between the closest two
instead (`next_aim`: a search's measured latency is not monotonic in its budget).
Of the tried searches, the one closest to its goal and not above goal · (1 + tolerance) is kept (the closest one
if none is). A one-ratio plan (`plan_for_latency` against `plan_for_macs`, this script's first version) was no
comparison: with `round_to=1` both are one L1 ratio for every group, so at equal measured latency they are about
the same widths; a search chooses every group's width, so the two budgets give different allocations.

**Rounding** (`--round_to`, default 8): the searched widths are rounded up to a multiple of it (ABC and random
search; DMCP's widths are on its own `width_range` steps and ignore it). Not `auto`: LiteRT's channel tile is 16
channels on an x86 CPU (AVX2 or AVX-512), too coarse for small_resnet's 16-channel layers (a group could only stay
whole or go: the first version's latency plan, rounded to the tile, could not go below 0.80 of the latency at a
target of 0.5).

**Protocol: that of `benchmarks/methods.py`**, imported from it, with its flags (`--models`, `--seeds`,
`--train_images`, `--val_size`, `--epochs`, `--finetune_epochs`, `--finetune_learning_rate`, `--batch_size`,
`--baseline_seed`, `--abc_cycles`, `--dmcp_epochs`, `--work_dir`, ...): the same validation split, the same trained
baselines (kept in the same `work_dir`, `.bench_cache/methods`, so a baseline trained for the methods benchmark is
reused, and trained there if missing), the same search settings as its `abc` and `dmcp` methods (ABC: keep ratios
on a grid of step 0.05, 5 food sources, limit 3, `abc_cycles` cycles, 30 fitness steps, fitness on
`measure_images` validation images; random search: as many evaluations as ABC's nominal 5 · (1 + 2 · abc_cycles);
the seed seeds the search), the same fine-tuning (`finetune_epochs` epochs, cosine from `finetune_learning_rate`,
the same augmentation, seed-dependent order) and test accuracy on the 10,000 test images.

Latency is measured the same way for both (`tfprune.measurement.runtime_latency.measure_ratio`: the original and
the slim model converted for `--runtime` and called in turn in one subprocess bound to `--threads` CPUs, batch 1,
medians of `--runs` calls). The latency tables are cached in `--cache_dir` (`$TFPRUNE_LATENCY_CACHE`).

A target the search cannot reach is skipped with a warning that gives the lowest reachable ratio (with
`round_to=8` and the grid's smallest ratio 0.05, small_resnet keeps at least 0.26 of its LiteRT latency here: its
16-channel layers keep 8), and the run goes on with the next target.

**Rows** (one JSON line per finished (model, target, plan, seed), so an interrupted run resumes; a macs row is run
after its seed's latency row): the search's budgets tried and their measured ratios, the kept one's measured
latency ratio and milliseconds, its MACs and params ratios, the widths, "reached" (measured within `tolerance` of
t), "matched" (macs rows: measured within `tolerance` of the latency row's), the test accuracy before and after
fine-tuning, the validation accuracy, the machine's load average when the plan was measured.
"""

import os
import statistics
import time

import matplotlib
from absl import app, flags, logging

import tfprune
from tfprune.errors import PlanError
from tfprune.measurement.runtime_latency import measure_ratio

import methods  # its flags and protocol: data split, baselines, search settings, fine-tuning recipe, seeds
import shared_setup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.FLAGS
FLAGS.set_default("out", shared_setup.results_path("latency_accuracy"))
FLAGS["out"].help = "Output prefix (.jsonl rows, _baselines.json, .md, .png)."
FLAGS["targets"].help = "Latency ratios (slim / original, measured on --runtime) to reach."
FLAGS["seeds"].help = "Seeds of the searches and the fine-tuning."
for _name in ("models", "targets", "seeds", "train_images", "val_size", "epochs", "finetune_epochs",
              "finetune_learning_rate", "batch_size", "baseline_seed", "abc_cycles", "dmcp_epochs", "work_dir", "out",
              "report"):
    flags.declare_key_flag(_name)  # shown by --help beside this script's own flags
flags.DEFINE_list("plans", ["latency", "macs"], "Budgets to compare: latency, macs (see the docstring).")
flags.DEFINE_enum("search", "abc", ["abc", "random", "dmcp"], "The structure search run under both budgets.")
flags.DEFINE_enum("runtime", "litert", ["litert", "onnxruntime"], "The runtime whose latency is planned and measured.")
flags.DEFINE_integer("threads", 1, "The runtime's CPU threads.", lower_bound=1)
flags.DEFINE_string("round_to", "8", "round_to of the searches (ABC, random): an integer, or 'auto' (LiteRT's "
                    "channel tile on this CPU: 16 on x86 (AVX2 or AVX-512); too coarse for 16-channel "
                    "layers).")
flags.DEFINE_integer("runs", 100, "Timed batch-1 calls per model in each latency measurement.", lower_bound=50)
flags.DEFINE_float("tolerance", 0.05, "Accepted relative error of a measured latency ratio.", lower_bound=0)
flags.DEFINE_integer("match_steps", 3, "Most re-aimed budgets (each a new search) per row.", lower_bound=0)
flags.DEFINE_string("cache_dir", None, "Where the latency tables are cached (default: tfprune's, "
                    "$TFPRUNE_LATENCY_CACHE).")
flags.DEFINE_bool("smoke", False, "Prove the pipeline end to end in minutes: small_resnet, 3,000 training images, "
                  "2 epochs, target 0.5, seed 0, 1 ABC cycle, 1 re-aim, output in /tmp/tfprune_latency_accuracy_smoke/ "
                  "(flags given on the command line win).")

SMOKE = {"models": ["resnet"], "train_images": 3000, "val_size": 500, "measure_images": 500, "epochs": 2,
         "rewind_epoch": 1, "finetune_epochs": 1, "targets": ["0.5"], "seeds": ["0"], "runs": 50, "abc_cycles": 1,
         "dmcp_epochs": 1, "match_steps": 1, "out": "/tmp/tfprune_latency_accuracy_smoke/latency_accuracy",
         "work_dir": "/tmp/tfprune_latency_accuracy_smoke/cache",
         "cache_dir": "/tmp/tfprune_latency_accuracy_smoke/tables"}
SEARCHES = {"abc": "ABCPruner", "random": "random search", "dmcp": "DMCP"}
LABELS = {"latency": "latency budget", "macs": "MACs budget"}
SETTINGS = ("search", "train_images", "val_size", "epochs", "batch_size", "baseline_seed", "abc_cycles",
            "dmcp_epochs", "finetune_epochs", "finetune_learning_rate", "runtime", "threads", "round_to", "runs",
            "tolerance", "match_steps")


# ---- searches ------------------------------------------------------------------------------------------------------

def budget(kind, ratio):
    """The search's target dict of `kind` at `ratio`."""
    if kind == "latency":
        return {"latency": ratio, "runtime": FLAGS.runtime, "threads": FLAGS.threads}
    return {"macs": ratio}


def search(model, data, target, seed):
    """(plan, slim model with the search's weights, evaluations) of `--search` under `target` (a budget dict)."""
    train_data, val, _ = data
    sample = (val[0][:FLAGS.measure_images], val[1][:FLAGS.measure_images])
    round_to = FLAGS.round_to if FLAGS.round_to == "auto" else int(FLAGS.round_to)
    if FLAGS.search == "abc":
        result = tfprune.search.abc(model, train_data, sample, target_macs=target, grid=methods.ABC_GRID,
                                    food_sources=5, limit=3, cycles=FLAGS.abc_cycles, fine_tune_steps=30,
                                    round_to=round_to, seed=seed, verbose=0)
    elif FLAGS.search == "random":
        result = tfprune.search.random_search(model, train_data, sample, target_macs=target, grid=methods.ABC_GRID,
                                              evaluations=5 * (1 + 2 * FLAGS.abc_cycles), fine_tune_steps=30,
                                              round_to=round_to, seed=seed, verbose=0)
    else:
        result = tfprune.search.dmcp(model, train_data, target, epochs=FLAGS.dmcp_epochs,
                                     batch_size=FLAGS.batch_size, seed=seed, verbose=0)
    return result.plan, result.slim_model(), result.evaluations


def _close(ratio, goal):
    return abs(ratio / goal - 1) <= FLAGS.tolerance


def next_aim(tried, goal):
    """The next budget: between the closest tries measured on either side of `goal`, interpolated linearly, once
    there are both (a search's measured latency is not monotonic in its MACs budget: small_vgg's ABC searches at MACs
    0.48 and 0.41 both measured 0.58, at 0.35 0.38); before that, the last budget scaled by goal / measured."""
    below = [t for t in tried if t["measured"].ratio < goal]
    above = [t for t in tried if t["measured"].ratio > goal]
    if not (below and above):
        return tried[-1]["budget"] * goal / tried[-1]["measured"].ratio
    low = max(below, key=lambda t: t["measured"].ratio)
    high = min(above, key=lambda t: (t["measured"].ratio, abs(t["budget"] - low["budget"])))  # ties: the tighter
    share = (goal - low["measured"].ratio) / (high["measured"].ratio - low["measured"].ratio)
    return low["budget"] + share * (high["budget"] - low["budget"])


def matched_search(kind, model, data, target, seed, goal, start):
    """The search under a `kind` budget re-aimed until its slim model's measured latency ratio is `goal`.

    Args:
        kind: "latency" or "macs".
        target: the row's latency target t.
        goal: the measured latency ratio to reach (t, or the latency row's measured ratio).
        start: the first budget's ratio.

    Returns:
        (plan, slim model, record of the kept search and of every one tried).
    """
    aim, tried = start, []
    cap = 0.99 if FLAGS.search == "dmcp" else 1.0  # DMCP's budget is in (0, 1)
    for _ in range(FLAGS.match_steps + 1):
        begin = time.perf_counter()
        plan, slim, evaluations = search(model, data, budget(kind, aim), seed)
        measured = measure_ratio(model, slim, FLAGS.runtime, FLAGS.threads, runs=FLAGS.runs)
        tried.append({"plan": plan, "slim": slim, "budget": aim, "measured": measured, "evaluations": evaluations,
                      "seconds": time.perf_counter() - begin, "load": shared_setup.load_average()})
        logging.info("  %s budget %.4f: measured latency ratio %.3f (goal %.3f)", kind, aim, measured.ratio, goal)
        if _close(measured.ratio, goal) or (_close(measured.ratio, target) and _close(goal, target)):
            break
        aim = min(cap, next_aim(tried, goal))
    fitting = [t for t in tried if t["measured"].ratio <= goal * (1 + FLAGS.tolerance)] or tried
    kept = min(fitting, key=lambda t: abs(t["measured"].ratio - goal))
    measured = kept["measured"]
    record = {"budget": budget(kind, kept["budget"]), "goal": goal, "latency_ratio": measured.ratio,
              "original_ms": measured.original_ms, "slim_ms": measured.slim_ms, "load": kept["load"],
              "evaluations": kept["evaluations"], "search_seconds": sum(t["seconds"] for t in tried),
              "tried": [{"budget": t["budget"], "latency_ratio": t["measured"].ratio} for t in tried]}
    return kept["plan"], kept["slim"], record


# ---- rows ----------------------------------------------------------------------------------------------------------

def _key(row):
    return row["model"], row["target"], row["plan"], row["seed"]


def _row(rows, name, target, kind, seed):
    return next((r for r in rows if _key(r) == (name, target, kind, seed)), None)


def run(rows, baselines):
    data = methods.load_data()
    path = FLAGS.out + ".jsonl"
    if FLAGS.cache_dir:
        os.environ["TFPRUNE_LATENCY_CACHE"] = FLAGS.cache_dir  # the searches' LatencyModel reads it
    for name in FLAGS.models:
        model, _, record = methods.baseline(name, data)
        # read again first: a run of another model (one per core) may have written its own since this one started
        baselines.update(shared_setup.read_json(FLAGS.out + "_baselines.json", {}), **{name: record})
        shared_setup.write_json(FLAGS.out + "_baselines.json", baselines)
        for target in map(float, FLAGS.targets):
            try:
                run_target(rows, path, data, model, record, name, target)
            except PlanError as error:  # below what the search can reach (e.g. small_resnet at 0.25 with round_to=8)
                logging.warning("%s at %s of the latency: skipped, the search cannot reach it. %s", name, target, error)


def run_target(rows, path, data, model, record, name, target):
    """The missing rows of one model and latency target, seed by seed, each appended as it finishes."""
    for seed in map(int, FLAGS.seeds):
        for kind in sorted(FLAGS.plans, key=list(LABELS).index):  # latency first: macs aims at its latency
            if _row(rows, name, target, kind, seed):
                continue
            reference = _row(rows, name, target, "latency", seed)
            if kind == "macs" and reference:
                goal, start = reference["latency_ratio"], reference["macs_ratio"]
            else:
                goal, start = target, target
            logging.info("%s at %s of the latency, seed %d: %s with a %s", name, target, seed,
                         SEARCHES[FLAGS.search], LABELS[kind])
            plan, slim, measured = matched_search(kind, model, data, target, seed, goal, start)
            row = {"model": name, "target": target, "plan": kind, "seed": seed, "search": FLAGS.search,
                   "round_to": FLAGS.round_to, **measured,
                   "reached": _close(measured["latency_ratio"], target),
                   "matched": kind == "macs" and reference is not None
                   and _close(measured["latency_ratio"], reference["latency_ratio"]),
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


def _comparable(latency_row, macs_row):
    """Whether two rows of one seed are at equal measured latency: matched, or both within tolerance of t."""
    return _close(macs_row["latency_ratio"], latency_row["latency_ratio"]) or (
        _close(latency_row["latency_ratio"], latency_row["target"])
        and _close(macs_row["latency_ratio"], macs_row["target"]))


def report(rows, baselines):
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["target"], r.get("search", "abc"), r["plan"]), []).append(r)
    settings = ", ".join(f"{k}={getattr(FLAGS, k)}" for k in SETTINGS)
    lines = [f"`python benchmarks/latency_accuracy.py` ({settings}); see the script's docstring for the protocol "
             "(that of the methods benchmark). One search per budget, model, target and seed; the MACs budget is "
             "re-aimed until the searched model's measured latency equals the latency-searched one's. Latency: "
             f"measured on {FLAGS.runtime}, batch 1, {FLAGS.threads} thread(s), slim over original, the two "
             "interleaved in one pinned subprocess. Test accuracy on the 10,000 test images after fine-tuning, "
             "mean ± standard deviation over n seeds; \"drop\" is in points against the unpruned baseline; "
             f"\"reached\": seeds whose measured latency ratio is within {FLAGS.tolerance:.0%} of the target; "
             f"\"matched\": MACs-budget seeds within {FLAGS.tolerance:.0%} of the latency-budget seed's measured "
             "latency.", ""]
    for name, b in sorted(baselines.items()):
        lines.append(f"**{shared_setup.reference_cnn_name(name)}** baseline: test accuracy {b['accuracy']:.4f}, "
                     f"{b['macs']:,} MACs, {b['params']:,} params.")
    lines += ["", "| model | latency target | search | budget | n | measured latency | reached | matched | "
              "MACs ratio | params ratio | pruned | fine-tuned | drop (points) | load |", "|---" * 14 + "|"]
    for (name, target, searched, kind), group in sorted(groups.items(),
                                                         key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2], kv[0][3])):
        accuracy = [r["accuracy"] for r in group]
        base = baselines.get(name, {}).get("accuracy")
        drop = _cell([base - a for a in accuracy], 100, 2) if base is not None else ""
        matched = f"{sum(r['matched'] for r in group)}/{len(group)}" if kind == "macs" else ""
        lines.append(f"| {shared_setup.reference_cnn_name(name)} | {target} | {SEARCHES[searched]} | {LABELS[kind]} | "
                     f"{len(group)} | {_cell([r['latency_ratio'] for r in group], digits=3)} | "
                     f"{sum(r['reached'] for r in group)}/{len(group)} | {matched} | "
                     f"{_cell([r['macs_ratio'] for r in group], digits=3)} | "
                     f"{_cell([r['params_ratio'] for r in group], digits=3)} | "
                     f"{_cell([r['pruned_accuracy'] for r in group])} | {_cell(accuracy)} | {drop} | "
                     f"{max(float(r['load'].split()[0]) for r in group):.1f} |")
    paired = []
    for (name, target, searched, kind), group in sorted(groups.items()):
        if kind != "latency":
            continue
        other = {r["seed"]: r for r in groups.get((name, target, searched, "macs"), [])}
        pairs = [(r, other[r["seed"]]) for r in group if r["seed"] in other]
        equal = [(a, b) for a, b in pairs if _comparable(a, b)]
        label = f"- {shared_setup.reference_cnn_name(name)} at {target} of the latency ({SEARCHES[searched]})"
        if equal:
            differences = [a["accuracy"] - b["accuracy"] for a, b in equal]
            higher, lower = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
            paired.append(f"{label}: {_cell(differences, 100, 2)} points; higher in {higher}, lower in {lower} of "
                          f"{len(differences)} seed(s)"
                          + (f" ({len(pairs) - len(equal)} seed(s) not at equal latency left out)"
                             if len(equal) < len(pairs) else ""))
        elif pairs:
            paired.append(f"{label}: not compared, no seed's two searched models are within {FLAGS.tolerance:.0%} "
                          "of each other's measured latency nor both within it of the target.")
    if paired:
        lines += ["", "**Paired differences**: fine-tuned test accuracy, latency budget minus MACs budget, same seed, "
                  "at equal measured latency.", ""] + paired
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
        for searched in SEARCHES:
            for kind, marker in zip(LABELS, "os", strict=True):
                points = sorted((statistics.mean(r["latency_ratio"] for r in g),
                                 statistics.mean(r["accuracy"] for r in g),
                                 statistics.stdev(r["accuracy"] for r in g) if len(g) > 1 else 0.0)
                                for k, g in groups.items() if k[0] == name and k[2] == searched and k[3] == kind)
                if points:
                    x, y, e = zip(*points, strict=True)
                    line = ax.errorbar(x, y, yerr=e, marker=marker, capsize=3,
                                       label=f"{SEARCHES[searched]}, {LABELS[kind]} (mean; faint: each seed)")
                    seeds = [r for k, g in groups.items() if k[0] == name and k[2] == searched and k[3] == kind
                             for r in g]
                    ax.scatter([r["latency_ratio"] for r in seeds], [r["accuracy"] for r in seeds], marker=marker,
                               color=line.lines[0].get_color(), alpha=0.3)
        ax.set(title=f"{shared_setup.reference_cnn_name(name)}: fine-tuned accuracy at measured latency",
               xlabel=f"measured latency ratio ({FLAGS.runtime}, batch 1, {FLAGS.threads} thread(s))",
               ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(FLAGS.out + ".png", dpi=110)


def main(_):
    shared_setup.apply_smoke(SMOKE, FLAGS.smoke)
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
