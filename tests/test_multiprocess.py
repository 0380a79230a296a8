"""Two real processes on 127.0.0.1 train data-parallel with keras.distribution on JAX and prune with every callback.

Each process runs examples/train_multiprocess.py: `fit` with DropNet, then NetworkSlimming, then GroupLasso, each
on its own half of the training data, with a shared backup_dir; the test asserts that both end with the same plans
and the same weights, bit for bit, and that measuring different data on the two processes is refused on both. It
runs twice: with each process passing its own shard of NumPy arrays (`--data=arrays`), and with every process
passing the same global `tf.data.Dataset` for Keras to shard, DropNet measuring a dataset of several batches
(`--data=dataset`). A shorter test runs `tfprune.backends.same_on_all_processes` itself on two processes: float64
values that float32 cannot hold agree when they are the same, and differ when they differ by one bit. The processes
use the JAX backend whatever backend this pytest run uses.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(arguments):
    """Run `arguments(process_id, coordinator_address)` (a command line) as processes 0 and 1 on the JAX backend;
    assert that both exit with 0 and return their output."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    address = f"127.0.0.1:{free_port()}"
    workers = [subprocess.Popen(arguments(i, address), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=400)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for i, (worker, log) in enumerate(zip(workers, logs, strict=True)):
        assert worker.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
    return logs


SAME_ON_ALL_PROCESSES = """
import sys
import keras
import numpy as np
from tfprune import backends

process_id, address = int(sys.argv[1]), sys.argv[2]
keras.distribution.initialize(job_addresses=address, num_processes=2, process_id=process_id)
# float64 values float32 cannot hold, and an int64 past 2**32, the same on both processes: accepted
backends.same_on_all_processes({"sum": np.array([0.1, 1 / 3]), "count": np.int64(2**40 + 1)}, "The sums")
try:  # a difference far below float32's resolution: refused
    backends.same_on_all_processes({"sum": np.array([0.1, 1 / 3 + process_id * 1e-15])}, "The sums")
    print("not refused")
except ValueError as e:
    print(e)
"""


def test_same_on_all_processes_compares_values_bit_for_bit():
    logs = run_two_processes(lambda i, address: [sys.executable, "-c", SAME_ON_ALL_PROCESSES, str(i), address])
    values = ["0.3333333333333333", "0.3333333333333343"]  # process 0's, process 1's
    for i, log in enumerate(logs):
        assert (f"The sums differ between the processes of this multi-process run, so they would take different "
                f"decisions: ['sum'][1] is {values[i]} on process {i} and {values[1 - i]} on process {1 - i}. "
                "Give every process the same data for it.") in log, log


@pytest.mark.parametrize("data", ["arrays", "dataset"])
def test_two_processes_end_with_identical_plans_and_weights(tmp_path, data):
    start = time.perf_counter()
    run_two_processes(lambda i, address: [
        sys.executable, str(ROOT / "examples" / "train_multiprocess.py"), f"--coordinator_address={address}",
        "--num_processes=2", f"--process_id={i}", f"--out={tmp_path / f'process{i}.npz'}",
        f"--backup_dir={tmp_path / 'backup'}", f"--data={data}", "--show_disagreement"])
    print(f"two processes, {data}: {time.perf_counter() - start:.1f} s")
    first, second = (np.load(tmp_path / f"process{i}.npz") for i in range(2))
    assert sorted(first.files) == sorted(second.files)
    for callback in ("dropnet", "slimming", "group_lasso"):
        plans = [k for k in first.files if k.startswith(f"{callback}/plan/")]
        weights = [k for k in first.files if k.startswith(f"{callback}/weight/")]
        assert len(plans) == 2 and len(weights) >= 8, (callback, first.files)
        for key in plans + weights:
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        assert any(len(first[k]) < 8 for k in plans), f"{callback} pruned nothing"
    assert not (tmp_path / "backup" / "tfprune_DropNet.npz").exists()  # removed by process 0 when fit ended
    for result in (first, second):  # measuring different data on each process is refused on both, saying why
        assert "differ between the processes" in str(result["disagreement"]), str(result["disagreement"])


HEAD_SCORES = """
import sys
import jax
import keras
import numpy as np
import tfprune
from tfprune import criteria

sys.path.insert(0, "tests")
from test_attention import random_weights, transformer_block

process_id, address = int(sys.argv[1]), sys.argv[2]
keras.distribution.initialize(job_addresses=address, num_processes=2, process_id=process_id)
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
model = random_weights(transformer_block("self"))  # the same weights on both processes
rng = np.random.default_rng(0)
data = (rng.normal(size=(8, 6, 16)).astype("float32"), rng.integers(0, 3, 8))
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
for criterion in (criteria.MeanActivation(verbose=0), criteria.Taylor(loss=loss, verbose=0)):
    plan = tfprune.plan(model, 0.5, criterion=criterion, data=data, scope="global")
    print(criterion.name, "heads", plan.keep["mha:heads"], "head_dim", plan.keep["mha:head_dim"])
try:  # each process measuring its own data: refused
    tfprune.plan(model, 0.5, criterion="mean_activation", data=data[0] + process_id)
    print("not refused")
except ValueError as e:
    print(e)
"""


def test_head_scores_under_data_parallel_agree_across_processes():
    logs = run_two_processes(lambda i, address: [sys.executable, "-c", HEAD_SCORES, str(i), address])
    plans = [[line for line in log.splitlines() if line.startswith(("mean_activation", "taylor"))] for log in logs]
    assert len(plans[0]) == 2 and plans[0] == plans[1], logs
    for log in logs:
        assert "differ between the processes" in log, log
