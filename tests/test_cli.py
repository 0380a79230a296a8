"""The `tfprune` console script, run for real (installed next to this Python) on real small files."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from test_attention import random_weights, transformer_block

import tfprune

EXECUTABLE = Path(sys.executable).parent / "tfprune"
ROOT = Path(__file__).resolve().parents[1]  # the script runs this checkout's tfprune, wherever it was installed from


def run(*args, cwd):
    if not EXECUTABLE.exists():
        pytest.fail(f"The tfprune console script is not installed at {EXECUTABLE}: run "
                    f"`{sys.executable} -m pip install -e .` in the repository to install it.")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    return subprocess.run([str(EXECUTABLE), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def one_error_line(done, command, *fragments):
    """The command failed with exit status 1 and exactly one line on stderr, naming the command and the fragments."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"tfprune {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@keras.saving.register_keras_serializable(package="tfprune_cli_test")
class Doubling(keras.layers.Layer):
    """A custom layer registered in this process only: the console script does not know it."""

    def call(self, x):
        return 2 * x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(16, 3, activation="relu", name="c1"),
                              keras.layers.Conv2D(16, 3, activation="relu", name="c2"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")],
                             name="tiny")
    model.save(folder / "model.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.random((12, 12, 12, 3), dtype=np.float32), y=np.arange(12) % 3)

    (folder / "text.keras").write_text("not a model\n")
    whole = (folder / "model.keras").read_bytes()
    (folder / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    with zipfile.ZipFile(folder / "other.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip, but no Keras model inside")
    inputs = keras.Input((12, 12, 3))
    keras.Model(inputs, Doubling()(keras.layers.Conv2D(4, 3)(inputs))).save(folder / "custom.keras")
    return folder, model


def test_help_is_quick_and_complete(files):
    folder, _ = files
    done = run("--help", cwd=folder)
    assert done.returncode == 0
    for command in ("summary", "prune", "rebuild", "export", "bench"):
        assert command in done.stdout
        sub = run(command, "--help", cwd=folder)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: tfprune {command}"), sub.stderr
        assert "--json" in sub.stdout
    for method in ("abc", "random", "dmcp"):
        sub = run("search", method, "--help", cwd=folder)
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: tfprune search {method}"), sub.stderr
        assert "--data" in sub.stdout and "fashion_mnist" in sub.stdout and "--latency" in sub.stdout
    usage = run("prune", "model.keras", cwd=folder)  # required options missing: argparse's usage error
    assert usage.returncode == 2 and "--ratio" in usage.stderr
    imported = subprocess.run([sys.executable, "-c", "import sys, tfprune.cli; print('tensorflow' in sys.modules)"],
                              capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"  # --help and the input checks never wait for TensorFlow


def test_summary_prune_rebuild_export_bench(files):
    folder, model = files
    done = run("summary", "model.keras", "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["params"], summary["macs"]) == (tfprune.count_params(model), tfprune.count_macs(model))
    assert [layer["path"] for layer in summary["layers"]] == ["c1", "c2", "head"]

    done = run("prune", "model.keras", "--ratio", "0.5", "--criterion", "l2", "--scope", "global",
               "--plan-out", "plan.json", "-o", "slim.keras", "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    pruned = json.loads(done.stdout)
    plan = tfprune.Plan.load(folder / "plan.json")
    expected = tfprune.rebuild(model, tfprune.plan(model, 0.5, criterion="l2", scope="global"))
    slim = keras.models.load_model(folder / "slim.keras")
    assert plan == tfprune.plan(model, 0.5, criterion="l2", scope="global")
    assert pruned["after"] == {"params": tfprune.count_params(expected), "macs": tfprune.count_macs(expected)}
    assert pruned["before"]["params"] == tfprune.count_params(model) > pruned["after"]["params"]
    for a, b in zip(slim.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    done = run("rebuild", "model.keras", "plan.json", "-o", "again.keras", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "wrote again.keras" in done.stdout and "params" in done.stdout
    for a, b in zip(keras.models.load_model(folder / "again.keras").get_weights(), slim.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    done = run("export", "slim.keras", "--format", "tflite", "--quantize", "int8", "--calibration", "data.npz",
               "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    assert exported["path"] == "slim_int8.tflite" and (folder / "slim_int8.tflite").stat().st_size == \
        exported["size_bytes"]
    assert exported["quantize"] == "int8" and 0 <= exported["accuracy"] <= 1
    data = np.load(folder / "data.npz")
    assert exported["reference_accuracy"] == pytest.approx(
        float(np.mean(slim(data["x"]).numpy().argmax(-1) == data["y"])))

    done = run("export", "slim.keras", "--format", "onnx", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote slim.onnx (onnx, ") and "reloaded in ONNX Runtime" in done.stdout
    assert (folder / "slim.onnx").stat().st_size > 0

    done = run("bench", "model.keras", "slim.keras", "slim_int8.tflite", "slim.onnx", "--batch-sizes", "1",
               "--threads", "all", "--runs", "2", "--warmup", "0", "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    bench = json.loads(done.stdout)
    assert bench["reference"] == "model.keras"
    measured = {(row["model"], row["engine"]) for row in bench["rows"]}
    assert measured == {("model.keras", "tensorflow"), ("slim.keras", "tensorflow"), ("model.keras", "tflite"),
                        ("slim.keras", "tflite"), ("slim_int8.tflite", "tflite"), ("model.keras", "onnxruntime"),
                        ("slim.keras", "onnxruntime"), ("slim.onnx", "onnxruntime")}
    assert all(row["median_ms"] > 0 and row["runs"] == 2 for row in bench["rows"])


def test_bad_files_give_one_line(files):
    folder, _ = files
    one_error_line(run("summary", "missing.keras", cwd=folder), "summary", "missing.keras", "no such file")
    one_error_line(run("summary", "text.keras", cwd=folder), "summary", "text.keras", "not a Keras model file")
    one_error_line(run("prune", "truncated.keras", "--ratio", "0.5", "-o", "out.keras", cwd=folder), "prune",
                   "truncated.keras", "not a Keras model file")
    one_error_line(run("export", "other.keras", cwd=folder), "export", "other.keras", "no config.json")
    one_error_line(run("bench", "model.keras", "data.npz", cwd=folder), "bench", "data.npz", "expected a .keras")
    one_error_line(run("bench", "model.keras", "text.tflite", cwd=folder), "bench", "text.tflite", "no such file")
    (folder / "text.onnx").write_text("not a model\n")
    one_error_line(run("bench", "model.keras", "text.onnx", cwd=folder), "bench", "text.onnx",
                   "not an ONNX model that ONNX Runtime can load")
    one_error_line(run("export", "model.keras", "--format", "onnx", "-o", "m.tflite", cwd=folder), "export",
                   "m.tflite", "the output must be a .onnx file")
    assert not (folder / "out.keras").exists()


def test_custom_objects_bad_ratio_and_bad_plan_give_one_line(files):
    folder, _ = files
    one_error_line(run("summary", "custom.keras", cwd=folder), "summary", "custom.keras",
                   "custom objects that are not registered", "tfprune_cli_test>Doubling")
    one_error_line(run("prune", "model.keras", "--ratio", "1.5", "-o", "bad.keras", cwd=folder), "prune",
                   "ratio must be a number in [0, 1)")
    (folder / "other_plan.json").write_text(json.dumps(
        {"format": "tfprune.plan/1", "groups": {"c1": {"width": 32, "keep": [0, 1]}}}))
    one_error_line(run("rebuild", "model.keras", "other_plan.json", "-o", "bad.keras", cwd=folder), "rebuild",
                   "the plan belongs to another model")
    assert not (folder / "bad.keras").exists()


def test_a_transformer_block_shows_its_heads(tmp_path):
    model = random_weights(transformer_block("self"))
    model.save(tmp_path / "block.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tokens.npz", x=rng.normal(size=(8, 6, 16)).astype("float32"))
    done = run("summary", "block.keras", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].split()[-1] == "Heads"
    assert next(line for line in lines if line.startswith("mha ")).endswith("4 heads")
    assert json.loads(run("summary", "block.keras", "--json", cwd=tmp_path).stdout)["heads"] == {"mha": "4"}

    done = run("prune", "block.keras", "--ratio", "0.5", "--criterion", "mean_activation", "--data", "tokens.npz",
               "-o", "slim.keras", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "heads: mha 4 → 2" in done.stdout.splitlines()
    assert keras.models.load_model(tmp_path / "slim.keras").get_layer("mha").num_heads == 2
    done = run("summary", "slim.keras", cwd=tmp_path)
    assert next(line for line in done.stdout.splitlines() if line.startswith("mha ")).endswith("2 heads")


def test_prune_to_a_macs_params_or_latency_budget(files, tmp_path):
    folder, model = files
    macs = tfprune.count_macs(model)
    params = tfprune.count_params(model)
    done = run("prune", "model.keras", "--macs", "0.5", "--round-to", "4", "-o", tmp_path / "m.keras", "--json",
               cwd=folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["after"]["macs"] <= 0.5 * macs
    done = run("prune", "model.keras", "--params", "0.5", "-o", tmp_path / "p.keras", "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert 0.4 * params < json.loads(done.stdout)["after"]["params"] <= 0.5 * params
    # the budgets exclude each other and --ratio
    usage = run("prune", "model.keras", "--macs", "0.5", "--params", "0.5", "-o", tmp_path / "x.keras", cwd=folder)
    assert usage.returncode == 2 and "not allowed with argument" in usage.stderr
    usage = run("prune", "model.keras", "--ratio", "0.5", "--round-to", "eight", "-o", tmp_path / "x.keras",
                cwd=folder)
    assert usage.returncode == 2 and "expected an integer >= 1 or 'auto'" in usage.stderr
    one_error_line(run("prune", "model.keras", "--macs", "1.5", "-o", tmp_path / "x.keras", cwd=folder), "prune",
                   "target must be a MACs ratio in (0, 1]")
    one_error_line(run("prune", "model.keras", "--macs", "0.001", "-o", tmp_path / "x.keras", cwd=folder), "prune",
                   "--macs 0.001 cannot be reached: the smallest plan tried keeps")


@pytest.mark.tensorflow_only
def test_prune_to_a_latency_budget_reports_the_measured_ratio(files, tmp_path, monkeypatch):
    folder, _ = files
    monkeypatch.setenv("TFPRUNE_LATENCY_CACHE", str(tmp_path / "cache"))
    done = run("prune", "model.keras", "--latency", "0.6", "--runtime", "litert", "-o", tmp_path / "l.keras",
               "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    latency = json.loads(done.stdout)["latency"]
    assert latency["runtime"] == "litert" and latency["target"] == 0.6
    assert latency["measured_ratio"] == pytest.approx(latency["slim_ms"] / latency["original_ms"])
    assert list((tmp_path / "cache").glob("*.json"))  # the tables were cached where the user said


# ---- tfprune search ------------------------------------------------------------------------------------------------

def test_search_abc_and_dmcp_meet_a_macs_or_params_budget(files, tmp_path):
    folder, model = files
    macs, params = tfprune.count_macs(model), tfprune.count_params(model)
    done = run("search", "abc", "model.keras", "--data", "data.npz", "--val-split", "0.25", "--macs", "0.5",
               "--food-sources", "2", "--cycles", "1", "--fine-tune-steps", "2", "--batch-size", "4", "--seed", "0",
               "--plan-out", tmp_path / "abc.json", "-o", tmp_path / "abc.keras", "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    search = result["search"]
    assert search["method"] == "abc" and search["cost"] == "macs" and search["target"] == 0.5
    assert (search["train_examples"], search["val_examples"]) == (9, 3)  # 12 examples, a quarter held out
    assert result["after"]["macs"] <= 0.5 * macs
    assert search["macs_ratio"] == pytest.approx(result["after"]["macs"] / macs, rel=1e-9)  # exact counts
    slim = keras.models.load_model(tmp_path / "abc.keras")
    assert tfprune.count_macs(slim) == result["after"]["macs"]
    assert tfprune.rebuild(model, tfprune.Plan.load(tmp_path / "abc.json")).count_params() == slim.count_params()
    assert set(search["val_accuracy"]) == {"original", "slim"}

    done = run("search", "dmcp", "model.keras", "--data", "data.npz", "--val-data", "data.npz", "--params", "0.6",
               "--epochs", "2", "--batch-size", "4", "--fine-tune-epochs", "1", "--seed", "0",
               "-o", tmp_path / "dmcp.keras", "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["search"]["method"] == "dmcp" and result["search"]["cost"] == "params"
    assert result["after"]["params"] <= 0.6 * params
    assert result["search"]["train_examples"] == result["search"]["val_examples"] == 12
    assert set(result["search"]["val_accuracy"]) == {"original", "slim", "fine_tuned"}


def test_search_for_a_latency_budget_uses_the_cached_tables(files, tmp_path, monkeypatch):
    """The tables are pre-filled with synthetic times (nothing measured, either backend): the search's latency ratio
    is theirs, so the budget reached the search and the cache was read."""
    from tfprune.measurement.latency_tables import LatencyModel, cache_file, synthetic_tables

    folder, _ = files
    model = keras.models.load_model(folder / "model.keras")  # as the command loads it
    tables = synthetic_tables(model, 1e-6, rest_ms=0.01)
    path = Path(cache_file(model, "litert", 1, cache_dir=tmp_path / "cache"))
    path.parent.mkdir()
    path.write_text(json.dumps(tables.to_json()))
    monkeypatch.setenv("TFPRUNE_LATENCY_CACHE", str(tmp_path / "cache"))
    done = run("search", "random", "model.keras", "--data", "data.npz", "--val-split", "0.25", "--latency", "0.5",
               "--runtime", "litert", "--evaluations", "3", "--fine-tune-steps", "1", "--batch-size", "4",
               "--seed", "0", "--plan-out", tmp_path / "plan.json", "-o", tmp_path / "slim.keras", "--json",
               cwd=folder)
    assert done.returncode == 0, done.stderr
    search = json.loads(done.stdout)["search"]
    assert search["method"] == "random" and search["cost"] == "latency"
    expected = LatencyModel(model, tables=tables, cache_dir=False).ratio(tfprune.Plan.load(tmp_path / "plan.json"))
    assert search["cost_ratio"] == pytest.approx(expected, rel=1e-9) and expected <= 0.5
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # read, not measured again


def test_search_reads_a_folder_of_images(files, tmp_path):
    folder, _ = files
    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "fox"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):  # 16x16 files: read at the model's 12x12
            keras.utils.save_img(tmp_path / "images" / label / f"{i}.png", rng.integers(0, 256, (16, 16, 3)))
    done = run("search", "random", "model.keras", "--data", tmp_path / "images", "--val-split", "0.34",
               "--rescale", "1/255", "--macs", "0.5", "--evaluations", "2", "--fine-tune-steps", "1",
               "--batch-size", "4", "-o", tmp_path / "slim.keras", "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    search = json.loads(done.stdout)["search"]
    assert (search["train_examples"], search["val_examples"]) == (6, 3)
    (tmp_path / "flat").mkdir()
    keras.utils.save_img(tmp_path / "flat" / "0.png", rng.integers(0, 256, (16, 16, 3)))
    one_error_line(run("search", "dmcp", "model.keras", "--data", tmp_path / "flat", "--macs", "0.5",
                       "-o", tmp_path / "x.keras", cwd=folder), "search",
                   "flat: --data is not a folder of images in one sub-folder per class")


def test_search_data_errors_give_one_line(files, tmp_path):
    folder, _ = files
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "unlabelled.npz", x=rng.random((6, 12, 12, 3), dtype=np.float32))
    np.savez(tmp_path / "keys.npz", images=rng.random((6, 12, 12, 3)), labels=np.zeros(6, int))
    np.savez(tmp_path / "shape.npz", x=rng.random((6, 10, 10, 3)), y=np.zeros(6, int))
    np.savez(tmp_path / "classes.npz", x=rng.random((6, 12, 12, 3)), y=np.arange(6))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")

    def search(data, *more):
        return run("search", "random", "model.keras", "--data", data, "--macs", "0.5", *more,
                   "-o", tmp_path / "x.keras", cwd=folder)

    one_error_line(search(tmp_path / "missing.npz"), "search", "missing.npz: no such file (--data)")
    one_error_line(search(tmp_path / "corrupt.npz"), "search", "--data must be an .npz file of arrays")
    one_error_line(search(tmp_path / "unlabelled.npz"), "search", "--data needs labels: an array 'y'")
    one_error_line(search(tmp_path / "keys.npz"), "search", "needs an array named 'x'", "['images', 'labels']")
    one_error_line(search(tmp_path / "shape.npz"), "search", "examples have shape (10, 10, 3)",
                   "the model takes (12, 12, 3)")
    one_error_line(search(tmp_path / "classes.npz", "--val-split", "0.5"), "search",
                   "labels range over", "the model has 3 classes")
    one_error_line(search("fashion_mnist"), "search", "fashion_mnist: --data examples have shape (28, 28, 1)")
    usage = run("search", "abc", "model.keras", "--data", "data.npz", "-o", tmp_path / "x.keras", cwd=folder)
    assert usage.returncode == 2 and "one of the arguments --macs --params --latency is required" in usage.stderr
