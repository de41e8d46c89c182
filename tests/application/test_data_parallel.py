"""`freqtr-hf evaluate` under `accelerate launch`: two CPU processes give the results and the state of one process,
an interrupted run resumes exactly in either number of processes, and a refusal stops both processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import freqtr_hf.evaluation
from freqtr_hf.cli import main
from freqtr_hf.evaluation import rounds

from conftest import held_by_another_process, write_images, write_tiny_vit

# two CPU processes on a machine without GPUs: torchrun under accelerate, its processes told to use the CPU by
# ACCELERATE_USE_CPU (below); `--main_process_port 0` takes a free port
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A tiny ViT with its processor, 7 images in each of two classes, and 50 in each for runs to interrupt."""
    write_tiny_vit(tmp_path / "model")
    write_images(tmp_path / "data", ["class 0", "class 1"], 7)
    write_images(tmp_path / "many", ["class 0", "class 1"], 50, seed=1)
    return tmp_path


def evaluate(root: Path, *extra: str, data: str = "data", batch_size: int = 2) -> list[str]:
    return ["evaluate", "--model", str(root / "model"), "--data", str(root / data), "--batch-size", str(batch_size),
            "--device", "cpu", "--methods", "freq", "tome", *extra]


def launch(argv: list[str], root: Path, **options) -> subprocess.Popen:
    """`accelerate launch ... -m freqtr_hf.cli` in two CPU processes, offline, without a user's accelerate config."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(root / "hf")}
    return subprocess.Popen([*LAUNCH, "-m", "freqtr_hf.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **options)


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def rows(path: Path) -> list[dict]:
    """The results of a run, timings aside."""
    return [{key: value for key, value in row.items() if key not in ("images_per_second", "speedup")}
            for row in json.loads(path.read_text())["results"]]


def progress(path: Path) -> dict:
    """A state file without its seconds, which differ from run to run."""
    return {key: value for key, value in json.loads(path.read_text()).items() if key != "seconds"}


def test_rounds_hold_the_batches_of_one_process():
    for start, total, batch_size in ((0, 14, 2), (4, 14, 2), (0, 7, 3), (6, 7, 3), (14, 14, 2)):
        alone = [batch for [batch] in rounds(start, total, batch_size, 1)]
        for processes in (2, 3, 5):
            shared = rounds(start, total, batch_size, processes)
            assert [batch for batches in shared for batch in batches] == alone
            assert all(len(batches) == processes for batches in shared[:-1])
        assert [index for batch in alone for index in batch] == list(range(start, total))


@pytest.mark.slow
def test_two_processes_give_the_results_and_the_state_of_one(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    alone = evaluate(tiny_checkpoint, "--state-file", str(tmp_path / "alone.json"), "--output",
                     str(tmp_path / "alone-results.json"))
    assert main(alone) == 0
    code, stdout, stderr = finished(launch(evaluate(
        tiny_checkpoint, "--state-file", str(tmp_path / "two.json"), "--output", str(tmp_path / "two-results.json")
    ), tmp_path))
    assert code == 0, stderr[-3000:]
    assert rows(tmp_path / "two-results.json") == rows(tmp_path / "alone-results.json")
    assert json.loads((tmp_path / "two-results.json").read_text())["processes"] == 2
    # the same state as one process writes (another run may resume it), and one table, printed by the main process
    assert progress(tmp_path / "two.json") == progress(tmp_path / "alone.json")
    assert stdout.count("speed-up") == 1 and stdout.count('"results"') == 1
    assert "in each of 2 processes" in stderr

    # a run of one process, interrupted after two batches, resumed in two processes
    read_batch, batches = freqtr_hf.evaluation.read_batch, []

    def interrupted_after_two_batches(*args):
        batches.append(args)
        if len(batches) == 3:
            raise KeyboardInterrupt
        return read_batch(*args)

    monkeypatch.setattr(freqtr_hf.evaluation, "read_batch", interrupted_after_two_batches)
    state = tmp_path / "resumed.json"
    assert main(evaluate(tiny_checkpoint, "--state-file", str(state))) == 130
    assert json.loads(state.read_text())["done"] == 4
    code, _, stderr = finished(launch(evaluate(
        tiny_checkpoint, "--state-file", str(state), "--output", str(tmp_path / "resumed-results.json")
    ), tmp_path))
    assert code == 0, stderr[-3000:]
    assert f"resuming from {state}: 4 of 14 images done" in stderr
    assert rows(tmp_path / "resumed-results.json") == rows(tmp_path / "alone-results.json")
    assert progress(state) == progress(tmp_path / "alone.json")


@pytest.mark.slow
def test_an_interrupted_run_of_two_processes_resumes_in_two_or_in_one(tiny_checkpoint, tmp_path):
    state = tmp_path / "state.json"
    argv = evaluate(tiny_checkpoint, "--state-file", str(state), data="many", batch_size=1)
    # Ctrl-C reaches the launcher, which passes it on to its processes: SIGINT back to its default in the launcher,
    # which a shell would otherwise start ignoring it in a background job
    launcher = launch(argv, tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not state.exists() and launcher.poll() is None:  # interrupted after its first round
        time.sleep(0.01)
    launcher.send_signal(signal.SIGINT)
    code, stdout, stderr = finished(launcher)
    done = json.loads(state.read_text())["done"]
    if code == 0:
        pytest.skip("the run finished before the interruption arrived")
    assert code == 130, stderr[-3000:]
    assert f"freqtr-hf: interrupted; run the same command again to resume from {state}" in stderr
    assert "speed-up" not in stdout and 0 < done < 100

    shutil.copy(state, tmp_path / "alone.json")
    expected = tmp_path / "expected.json"
    assert main(evaluate(tiny_checkpoint, "--output", str(expected), data="many", batch_size=1)) == 0
    code, _, stderr = finished(launch([*argv, "--output", str(tmp_path / "two.json")], tmp_path))
    assert code == 0, stderr[-3000:]
    assert f"resuming from {state}: {done} of 100 images done" in stderr
    assert rows(tmp_path / "two.json") == rows(expected)
    # the state of two processes resumed by one
    assert main(evaluate(tiny_checkpoint, "--state-file", str(tmp_path / "alone.json"), "--output",
                         str(tmp_path / "one.json"), data="many", batch_size=1)) == 0
    assert rows(tmp_path / "one.json") == rows(expected)
    assert progress(tmp_path / "alone.json") == progress(state)


@pytest.mark.slow
def test_a_refusal_met_by_one_process_stops_both(tiny_checkpoint, tmp_path):
    state = tmp_path / "state.json"
    with held_by_another_process(state):  # only the main process takes the lock; the other learns of the refusal
        code, stdout, stderr = finished(launch(evaluate(tiny_checkpoint, "--state-file", str(state)), tmp_path))
    assert code != 0 and "speed-up" not in stdout
    assert f"freqtr-hf: --state-file: {state} is in use by another run" in stderr

    # an unreadable image in the second process's batch of the first round
    broken = tiny_checkpoint / "data" / "class 0" / "2.png"
    broken.write_bytes(broken.read_bytes()[:100])
    code, stdout, stderr = finished(launch(evaluate(tiny_checkpoint, "--state-file", str(state)), tmp_path))
    assert code != 0 and "speed-up" not in stdout
    assert "2.png: not a readable image" in stderr and "--skip-bad-images" in stderr
    assert not state.exists()  # nothing saved: the first round did not finish
