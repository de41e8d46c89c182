"""The fine-tuning script (accelerate, one CPU process), publishing, and the Trainer example, on tiny data."""

import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification, ViTConfig, ViTForImageClassification,
    ViTImageProcessor,
)

from conftest import held_by_another_process, RecordingHubApi, remote_code_difference, tiny_config, write_images, write_tiny_vit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import finetune  # noqa: E402
import trainer_example  # noqa: E402
from freqtr_hf import TRAINING_FREE_FREQ, FreqViTConfig, FreqViTForImageClassification  # noqa: E402
from freqtr_hf.publishing import publish_to_hub  # noqa: E402

pytestmark = pytest.mark.slow  # trains, often in fresh processes: seconds each

CHECKPOINT_FILES = {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "run_state.json"}


@pytest.fixture(autouse=True)
def train_on_the_cpu(monkeypatch):
    """Every run here trains on the CPU, also on a GPU machine: these tests compare weights bit for bit, and CUDA's
    atomic adds (index_add_, the backward of gathers and attention) sum in a different order on every run."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny pretrained ViT whose classes are `class 0 … class 9`, and image folders of two of them."""
    root = tmp_path_factory.mktemp("tiny_run")
    write_tiny_vit(root / "model")
    write_images(root / "train", ["class 0", "class 1"], 8)
    write_images(root / "val", ["class 0", "class 1"], 4, seed=1)
    return root


def run_args(root: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(root / "model"), "--train_dir", str(root / "train"),
        "--validation_dir", str(root / "val"), "--output_dir", str(output), "--per_device_train_batch_size", "4",
        "--reduction_layers", "1", "2", "--dc_window_sizes", "2", "1", "--ema_decay", "0.9", *extra,
    ]


def assert_same_weights(expected_file: Path, actual_file: Path) -> None:
    expected, actual = load_file(expected_file), load_file(actual_file)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=0, rtol=0, msg=key)


def measured(results: dict) -> dict:
    """What a run computes, without the timings (images/s) and the command line."""
    rows = {key: {k: v for k, v in results[key].items() if k != "images_per_second"}
            for key in ("before", "after", "unreduced") if key in results}
    return {"steps": results["steps"], "gmacs": results["gmacs"], "history": results["history"], **rows}


def test_finetune_writes_results_model_card_and_curve(tiny_run, tmp_path):
    results = finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "3", "--eval_steps", "2",
                                     "--with_tracking"))
    assert results["steps"] == 3
    assert {"before", "after", "unreduced", "gmacs"} <= results.keys()
    assert results["gmacs"]["reduced"] < results["gmacs"]["unreduced"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["history"]["step"] == [1, 2, 3] and saved["history"]["eval_step"] == [0, 2, 3]
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.rglob("*"))  # tensorboard

    card = ModelCard.load(tmp_path / "model" / "README.md")
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification" and "freq" in data.tags
    assert data.base_model is None  # a local folder, not a Hub id
    metrics = {result.metric_name: result.metric_value for result in data.eval_results}
    assert metrics["top-1 % (reduced, fine-tuned)"] == round(100 * results["after"]["top1"], 2)
    assert metrics["top-1 % (reduced, without fine-tuning)"] == round(100 * results["before"]["top1"], 2)
    assert metrics["GMACs per image (reduced)"] == round(results["gmacs"]["reduced"], 3)
    assert "trust_remote_code=True" in card.text and "lee2025frequency" in card.text
    assert str(tiny_run) not in card.content and str(tmp_path) not in card.content
    assert f"\n# {tmp_path.name}\n" in card.text  # named after the run's folder, not `<run>/model` (a Hub id's look)


@pytest.mark.parametrize("mode", [[], ["--calibrate"]], ids=["fine-tuning", "calibration"])
def test_resume_continues_exactly(tiny_run, tmp_path, mode):
    # 16 images, batch 4: 4 steps an epoch, so the run crosses an epoch boundary after the resume point
    uninterrupted = tmp_path / "uninterrupted"
    finetune.main(run_args(tiny_run, uninterrupted, "--max_train_steps", "6", "--checkpointing_steps", "2", *mode))
    assert [p.name for p in finetune.checkpoints(uninterrupted)] == ["step_2", "step_4", "step_6"]
    # the interrupted run: its state at step 2 is the checkpoint; a fresh process resumes from it
    resumed = tmp_path / "resumed"
    finetune.main(run_args(tiny_run, resumed, "--max_train_steps", "6",
                           "--resume_from_checkpoint", str(uninterrupted / "step_2"), *mode))
    assert_same_weights(uninterrupted / "model" / "model.safetensors", resumed / "model" / "model.safetensors")
    history = json.loads((resumed / "results.json").read_text())["history"]
    assert history["step"] == [1, 2, 3, 4, 5, 6]


def test_resuming_from_the_final_checkpoint_trains_no_further_and_reproduces_the_results(tiny_run, tmp_path):
    args = run_args(tiny_run, tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "3", "--eval_steps", "2")
    first = finetune.main(args)
    first_model = (tmp_path / "model" / "model.safetensors").read_bytes()
    again = finetune.main([*args, "--resume_from_checkpoint", "latest"])
    assert again["steps"] == 3 and again["history"]["step"] == [1, 2, 3]
    assert measured(again) == measured(first)  # the "before" row comes from the checkpoint, not a 0.0
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == first_model
    card = ModelCard.load(tmp_path / "model" / "README.md")
    metrics = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert metrics["top-1 % (reduced, without fine-tuning)"] == round(100 * first["before"]["top1"], 2)


def test_latest_takes_only_complete_step_folders(tiny_run, tmp_path):
    args = run_args(tiny_run, tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "2")
    finetune.main(args)
    (tmp_path / "step_4.tmp").mkdir()  # a save that was cut short
    (tmp_path / "step_4.tmp" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "step_best").mkdir()
    (tmp_path / "step_10.old").mkdir()
    assert [p.name for p in finetune.checkpoints(tmp_path)] == ["step_2"]
    assert finetune.main([*args, "--resume_from_checkpoint", "latest"])["steps"] == 3


def test_a_non_empty_output_dir_is_refused_before_any_work(tiny_run, tmp_path):
    # the training folder holds no images: a refusal after any loading would name it instead
    (tmp_path / "empty").mkdir()
    missing = ["--train_dir", str(tmp_path / "empty")]
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("the user's notes")
    for flags in ([], ["--overwrite_output_dir"], ["--resume_from_checkpoint", "latest"]):
        with pytest.raises(SystemExit, match=r"user holds files that freqtr-hf did not write there \(notes.txt\)"):
            finetune.main([*run_args(tiny_run, user, "--max_train_steps", "2", *flags), *missing])
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    finetune.main(run_args(tiny_run, tmp_path / "run", "--max_train_steps", "1"))
    with pytest.raises(SystemExit, match="is not empty.*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        finetune.main([*run_args(tiny_run, tmp_path / "run", "--max_train_steps", "2"), *missing])


def test_an_output_dir_in_use_by_another_run_is_refused(tiny_run, tmp_path):
    output = tmp_path / "out"
    with held_by_another_process(output), pytest.raises(SystemExit, match="--output_dir: .*in use by another run"):
        finetune.main(run_args(tiny_run, output, "--max_train_steps", "1"))
    assert not output.exists()  # refused before any work
    assert finetune.main(run_args(tiny_run, output, "--max_train_steps", "1"))["steps"] == 1  # the holder died


def test_overwrite_output_dir_starts_afresh_and_removes_the_old_checkpoints(tiny_run, tmp_path):
    finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    (tmp_path / "notes.txt").write_text("kept")
    for name in ("model.old", "step_2.old"):  # the user's names, near the run's own
        (tmp_path / name).mkdir()
    (tmp_path / "results.json.tmp").write_text("kept")
    (tmp_path / "step_6").write_text("a file where the run writes a checkpoint folder")
    again = run_args(tiny_run, tmp_path, "--max_train_steps", "2", "--keep_rate", "0.5", "--overwrite_output_dir")
    with pytest.raises(SystemExit, match="holds step_6, not as this script writes them; nothing was removed"):
        finetune.main(again)
    assert (tmp_path / "step_4").is_dir() and (tmp_path / "model").is_dir()
    (tmp_path / "step_6").unlink()
    assert finetune.main(again)["steps"] == 2
    assert not (tmp_path / "step_2").exists() and not (tmp_path / "step_4").exists()
    assert (tmp_path / "notes.txt").read_text() == (tmp_path / "results.json.tmp").read_text() == "kept"
    assert (tmp_path / "model.old").is_dir() and (tmp_path / "step_2.old").is_dir()


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("--keep_rate", "0.5", "keep_rate"),
    ("--reduction_method", "topk", "reduction_method"),
    ("--preset", "training_free", "low_frequency_merge"),  # a preset is known by the fields it sets
    ("--learning_rate", "0.001", "learning_rate"),
    ("--calibrate", None, "calibrate"),
])
def test_resuming_with_other_settings_is_refused_naming_the_field(tiny_run, tmp_path, flag, value, field):
    args = run_args(tiny_run, tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2")
    finetune.main(args)
    with pytest.raises(SystemExit, match=f"cannot resume from .*step_2: it is another job: (.*; )?{field} differs"):
        finetune.main([*args, flag, *([value] if value else []), "--resume_from_checkpoint", "latest"])


def test_the_job_records_the_reduction_the_preset_made(tiny_run, tmp_path):
    finetune.main(run_args(tiny_run, tmp_path / "preset", "--max_train_steps", "1", "--preset", "training_free"))
    reduction = json.loads((tmp_path / "preset" / "run.json").read_text())
    assert {key: reduction[key] for key in TRAINING_FREE_FREQ} == TRAINING_FREE_FREQ
    assert reduction["reduction_layers"] == [1, 2]


def test_resuming_with_another_model_is_refused(tiny_run, tmp_path):
    other = tmp_path / "other_model"
    torch.manual_seed(1)
    ViTForImageClassification(tiny_config(reduction_method="none")).save_pretrained(other)
    ViTImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False).save_pretrained(other)
    args = run_args(tiny_run, tmp_path / "run", "--max_train_steps", "2", "--checkpointing_steps", "2")
    finetune.main(args)
    with pytest.raises(SystemExit, match="another job: model differs"):
        finetune.main([*args, "--model_name_or_path", str(other), "--resume_from_checkpoint", "latest"])


def test_missing_optional_dependencies_are_reported_at_start(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not importable
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    (tmp_path / "empty").mkdir()  # no images: loading would fail, so the report must come first
    args = [*run_args(tiny_run, tmp_path / "out", "--with_tracking"), "--train_dir", str(tmp_path / "empty")]
    with pytest.raises(SystemExit, match=r"missing matplotlib .*tensorboard .*pip install -e \"\.\[train\]\""):
        finetune.main(args)


def test_a_broken_checkpoint_gives_a_clear_error(tiny_run, tmp_path):
    broken = tmp_path / "step_2"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot resume from .*step_2: its run_state.json is missing or damaged"):
        finetune.main(run_args(tiny_run, tmp_path / "out", "--max_train_steps", "3",
                               "--resume_from_checkpoint", str(broken)))
    (broken / "run_state.json").write_text('{"step": 2, "hist')  # cut short
    with pytest.raises(SystemExit, match="run_state.json is missing or damaged .*JSONDecodeError"):
        finetune.main(run_args(tiny_run, tmp_path / "out", "--max_train_steps", "3",
                               "--resume_from_checkpoint", str(broken)))


def test_training_reads_16_bit_images_like_their_8_bit_version(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    Image.fromarray((gradient // 257).astype(np.uint8)).save(tmp_path / "flat.png")
    processor = ViTImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False)
    collate = finetune.make_collate(processor, [0], train=False)
    rows = [{"image": {"path": str(tmp_path / name), "bytes": None}, "label": 0} for name in ("deep.png", "flat.png")]
    pixels = collate(rows)["pixel_values"]
    torch.testing.assert_close(pixels[0], pixels[1], atol=0.01, rtol=0)
    assert pixels[0].std() > 0.5  # a gradient, not a white image


def test_distill_only_and_dynamicvit_train(tiny_run, tmp_path):
    results = finetune.main(run_args(tiny_run, tmp_path / "kl", "--max_train_steps", "2", "--distill_only"))
    assert results["steps"] == 2
    results = finetune.main(run_args(tiny_run, tmp_path / "dyn", "--max_train_steps", "2",
                                     "--reduction_method", "dynamicvit"))
    assert results["history"]["loss"][0] > 0


def test_calibration_trains_only_the_reduction_parameters(tiny_run, tmp_path):
    results = finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "3", "--calibrate",
                                     "--max_train_samples", "6"))
    settings = dict(reduction_method="freq", keep_rate=0.7, reduction_layers=(1, 2), dc_window_sizes=(2, 1))
    base = FreqViTForImageClassification.from_pretrained(tiny_run / "model", **settings)
    calibrated = FreqViTForImageClassification.from_pretrained(tmp_path / "model")
    reduction = base.reduction_parameters()
    assert results["trained_parameters"] == sum(p.numel() for p in reduction.values()) > 0
    assert results["config"]["learning_rate"] == 3e-2  # the calibration default
    assert results["config"]["distill_only"]  # no labels needed
    after = calibrated.state_dict()
    for name, weight in base.state_dict().items():
        if name in reduction:
            assert not torch.equal(after[name], weight), f"{name} was not trained"
        else:
            torch.testing.assert_close(after[name], weight, atol=0, rtol=0, msg=name)
    assert "only the reduction's own parameters were trained" in (tmp_path / "model" / "README.md").read_text()


@pytest.mark.parametrize("flags, learning_rate, ema_decay", [
    ([], 1e-4, 0.9998), (["--calibrate"], 3e-2, 0.0), (["--calibrate", "--learning_rate", "0.1"], 0.1, 0.0),
])
def test_calibration_has_its_own_defaults(flags, learning_rate, ema_decay, tmp_path):
    args = finetune.parse_args(["--train_dir", str(tmp_path), "--output_dir", "out", *flags])
    assert (args.learning_rate, args.ema_decay) == (learning_rate, ema_decay)


def test_calibration_takes_a_folder_of_any_images(tiny_run, tmp_path, capsys):
    # no class of the pretrained head: distillation reads no labels, so the head stays and nothing is refused
    write_images(tmp_path / "photos", ["holiday"], 6, seed=3)
    args = ["--model_name_or_path", str(tiny_run / "model"), "--train_dir", str(tmp_path / "photos"),
            "--validation_dir", str(tmp_path / "photos"), "--output_dir", str(tmp_path / "out"),
            "--per_device_train_batch_size", "3", "--reduction_layers", "1", "2", "--dc_window_sizes", "2", "1",
            "--max_train_steps", "2", "--calibrate"]
    results = finetune.main(args)
    assert FreqViTForImageClassification.from_pretrained(tmp_path / "out" / "model").config.num_labels == 10
    assert results["after"]["num_labelled"] == 0 and "top1" not in results["after"]
    assert "validation top-1 is not reported" in capsys.readouterr().err
    assert 0 <= results["after"]["agreement"] <= 1 and results["after"]["images_per_second"] > 0


def test_calibrating_a_method_without_parameters_is_refused(tiny_run, tmp_path):
    with pytest.raises(SystemExit, match="--calibrate: topk with these settings has no parameters of its own"):
        finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "1", "--calibrate", "--reduction_method", "topk"))


def test_max_train_samples_draws_from_every_class(tiny_run, tmp_path, capsys):
    # the folder's first 8 images are all "class 0": a random draw of 8 is not
    subset = finetune.load_split(finetune.parse_args(run_args(tiny_run, tmp_path, "--max_train_samples", "8")), train=True)
    assert len(subset) == 8 and set(subset["label"]) == {0, 1}


@pytest.mark.parametrize("flag, value, message", [
    ("--max_train_steps", "0", "argument --max_train_steps: must be a whole number >= 1, got 0"),
    ("--max_train_samples", "0", "argument --max_train_samples: must be a whole number >= 1, got 0"),
    ("--gradient_accumulation_steps", "0", "argument --gradient_accumulation_steps: must be a whole number >= 1"),
    ("--per_device_train_batch_size", "0", "argument --per_device_train_batch_size: must be a whole number >= 1"),
    ("--eval_steps", "0", "argument --eval_steps: must be a whole number >= 1, got 0"),
    ("--learning_rate", "-1", "argument --learning_rate: must be a number > 0, got -1"),
    ("--ema_decay", "1.5", "argument --ema_decay: must be in [0, 1), got 1.5"),
    ("--synsets", "no-such-file.txt", "--synsets: no file no-such-file.txt"),
    ("--validation_dir", "no-such-folder", "--validation_dir: no folder no-such-folder"),
    ("--model_name_or_path", "./no-such-model", "--model_name_or_path: no folder ./no-such-model"),
    ("--lr_scheduler_type", "cosinee", "argument --lr_scheduler_type: invalid choice: 'cosinee'"),
    ("--lr_scheduler_type", "greedy", "argument --lr_scheduler_type: invalid choice: 'greedy'"),  # needs more arguments
    pytest.param("--mixed_precision", "fp16", "--mixed_precision fp16 needs a GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available() or torch.backends.mps.is_available(), reason="fp16 is refused only without a GPU")),
])
def test_bad_arguments_are_refused_by_name_before_any_work(tiny_run, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit):
        finetune.main(run_args(tiny_run, tmp_path / "out", flag, value))
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no run.json left to block the corrected command


def test_a_file_as_the_model_is_refused_naming_the_flag(tiny_run, tmp_path, capsys):
    config_file = tiny_run / "model" / "config.json"
    with pytest.raises(SystemExit):
        finetune.main(run_args(tiny_run, tmp_path / "out", "--model_name_or_path", str(config_file)))
    assert f"--model_name_or_path: {config_file} is a file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_freqvit_checkpoint_keeps_its_own_reduction_unless_a_flag_changes_it(tiny_run, tmp_path):
    saved = FreqViTForImageClassification.from_pretrained(
        tiny_run / "model", reduction_layers=(1, 2), dc_window_sizes=(2, 1), keep_rate=0.5, **TRAINING_FREE_FREQ
    )
    saved.save_pretrained(tmp_path / "freqvit")
    shutil.copy(tiny_run / "model" / "preprocessor_config.json", tmp_path / "freqvit")
    common = ["--model_name_or_path", str(tmp_path / "freqvit"), "--train_dir", str(tiny_run / "train"),
              "--per_device_train_batch_size", "4", "--max_train_steps", "1", "--ema_decay", "0"]
    finetune.main([*common, "--output_dir", str(tmp_path / "kept")])  # no reduction flag
    kept = FreqViTConfig.from_pretrained(tmp_path / "kept" / "model")
    assert kept.reduction_layers == (1, 2) and kept.keep_rate == 0.5
    assert kept.low_frequency_merge == "nearest" and kept.proportional_attention
    finetune.main([*common, "--output_dir", str(tmp_path / "changed"), "--keep_rate", "0.7", "--preset", "paper"])
    changed = FreqViTConfig.from_pretrained(tmp_path / "changed" / "model")
    assert changed.reduction_layers == (1, 2) and changed.keep_rate == 0.7
    assert changed.low_frequency_merge == "dc_window" and not changed.proportional_attention


def test_a_preset_of_freqs_options_for_another_method_is_refused_before_any_work(tiny_run, tmp_path):
    with pytest.raises(SystemExit, match="--preset training_free sets options of freq; the student's method is topk"):
        finetune.main(run_args(tiny_run, tmp_path / "out", "--preset", "training_free", "--reduction_method", "topk"))
    assert not (tmp_path / "out").exists()


def test_a_plain_vit_shallower_than_the_default_schedule_trains_with_its_own_flags(tiny_run, tmp_path):
    vit = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(**{k: v for k, v in tiny_config().to_dict().items()
                                           if k in ViTConfig().to_dict() and k != "model_type"})).save_pretrained(vit)
    shutil.copy(tiny_run / "model" / "preprocessor_config.json", vit)
    assert json.loads((vit / "config.json").read_text())["model_type"] == "vit"
    arguments = run_args(tiny_run, tmp_path / "out", "--max_train_steps", "1", "--ema_decay", "0")
    arguments[arguments.index("--model_name_or_path") + 1] = str(vit)
    assert finetune.main(arguments)["steps"] == 1  # 4 blocks: the default 3 6 9 would not fit, the flags' 1 2 do


def test_a_run_started_with_the_first_fingerprint_layout_resumes(tiny_run, tmp_path):
    args = run_args(tiny_run, tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2")
    expected = finetune.main(args)

    def first_layout(fingerprint: dict) -> dict:  # freqtr-hf 0.2.0 before the reduction fields were named
        fields = {k: fingerprint.pop(k) for k in finetune.REDUCTION_FIELDS}
        return {**fingerprint, "reduction": fields, "reduction_method": "freq", "keep_rate": [0.7],
                "reduction_layers": [1, 2], "dc_window_sizes": [2, 1], "preset": "paper"}

    (tmp_path / "run.json").write_text(json.dumps(first_layout(json.loads((tmp_path / "run.json").read_text()))))
    for state_file in tmp_path.glob("step_*/run_state.json"):
        state = json.loads(state_file.read_text())
        state_file.write_text(json.dumps({**state, "fingerprint": first_layout(state["fingerprint"])}))
    shutil.rmtree(tmp_path / "step_4")
    resumed = finetune.main([*args, "--resume_from_checkpoint", "latest"])
    assert measured(resumed) == measured(expected)


def test_validation_on_other_classes_of_the_pretrained_head_reports_top1(tiny_run, tmp_path, capsys):
    """Calibrating on photos of no class, then validating on classes of the pretrained head: the validation labels
    map to the head, not to the training folders."""
    write_images(tmp_path / "photos", ["holiday"], 6, seed=3)
    write_images(tmp_path / "other val", ["class 5", "class 7"], 3, seed=4)
    args = ["--model_name_or_path", str(tiny_run / "model"), "--train_dir", str(tmp_path / "photos"),
            "--validation_dir", str(tmp_path / "other val"), "--output_dir", str(tmp_path / "out"),
            "--per_device_train_batch_size", "3", "--reduction_layers", "1", "2", "--dc_window_sizes", "2", "1",
            "--max_train_steps", "1", "--calibrate"]
    results = finetune.main(args)
    assert results["after"]["num_labelled"] == 6 and "top1" in results["after"]
    printed = capsys.readouterr()
    assert "top-1 is not reported" not in printed.err
    # the run ends with its summary: where the model is, and top-1 / agreement before and after
    assert f"1 step; model written to {tmp_path / 'out' / 'model'}" in printed.out
    after = results["after"]
    assert f"after     top-1 {100 * after['top1']:.1f}%, agreement {100 * after['agreement']:.1f}%" in printed.out


def test_the_folder_to_publish_loads_in_a_fresh_process_and_is_uploaded(tiny_run, tmp_path):
    finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "2", "--hub_model_id", "user/freqvit-tiny"))
    folder = tmp_path / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_freqvit.py", "preprocessor_config.json", "README.md"} <= names
    assert 'from_pretrained("user/freqvit-tiny", trust_remote_code=True)' in (folder / "README.md").read_text()

    from freqtr_hf import FreqViTForImageClassification

    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = FreqViTForImageClassification.from_pretrained(folder).eval()(pixels).logits
    assert remote_code_difference(folder, pixels, logits, tmp_path) == 0.0

    api = RecordingHubApi()
    url = publish_to_hub(folder, "user/freqvit-tiny", api=api)
    assert api.calls[0][:2] == ("create_repo", "user/freqvit-tiny")
    assert api.calls[1] == ("upload_folder", "user/freqvit-tiny", str(folder))
    assert url.startswith("https://huggingface.co/user/freqvit-tiny")


def test_trainer_example_runs_a_few_steps(tiny_run, tmp_path):
    trainer = trainer_example.main([
        "--model_name_or_path", str(tiny_run / "model"), "--train_dir", str(tiny_run / "train"),
        "--output_dir", str(tmp_path), "--max_steps", "3", "--per_device_train_batch_size", "4",
    ])
    assert trainer.state.global_step == 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "preprocessor_config.json").exists()


@pytest.mark.parametrize("flag, value", [("--max_steps", "-1"), ("--max_steps", "0"), ("--reduction_method", "fast")])
def test_trainer_example_refuses_bad_arguments_by_name(tiny_run, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        trainer_example.main(["--train_dir", str(tiny_run / "train"), "--output_dir", str(tmp_path / "out"), flag, value])
    assert f"argument {flag}:" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_trainer_example_labels_wordnet_folders_with_readable_names(tiny_run, tmp_path):
    write_images(tmp_path / "train", ["n01440764", "n02102040"], 2)
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n01440764 tench, Tinca tinca\nn02102040 English springer, English springer spaniel\n")
    trainer = trainer_example.main([
        "--model_name_or_path", str(tiny_run / "model"), "--train_dir", str(tmp_path / "train"),
        "--synsets", str(synsets), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
        "--per_device_train_batch_size", "4",
    ])
    assert trainer.model.config.id2label == {0: "tench", 1: "English springer"}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"] == {"0": "tench", "1": "English springer"}


def test_trainer_example_offline_says_so_in_one_line(tiny_run, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "trainer_example.py"), "--train_dir", str(tiny_run / "train"),
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert "cannot load 'facebook/deit-tiny-patch16-224'" in last_line and "pass local folders" in last_line


class FinetuneProcess:
    """`python training/finetune.py` in a subprocess, SIGKILLed at a chosen point."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "training" / "finetune.py"), *args], stdout=handle, stderr=handle,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def kill_when(self, ready, timeout: float = 120.0) -> None:
        """SIGKILL the process as soon as `ready()` holds, polled every millisecond."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"finished before the kill point:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.001)
        self.process.kill()
        self.process.wait()

    def finish(self) -> None:
        assert self.process.wait(timeout=300) == 0, self.log.read_text()[-3000:]


def assert_complete_checkpoints(output: Path) -> None:
    for checkpoint in finetune.checkpoints(output):
        assert CHECKPOINT_FILES <= {p.name for p in checkpoint.iterdir()}, checkpoint
        assert finetune.read_run_state(checkpoint)["step"] == int(checkpoint.name.removeprefix("step_"))


def test_killed_anywhere_and_resumed_it_ends_as_the_uninterrupted_run(tiny_run, tmp_path):
    """SIGKILL inside a checkpoint write, at a random moment, and while the final model is written; each time the
    same command (`--resume_from_checkpoint latest`) continues, and the end equals the uninterrupted run."""
    settings = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--eval_steps", "3"]
    uninterrupted = tmp_path / "uninterrupted"
    expected = finetune.main(run_args(tiny_run, uninterrupted, *settings))

    output = tmp_path / "killed"
    command = run_args(tiny_run, output, *settings, "--resume_from_checkpoint", "latest")
    rng = random.Random(0)
    moment = {}

    def random_moment_after_step_4() -> bool:  # the previous kill came inside the save of step_4
        if (output / "step_4").exists():
            moment.setdefault("at", time.monotonic() + rng.uniform(0.0, 0.4))
        return "at" in moment and time.monotonic() >= moment["at"]

    kill_points = [
        ("inside the save of step_4", lambda: (output / "step_4.tmp").exists(), "step_4.tmp"),
        ("at a random moment after step_4", random_moment_after_step_4, None),
        ("while the final model folder is written", lambda: any(output.glob(".model.*.staging")), ".model.*.staging"),
    ]
    for number, (where, ready, caught) in enumerate(kill_points):
        FinetuneProcess(command, tmp_path / f"kill{number}.log").kill_when(ready)
        if caught:  # the kill came before the rename: the half-written folder is still there
            assert any(output.glob(caught)), where
        assert_complete_checkpoints(output)
    assert finetune.checkpoints(output)[-1].name == "step_6"  # the last kill came after the final checkpoint
    FinetuneProcess(command, tmp_path / "final.log").finish()

    assert_same_weights(uninterrupted / "model" / "model.safetensors", output / "model" / "model.safetensors")
    assert measured(json.loads((output / "results.json").read_text())) == measured(expected)
    assert not list(output.glob("*.tmp")) and not list(output.glob(".*.staging"))  # the resumed run cleaned up


def test_the_launchers_mixed_precision_is_used_unless_the_flag_says_otherwise(tiny_run, tmp_path, monkeypatch):
    # `accelerate launch --mixed_precision bf16` (or `accelerate config`) sets this for the script
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    FinetuneProcess(run_args(tiny_run, tmp_path / "run", "--max_train_steps", "1"), tmp_path / "run.log").finish()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["mixed_precision"] == "bf16"

    # the choice on a machine whose GPU computes bf16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)

    def choice(*flags: str) -> str | None:
        return finetune.mixed_precision(finetune.parse_args(run_args(tiny_run, tmp_path, *flags)))

    assert choice("--mixed_precision", "fp16") == "fp16"  # the script's flag wins over the launcher
    assert choice() is None  # the launcher's choice, which Accelerator reads
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert choice() == "bf16"  # run directly on the GPU
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert choice() == "no"  # told to train on the CPU


def run_two_processes(args: list[str], log: Path) -> dict:
    """finetune.py in two CPU processes (torchrun, gloo), as `accelerate launch --num_processes 2` runs it."""
    # --standalone: a free port on localhost, so another job holding a fixed one cannot fail the test
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "training" / "finetune.py"), *args]
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, log.read_text()[-3000:]
    return json.loads((Path(args[args.index("--output_dir") + 1]) / "results.json").read_text())


def test_two_processes_count_an_epoch_per_process_and_resume_exactly(tiny_run, tmp_path):
    # 16 images, batch 4 per process, 2 processes: 2 steps an epoch; 2 epochs cross a boundary after step_1
    settings = ["--num_train_epochs", "2", "--checkpointing_steps", "1", "--ema_decay", "0"]
    uninterrupted = tmp_path / "uninterrupted"
    expected = run_two_processes(run_args(tiny_run, uninterrupted, *settings), tmp_path / "uninterrupted.log")
    assert expected["steps"] == 4
    resumed = tmp_path / "resumed"
    run_two_processes(run_args(tiny_run, resumed, *settings, "--resume_from_checkpoint", str(uninterrupted / "step_3")),
                      tmp_path / "resumed.log")
    assert_same_weights(uninterrupted / "model" / "model.safetensors", resumed / "model" / "model.safetensors")


def test_the_trainer_example_saves_checkpoints_and_resumes_from_the_latest(tiny_run, tmp_path):
    common = ["--model_name_or_path", str(tiny_run / "model"), "--train_dir", str(tiny_run / "train"),
              "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4", "--save_steps", "2"]
    trainer_example.main([*common, "--max_steps", "4"])
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = trainer_example.main([*common, "--max_steps", "6", "--resume_from_checkpoint", "latest"])
    assert resumed.state.global_step == 6
    assert len([entry for entry in resumed.state.log_history if "loss" in entry]) == 6  # 4 restored, 2 trained
    with pytest.raises(SystemExit, match="holds no checkpoint to resume"):
        trainer_example.main([*common[:4], "--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint", "latest"])


@pytest.mark.parametrize("script", ["finetune", "trainer_example"])
def test_a_truncated_jpeg_stops_training_in_one_line_or_is_skipped(tiny_run, tmp_path, script):
    train = tmp_path / "train"
    write_images(train, ["class 0", "class 1"], 4)
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    (train / "class 0" / "cut.jpg").write_bytes(jpeg.getvalue()[:200])

    def run(output: str, *extra: str):
        if script == "finetune":
            return finetune.main([*run_args(tiny_run, tmp_path / output, "--max_train_steps", "2"), "--train_dir",
                                  str(train), *extra])
        return trainer_example.main(["--model_name_or_path", str(tiny_run / "model"), "--train_dir", str(train),
                                     "--output_dir", str(tmp_path / output), "--max_steps", "2",
                                     "--per_device_train_batch_size", "9", *extra])

    with pytest.raises(SystemExit) as stop:
        run("stopped")
    message = str(stop.value)
    assert "cut.jpg: not a readable image" in message and "pass --skip_bad_images" in message and "\n" not in message
    run("skipping", "--skip_bad_images")


def test_a_dinov2_classifier_with_registers_fine_tunes(tiny_run, tmp_path):
    """Fine-tuning takes the other families' classifiers, chosen by the checkpoint's model type."""
    torch.manual_seed(0)
    labels = {i: f"class {i}" for i in range(10)}
    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, patch_size=8, mlp_ratio=2,
        num_register_tokens=2, id2label=labels, label2id={name: i for i, name in labels.items()},
    )
    Dinov2WithRegistersForImageClassification(config).save_pretrained(tmp_path / "dinov2")
    shutil.copy(tiny_run / "model" / "preprocessor_config.json", tmp_path / "dinov2")
    args = run_args(tiny_run, tmp_path / "run", "--max_train_steps", "2")
    args[args.index("--model_name_or_path") + 1] = str(tmp_path / "dinov2")
    results = finetune.main(args)
    assert results["steps"] == 2 and results["gmacs"]["reduced"] < results["gmacs"]["unreduced"]
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["model_type"] == "freqdinov2_with_registers" and saved["reduction_layers"] == [1, 2]
