"""`freqtr-hf evaluate` and the evaluation it runs: results, resume, and every way a run could be silently wrong."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification, ViTImageProcessorPil

import freqtr_hf.evaluation
import freqtr_hf.cli
from freqtr_hf import FreqViTForImageClassification, count_macs
from freqtr_hf.commands import one_line_errors
from freqtr_hf.models.freqvit.configuration_freqvit import TRAINING_FREE_FREQ
from freqtr_hf.evaluation import build_models, compare_methods
from freqtr_hf.data import label_mapping, label_names, load_images
from freqtr_hf.images import ImageReadError, read_image
from freqtr_hf.cli import main

from conftest import SYNSETS, held_by_another_process, write_images, write_tiny_vit


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A tiny ViT with its processor, and a folder of two classes with 6 images each."""
    write_tiny_vit(tmp_path / "model")
    write_images(tmp_path / "data", ["class 0", "class 1"], 6)
    return tmp_path


def error_lines(stderr: str) -> list[str]:
    """The error lines of a command's stderr (progress bars and the 'running on' line aside)."""
    return [line for line in stderr.splitlines() if line.startswith("freqtr-hf: ")]


def evaluate(root: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(root / "model"), "--data", str(root / "data"), "--batch-size", "4",
            "--device", "cpu", "--methods", "freq", *extra]


def test_evaluate_prints_a_table_and_json(deit_tiny, imagenette_val, tmp_path, capsys):
    output = tmp_path / "results.json"
    argv = ["evaluate", "--model", str(deit_tiny), "--data", str(imagenette_val), "--every", "200",
            "--synsets", str(SYNSETS), "--methods", "freq", "--batch-size", "8", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "method" in printed.splitlines()[0] and "speed-up" in printed.splitlines()[0]
    results = {row["method"]: row for row in json.loads(output.read_text())["results"]}
    assert set(results) == {"none", "freq"}
    assert results["none"]["agreement"] == 1.0 and results["none"]["speedup"] == 1.0
    assert results["none"]["top1"] >= 0.5  # 20 real images of 10 ImageNet classes, mapped through the wnids
    assert results["freq"]["gmacs"] == pytest.approx(0.814, abs=0.001)
    assert results["none"]["gmacs"] == pytest.approx(1.254, abs=0.001)


def test_evaluate_runs_the_training_free_preset_and_records_it(tiny_checkpoint, tmp_path, capsys):
    output = tmp_path / "preset.json"
    assert main(evaluate(tiny_checkpoint, "--preset", "training_free", "--output", str(output))) == 0
    run = json.loads(output.read_text())
    assert {key: run["reduction"][key] for key in TRAINING_FREE_FREQ} == TRAINING_FREE_FREQ
    with pytest.raises(SystemExit):
        main(evaluate(tiny_checkpoint, "--preset", "fastest"))
    assert "--preset: invalid choice: 'fastest'" in capsys.readouterr().err
    for command in (evaluate(tiny_checkpoint, "--preset", "training_free", "--methods", "topk"),
                    ["export", "--model", "m", "--output", "o", "--method", "topk", "--preset", "training_free"]):
        with pytest.raises(SystemExit):
            main(command)
        assert "--preset training_free sets options of freq, which is not among the methods (topk)" in (
            capsys.readouterr().err)


def test_models_are_warmed_up_then_timed_in_a_rotating_order(tiny_checkpoint):
    dataset = load_images(str(tiny_checkpoint / "data"))  # 12 images: 3 batches of 4
    processor = AutoImageProcessor.from_pretrained(tiny_checkpoint / "model")
    models = build_models(str(tiny_checkpoint / "model"), ["freq", "topk"], 0.7)
    calls = []
    for name, model in models.items():
        model.register_forward_pre_hook(lambda module, args, name=name: calls.append(name))
    results, _ = compare_methods(models, dataset, processor, [-1, -1], batch_size=4)
    warm_up, rotations = ["none", "freq", "topk"], ["none", "freq", "topk", "freq", "topk", "none", "topk", "none", "freq"]
    assert calls == warm_up + rotations
    assert [r.images for r in results] == [12, 12, 12] and results[0].agreement == 1.0


def test_a_local_folder_loads_without_download_bars(tmp_path, capfd):
    import datasets

    write_images(tmp_path / "data", ["a", "b"], 3)
    assert len(load_images(str(tmp_path / "data"))) == 6
    err = capfd.readouterr().err
    assert "Generating eval split" not in err and "Downloading data" not in err
    assert not datasets.utils.are_progress_bars_disabled()  # the caller's setting is left as it was


def test_a_saved_dataset_dict_is_read_by_split(tmp_path):
    write_images(tmp_path / "images", ["a", "b"], 2)
    split = load_images(str(tmp_path / "images")).train_test_split(test_size=2, seed=0)
    split.save_to_disk(str(tmp_path / "saved"))
    assert len(load_images(str(tmp_path / "saved"), split="test")) == 2
    with pytest.raises(ValueError, match=r"has no split 'validation' \(its splits: train, test\)"):
        load_images(str(tmp_path / "saved"))


def test_an_interrupted_evaluation_resumes(deit_tiny, imagenette_val, tmp_path):
    dataset = load_images(str(imagenette_val), every=400)
    processor = AutoImageProcessor.from_pretrained(deit_tiny)
    models = build_models(str(deit_tiny), ["freq"], 0.7, dtype=torch.float32)
    labels = label_mapping(dataset.features["label"].names, models["none"].config.id2label, str(SYNSETS))
    state = tmp_path / "state.json"
    fingerprint = {"run": "the same"}
    # the "interruption": a first run that only got through the first 4 images
    first = compare_methods(models, dataset, processor, labels, batch_size=2, state_file=str(state), fingerprint=fingerprint)
    saved = json.loads(state.read_text())
    saved.update(done=4, labels=saved["labels"][:4], predictions={m: p[:4] for m, p in saved["predictions"].items()})
    state.write_text(json.dumps(saved))
    resumed, _ = compare_methods(models, dataset, processor, labels, batch_size=2, state_file=str(state), fingerprint=fingerprint)
    fresh, _ = compare_methods(models, dataset, processor, labels, batch_size=2)
    assert json.loads(state.read_text())["done"] == len(dataset)
    assert [(r.top1, r.agreement) for r in resumed] == [(r.top1, r.agreement) for r in fresh] == [
        (r.top1, r.agreement) for r in first[0]
    ]


def test_a_finished_run_reprints_its_results_and_another_run_is_refused(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    state = str(tmp_path / "state.json")
    assert main(evaluate(tiny_checkpoint, "--state-file", state, "--output", str(tmp_path / "a.json"))) == 0
    capsys.readouterr()
    monkeypatch.chdir(tiny_checkpoint)  # the same run, its paths spelled relative to another folder
    assert main(evaluate(Path("."), "--state-file", state, "--output", str(tmp_path / "b.json"))) == 0
    assert "holds this run, finished" in capsys.readouterr().err
    first, again = (json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in "ab")
    assert [(r["top1"], r["agreement"]) for r in first] == [(r["top1"], r["agreement"]) for r in again]
    # another keep rate, every, methods, data: refused, naming the field
    for extra, field in (
        (["--keep-rate", "0.5"], "keep_rate"),
        (["--every", "2"], "every"),
        (["--methods", "topk"], "methods"),
    ):
        assert main(evaluate(tiny_checkpoint, "--state-file", state, *extra)) == 2
        assert field in capsys.readouterr().err
    (tiny_checkpoint / "data" / "class 1" / "5.png").unlink()
    assert main(evaluate(tiny_checkpoint, "--state-file", state)) == 2  # the data changed
    assert "data_files differs" in capsys.readouterr().err
    assert main(evaluate(tiny_checkpoint, "--state-file", state, "--restart")) == 0


def test_a_state_file_that_is_not_json_is_refused_and_kept(tiny_checkpoint, tmp_path, capsys):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    for restart in ([], ["--restart"]):  # not recognisably the project's: not even --restart replaces it
        assert main(evaluate(tiny_checkpoint, "--state-file", str(state), *restart)) == 2
        error = error_lines(capsys.readouterr().err)
        assert len(error) == 1 and f"{state} exists and was not written by freqtr-hf" in error[0]
    assert state.read_text() == "{not json"


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: json.dumps({**s, "done": 10**6}),
        lambda s: json.dumps({**s, "done": 8}),  # out of step with the saved predictions
        lambda s: json.dumps({k: v for k, v in s.items() if k != "labels"}),
        lambda s: json.dumps({**s, "seconds": {m: float("inf") for m in s["seconds"]}}),
    ],
)
def test_a_damaged_state_is_refused_naming_the_file(tiny_checkpoint, tmp_path, capsys, damage):
    state = tmp_path / "state.json"
    assert main(evaluate(tiny_checkpoint, "--state-file", str(state))) == 0
    state.write_text(damage(json.loads(state.read_text())))
    capsys.readouterr()
    assert main(evaluate(tiny_checkpoint, "--state-file", str(state))) == 2
    error = error_lines(capsys.readouterr().err)
    assert len(error) == 1 and str(state) in error[0] and "--restart" in error[0]


def test_a_second_run_on_a_state_file_in_use_is_refused_and_the_first_finishes(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    state, output = tmp_path / "state.json", tmp_path / "first.json"
    expected = tmp_path / "expected.json"
    assert main(evaluate(tiny_checkpoint, "--output", str(expected))) == 0
    second = []
    read_batch = freqtr_hf.evaluation.read_batch

    def read_and_start_a_second_run(*args):  # the second run starts while the first is at its first batch
        if not second:
            second.append(main(evaluate(tiny_checkpoint, "--state-file", str(state))))
        return read_batch(*args)

    monkeypatch.setattr(freqtr_hf.evaluation, "read_batch", read_and_start_a_second_run)
    capsys.readouterr()
    assert main(evaluate(tiny_checkpoint, "--state-file", str(state), "--output", str(output))) == 0
    assert second == [2]
    error = error_lines(capsys.readouterr().err)
    assert len(error) == 1 and "--state-file" in error[0] and str(state) in error[0] and "in use" in error[0]
    rows = lambda path: [{k: v for k, v in row.items() if k not in ("images_per_second", "speedup")}
                         for row in json.loads(path.read_text())["results"]]
    assert rows(output) == rows(expected)  # the first run's progress was not touched
    # held by another process, then that process killed: refused, then free again
    with held_by_another_process(state):
        assert main(evaluate(tiny_checkpoint, "--state-file", str(state))) == 2
        assert "in use by another run" in error_lines(capsys.readouterr().err)[0]
    assert main(evaluate(tiny_checkpoint, "--state-file", str(state))) == 0


def test_unreadable_images_are_named_or_skipped(tiny_checkpoint, tmp_path, capsys):
    broken = tiny_checkpoint / "data" / "class 0" / "broken.png"
    data = (tiny_checkpoint / "data" / "class 0" / "0.png").read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # a truncated file
    assert main(evaluate(tiny_checkpoint)) == 2
    error = error_lines(capsys.readouterr().err)
    assert len(error) == 1 and "broken.png" in error[0] and "--skip-bad-images" in error[0]
    output = tmp_path / "out.json"
    assert main(evaluate(tiny_checkpoint, "--skip-bad-images", "--output", str(output))) == 0
    skipped = json.loads(output.read_text())["skipped"]
    assert len(skipped) == 1 and "broken.png" in skipped[0]


def test_a_sixteen_bit_png_is_read_as_the_image_it_is(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(48, 64)
    Image.fromarray(gradient).save(tmp_path / "deep.png")
    pixels = np.asarray(read_image(tmp_path / "deep.png"))
    assert pixels.shape == (48, 64, 3)
    assert pixels.min() == 0 and pixels.max() == 255 and 100 < pixels.mean() < 155  # not all white
    expected = np.round(gradient / 65535 * 255)
    assert np.abs(pixels[..., 0] - expected).max() <= 1


def test_an_image_too_large_is_refused_before_decoding(tmp_path):
    Image.new("L", (8000, 6000)).save(tmp_path / "huge.png")
    with pytest.raises(ImageReadError, match="huge.png.*48 megapixels"):
        read_image(tmp_path / "huge.png")


def test_corrupt_weights_and_bad_flags_give_one_line(tiny_checkpoint, capsys):
    weights = tiny_checkpoint / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(evaluate(tiny_checkpoint)) == 2
    error = error_lines(capsys.readouterr().err)
    assert len(error) == 1 and "weights" in error[0]
    for flag, value in (("--every", "0"), ("--every", "-1"), ("--keep-rate", "1.5"), ("--batch-size", "0")):
        with pytest.raises(SystemExit):
            main(evaluate(tiny_checkpoint, flag, value))
        assert flag in capsys.readouterr().err


def test_output_files_get_their_folders_before_the_run(tiny_checkpoint, tmp_path, capsys):
    output, state = tmp_path / "new" / "results.json", tmp_path / "other" / "deeper" / "state.json"
    assert main(evaluate(tiny_checkpoint, "--output", str(output), "--state-file", str(state))) == 0
    assert json.loads(output.read_text())["results"] and state.exists()
    (tmp_path / "a file").write_text("")
    for flag, path, message in (("--output", tmp_path, "is a folder; give a file name"),
                                ("--state-file", tmp_path / "a file" / "state.json", "cannot create the folder"),
                                ("--output", state, "would overwrite the --state-file")):
        capsys.readouterr()
        extra = ["--state-file", str(state)] if flag == "--output" else []
        assert main(evaluate(tiny_checkpoint, flag, str(path), *extra)) == 2
        stderr = capsys.readouterr().err
        error = error_lines(stderr)
        assert len(error) == 1 and error[0].startswith(f"freqtr-hf: {flag}: ") and message in error[0]
        assert "freqtr-hf evaluate:" not in stderr  # refused before any work


def test_untrained_learned_methods_are_named_in_a_warning(tiny_checkpoint):
    with pytest.warns(UserWarning, match="sinkhorn: its parameters .*centres"):
        build_models(str(tiny_checkpoint / "model"), ["sinkhorn", "topk"], 0.7)


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_saying_how_to_resume(tiny_checkpoint, tmp_path):
    # hundreds of batches left when the first one is saved: the signal must not reach an interpreter that has
    # finished the run and is shutting down (it would die of SIGINT, with no message)
    write_images(tiny_checkpoint / "many", ["class 0", "class 1"], 150)
    state = tmp_path / "state.json"
    argv = ["evaluate", "--model", str(tiny_checkpoint / "model"), "--data", str(tiny_checkpoint / "many"),
            "--batch-size", "1", "--device", "cpu", "--methods", "freq", "--state-file", str(state)]
    # SIGINT back to its default in the child: a shell ignores it in background jobs, and Python, started with it
    # ignored, would never raise KeyboardInterrupt
    process = subprocess.Popen([sys.executable, "-m", "freqtr_hf.cli", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:  # interrupt it after its first batch
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    if "top-1" in stdout:
        pytest.skip("the run finished before the interruption arrived")
    assert process.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and str(state) in last and "Traceback" not in stderr


def test_ctrl_c_without_a_state_file_says_how_to_make_a_run_resumable(tiny_checkpoint, monkeypatch, capsys):
    def interrupted(*args, **kwargs):  # Ctrl-C arriving mid-run
        raise KeyboardInterrupt

    monkeypatch.setattr("freqtr_hf.commands.run_evaluation", interrupted)
    assert main(evaluate(tiny_checkpoint)) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "freqtr-hf: interrupted; with --state-file FILE a run can be resumed after an interruption")


@pytest.mark.slow
def test_help_version_and_a_missing_folder_answer_without_importing_torch(tmp_path):
    code = "import sys, freqtr_hf.cli; freqtr_hf.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    code = ("import sys, freqtr_hf.cli; code = freqtr_hf.cli.main(sys.argv[1:]); print(code, 'torch' in sys.modules)")
    missing = subprocess.run([sys.executable, "-c", code, "evaluate", "--model", str(tmp_path), "--data",
                              str(tmp_path / "absent")], capture_output=True, text=True)
    assert missing.stdout.split() == ["2", "False"]
    assert missing.stderr.strip().splitlines()[-1].startswith("freqtr-hf: --model: ")  # no config.json: named first
    version = subprocess.run([sys.executable, "-m", "freqtr_hf.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("freqtr-hf ")
    help_text = subprocess.run([sys.executable, "-m", "freqtr_hf.cli", "evaluate", "--help"], capture_output=True, text=True)
    assert "(default: facebook/deit-tiny-patch16-224)" in " ".join(help_text.stdout.split())  # however it wraps


def test_unlabelled_images_say_why_top1_is_missing(tiny_checkpoint, tmp_path, capsys):
    write_images(tmp_path / "photos", ["holiday"], 4)  # one folder whose name is no class of the model
    argv = ["evaluate", "--model", str(tiny_checkpoint / "model"), "--data", str(tmp_path / "photos"),
            "--device", "cpu", "--methods", "freq", "--output", str(tmp_path / "out.json")]
    assert main(argv) == 0
    assert "top-1 is not reported: no image has a label among the model's classes" in capsys.readouterr().err
    assert all(row["top1"] is None for row in json.loads((tmp_path / "out.json").read_text())["results"])
    assert main(evaluate(tiny_checkpoint)) == 0
    assert "top-1 is not reported" not in capsys.readouterr().err


def test_wnid_folders_map_to_imagenet_classes(deit_tiny):
    if not SYNSETS.exists():
        pytest.skip(f"{SYNSETS} is absent")
    id2label = {i: f"class {i}" for i in range(1000)}
    assert label_mapping(["n01440764", "n01443537", "unknown"], id2label, str(SYNSETS)) == [0, 1, -1]
    assert label_mapping(["tench", "goldfish"], id2label, str(SYNSETS)) == [0, 1]


def any_model_complete(cache: Path) -> bool:
    """Whether an analysis has saved a model's finished statistics (the folder appears at its first write)."""
    for meta in cache.glob("*/*.json"):
        try:
            if json.loads(meta.read_text())["complete"]:
                return True
        except (OSError, ValueError, KeyError):  # replaced while read
            continue
    return False


@pytest.mark.slow
def test_ctrl_c_in_an_analysis_says_how_to_resume_and_the_rerun_reuses_what_was_done(tiny_checkpoint, tmp_path):
    # two data sets: the first is finished and saved while the second still runs
    write_images(tiny_checkpoint / "first", ["class 0", "class 1"], 20)
    write_images(tiny_checkpoint / "second", ["class 0", "class 1"], 60)
    output = tmp_path / "out"
    argv = ["analyze", "--model", str(tiny_checkpoint / "model"),
            "--data", str(tiny_checkpoint / "first"), str(tiny_checkpoint / "second"),
            "--methods", "topk", "tome", "freq", "--keep-rates", "0.5", "0.7", "--batch-size", "1",
            "--device", "cpu", "--output", str(output)]
    process = subprocess.Popen([sys.executable, "-m", "freqtr_hf.cli", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not any_model_complete(output / "cache") and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the interruption arrived")
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"freqtr-hf: interrupted; run the same command again to resume from the caches in {output / 'cache'}")
    rerun = subprocess.run([sys.executable, "-m", "freqtr_hf.cli", *argv], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0
    first_set = next(line for line in rerun.stdout.splitlines() if line.startswith("first: "))
    cached = int(first_set.split("images, ")[1].split("/")[0])  # "first: 40 images, k/10 models cached"
    assert cached >= 1  # what was finished before the interruption is not computed again


@pytest.mark.parametrize("interrupted", [True, False])
def test_an_error_raised_by_an_interruption_is_the_interruption(interrupted):
    """A library may catch Ctrl-C and raise another error (an OSError from interrupted I/O): that must not be reported
    as the user's mistake with status 2, but as an interruption, which the CLI turns into the resume hint."""

    @one_line_errors
    def run(args: argparse.Namespace) -> int:
        try:
            if interrupted:
                signal.raise_signal(signal.SIGINT)
            raise OSError("read failed")
        except KeyboardInterrupt as error:
            raise OSError("read interrupted") from error  # what such a library does

    args = argparse.Namespace(model="org/model", data="org/data")
    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            run(args)
    else:
        assert run(args) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back


@pytest.mark.parametrize("caller", ["ignores", "handles"])
def test_a_ctrl_c_that_the_caller_ignores_or_handles_is_left_to_it(caller):
    """A shell starts a background job with Ctrl-C ignored: the Ctrl-C meant for the job in the foreground must not
    stop it. A program that calls the commands with its own handler keeps it."""
    received = []
    own = signal.SIG_IGN if caller == "ignores" else lambda signum, frame: received.append(signum)

    @one_line_errors
    def run(args: argparse.Namespace) -> int:
        signal.raise_signal(signal.SIGINT)
        return 0

    previous = signal.signal(signal.SIGINT, own)
    try:
        assert run(argparse.Namespace(model="org/model", data="org/data")) == 0
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)
    assert received == ([] if caller == "ignores" else [signal.SIGINT])


def test_a_file_as_the_model_is_named(tiny_checkpoint, capsys):
    config_file = tiny_checkpoint / "model" / "config.json"
    argv = ["evaluate", "--model", str(config_file), "--data", str(tiny_checkpoint / "data")]
    assert main(argv) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"freqtr-hf: --model: {config_file} is a file; give the checkpoint folder (the one with config.json)"
    ]


def test_a_checkpoint_without_its_image_processor_and_a_folder_as_synsets_are_named(tiny_checkpoint, capsys):
    assert main(evaluate(tiny_checkpoint, "--synsets", str(tiny_checkpoint / "data"))) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"freqtr-hf: --synsets: {tiny_checkpoint / 'data'} is a folder; give the class-list file"]
    (tiny_checkpoint / "model" / "preprocessor_config.json").unlink()
    assert main(evaluate(tiny_checkpoint)) == 2
    error = error_lines(capsys.readouterr().err)
    assert len(error) == 1 and error[0].startswith("freqtr-hf: --model: ") and "no preprocessor_config.json" in error[0]


@pytest.mark.slow
def test_unreachable_hub_gives_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "freqtr_hf.cli", "evaluate", "--model", "facebook/deit-tiny-patch16-224",
         "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2
    message = error_lines(result.stderr)
    assert len(message) == 1 and "pass local folders" in message[0]
    assert "HF_HUB_OFFLINE" not in message[0]  # it is set: no advice to set it


@pytest.mark.slow
def test_export_and_analyze_run_from_the_command_line(tmp_path, capsys):
    from conftest import tiny_config

    torch.manual_seed(0)
    model = FreqViTForImageClassification(tiny_config(reduction_method="none", id2label={i: f"class {i}" for i in range(10)}))
    model.save_pretrained(tmp_path / "model")  # a FreqViT checkpoint carries its 4-block schedule (layers 1, 2)
    write_tiny_vit(tmp_path / "vit")  # only for its image processor
    (tmp_path / "vit" / "preprocessor_config.json").rename(tmp_path / "model" / "preprocessor_config.json")
    write_images(tmp_path / "data", ["class 0", "class 1"], 3)
    capsys.readouterr()
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "exported"),
                 "--keep-rate", "0.5", "--device", "cpu", "--data", str(tmp_path / "data")]) == 0
    assert "freqtr-hf export: measuring on cpu" in capsys.readouterr().err
    assert (tmp_path / "exported" / "README.md").exists() and (tmp_path / "exported" / "config.json").exists()
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "preset"),
                 "--preset", "training_free", "--device", "cpu"]) == 0
    config = json.loads((tmp_path / "preset" / "config.json").read_text())
    assert {key: config[key] for key in TRAINING_FREE_FREQ} == TRAINING_FREE_FREQ
    card = (tmp_path / "preset" / "README.md").read_text()
    assert "joins the most similar kept token" in card and "averaged into DC tokens" not in card
    assert "(a DC token that count to the power 0.5)" in card
    assert "it gives up those of its lowest-scoring 25% with the closest twin" in card
    assert "| `low_frequency_pool` | 0.25 |" in card
    assert "| `low_frequency_merge` | nearest |" in card and "low_frequency_merge" not in (
        tmp_path / "exported" / "README.md").read_text()
    assert main(["analyze", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--methods", "freq",
                 "topk", "--keep-rates", "0.5", "--output", str(tmp_path / "report"), "--device", "cpu",
                 "--batch-size", "4"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {"accuracy", "log_amplitude", "depth_maps", "cka"} <= set(report)
    assert main(["analyze", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--methods", "freq",
                 "--keep-rates", "0.5", "--output", str(tmp_path / "preset-report"), "--device", "cpu",
                 "--batch-size", "4", "--preset", "training_free"]) == 0
    report = tmp_path / "preset-report"
    assert json.loads((report / "report.json").read_text())["run"]["freq_preset"] == "training_free"
    assert "`freq` runs with the `training_free` preset." in (report / "report.md").read_text()
    assert main(["analyze", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--every", "1", "2",
                 "--output", str(tmp_path / "report")]) == 2
    assert "--every" in capsys.readouterr().err


def test_a_saved_freqvit_keeps_its_own_reduction_unless_a_flag_changes_it(tiny_checkpoint, tmp_path):
    saved = tmp_path / "saved"
    model = FreqViTForImageClassification.from_pretrained(
        tiny_checkpoint / "model", reduction_method="freq", keep_rate=(0.5, 0.6), score_source="logits"
    )
    model.save_pretrained(saved)
    AutoImageProcessor.from_pretrained(tiny_checkpoint / "model").save_pretrained(saved)
    argv = ["evaluate", "--model", str(saved), "--data", str(tiny_checkpoint / "data"), "--device", "cpu",
            "--methods", "freq", "--output", str(tmp_path / "own.json")]
    assert main(argv) == 0
    row = json.loads((tmp_path / "own.json").read_text())["results"][1]
    assert row["keep_rate"] == [0.5, 0.6]
    assert row["gmacs"] == pytest.approx(count_macs(model.config) / 1e9)
    assert main([*argv[:-1], str(tmp_path / "flag.json"), "--keep-rate", "0.7", "0.7", "--score-source", "attention"]) == 0
    assert json.loads((tmp_path / "flag.json").read_text())["results"][1]["keep_rate"] == [0.7, 0.7]


def test_per_layer_keep_rates_and_tome_r_beside_other_methods(tiny_checkpoint, capsys):
    assert main(evaluate(tiny_checkpoint, "--keep-rate", "0.7", "0.5")) == 0
    assert "freq       0.7/0.5" in capsys.readouterr().out
    assert main(evaluate(tiny_checkpoint, "--methods", "freq", "tome", "--tome-r", "3")) == 0  # tome_r is tome's
    table = capsys.readouterr().out
    assert "tome         r=3" in table and "freq         0.7" in table


def test_a_vit_of_any_depth_evaluates_with_its_own_schedule(tmp_path):
    plain = ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                      patch_size=8, num_labels=2, id2label={0: "class 0", 1: "class 1"})
    ViTForImageClassification(plain).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "vit")
    write_images(tmp_path / "data", ["class 0", "class 1"], 2)
    argv = ["evaluate", "--model", str(tmp_path / "vit"), "--data", str(tmp_path / "data"), "--device", "cpu",
            "--methods", "freq", "topk", "--reduction-layers", "1", "2", "--dc-window-sizes", "2", "1"]
    assert main(argv) == 0


def test_top1_says_when_only_some_images_have_a_class_of_the_model(tiny_checkpoint, tmp_path, capsys):
    write_images(tmp_path / "mixed", ["class 0", "holiday"], 3)
    argv = ["evaluate", "--model", str(tiny_checkpoint / "model"), "--data", str(tmp_path / "mixed"),
            "--device", "cpu", "--methods", "freq", "--output", str(tmp_path / "mixed.json")]
    assert main(argv) == 0
    assert "top-1 is over the 3 of 6 images whose class is one of the model's" in capsys.readouterr().err
    assert json.loads((tmp_path / "mixed.json").read_text())["results"][0]["labelled"] == 3


def test_labels_matched_by_position_are_announced():
    with pytest.warns(UserWarning, match="matched by position"):
        assert label_mapping(["zebra", "kiwi"], {0: "apple", 1: "pear"}, None) == [0, 1]


def test_a_label_column_without_class_names_is_refused_by_name(tmp_path):
    dataset = datasets.Dataset.from_dict({"image": [str(tmp_path / "x.png")], "label": [3]})
    with pytest.raises(ValueError, match="'label' column"):
        label_names(dataset)


def test_a_config_edited_in_place_is_another_run(tiny_checkpoint, tmp_path, capsys):
    saved = tmp_path / "saved"
    FreqViTForImageClassification.from_pretrained(tiny_checkpoint / "model").save_pretrained(saved)
    AutoImageProcessor.from_pretrained(tiny_checkpoint / "model").save_pretrained(saved)
    argv = ["evaluate", "--model", str(saved), "--data", str(tiny_checkpoint / "data"), "--device", "cpu",
            "--methods", "freq", "--state-file", str(tmp_path / "state.json")]
    assert main(argv) == 0
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "low_frequency_merge": "nearest"}))
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds another run: model_configs differs" in capsys.readouterr().err


def test_a_run_with_list_flags_resumes_from_its_own_state(tiny_checkpoint, tmp_path, capsys):
    flags = ["--reduction-layers", "1", "2", "--dc-window-sizes", "2", "1", "--keep-rate", "0.7", "0.5"]
    state = str(tmp_path / "state.json")
    assert main(evaluate(tiny_checkpoint, "--state-file", state, *flags)) == 0
    capsys.readouterr()
    assert main(evaluate(tiny_checkpoint, "--state-file", state, *flags)) == 0  # saved as lists, given as tuples
    assert "holds this run, finished" in capsys.readouterr().err
