"""The fine-tuning script (accelerate, one CPU process), publishing, and the Trainer example, on tiny data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import ViTForImageClassification, ViTImageProcessor

from conftest import tiny_config
from test_loading import EXPORT_CHECK

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import finetune  # noqa: E402
import trainer_example  # noqa: E402
from publish import publish_to_hub  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny pretrained ViT whose classes are `class 0 … class 9`, and image folders of two of them."""
    root = tmp_path_factory.mktemp("tiny_run")
    config = tiny_config(reduction_method="none", id2label={i: f"class {i}" for i in range(10)})
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(root / "model")
    ViTImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for label in range(2):
            folder = root / split / f"class {label}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def run_args(root: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(root / "model"), "--train_dir", str(root / "train"),
        "--validation_dir", str(root / "val"), "--output_dir", str(output), "--per_device_train_batch_size", "4",
        "--reduction_layers", "1", "2", "--dc_window_sizes", "2", "1", "--ema_decay", "0.9", *extra,
    ]


def test_finetune_writes_results_model_card_and_curve(tiny_run, tmp_path):
    results = finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "3", "--eval_steps", "2",
                                     "--with_tracking"))
    assert results["steps"] == 3
    assert {"before", "after", "unreduced", "gmacs"} <= results.keys()
    assert results["gmacs"]["reduced"] < results["gmacs"]["unreduced"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["history"]["step"] == [1, 2, 3] and len(saved["history"]["eval_top1"]) == 3
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    card = (tmp_path / "model" / "README.md").read_text()
    assert "trust_remote_code=True" in card and "lee2025frequency" in card and "GMACs" in card
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.rglob("*"))  # tensorboard


def test_resume_continues_exactly(tiny_run, tmp_path):
    # 16 images, batch 4: 4 steps an epoch, so the run crosses an epoch boundary after the resume point
    uninterrupted = tmp_path / "uninterrupted"
    finetune.main(run_args(tiny_run, uninterrupted, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert [p.name for p in finetune.checkpoints(uninterrupted)] == ["step_2", "step_4", "step_6"]
    # the interrupted run: its state at step 2 is the checkpoint; a fresh process resumes from it
    resumed = tmp_path / "resumed"
    finetune.main(run_args(tiny_run, resumed, "--max_train_steps", "6",
                           "--resume_from_checkpoint", str(uninterrupted / "step_2")))
    expected = load_file(uninterrupted / "model" / "model.safetensors")
    actual = load_file(resumed / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)
    history = json.loads((resumed / "results.json").read_text())["history"]
    assert history["step"] == [1, 2, 3, 4, 5, 6]


def test_an_interrupted_save_leaves_the_last_checkpoint_and_latest_finds_it(tiny_run, tmp_path):
    finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    (tmp_path / "step_4.tmp").mkdir()  # a save that was cut short
    (tmp_path / "step_4.tmp" / "model.safetensors").write_bytes(b"partial")
    assert [p.name for p in finetune.checkpoints(tmp_path)] == ["step_2"]
    results = finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "3",
                                     "--resume_from_checkpoint", "latest"))
    assert results["steps"] == 3


def test_a_broken_checkpoint_gives_a_clear_error(tiny_run, tmp_path):
    broken = tmp_path / "step_2"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot resume from .*step_2"):
        finetune.main(run_args(tiny_run, tmp_path / "out", "--max_train_steps", "3",
                               "--resume_from_checkpoint", str(broken)))


def test_distill_only_and_dynamicvit_train(tiny_run, tmp_path):
    results = finetune.main(run_args(tiny_run, tmp_path / "kl", "--max_train_steps", "2", "--distill_only"))
    assert results["steps"] == 2
    results = finetune.main(run_args(tiny_run, tmp_path / "dyn", "--max_train_steps", "2",
                                     "--reduction_method", "dynamicvit"))
    assert results["history"]["loss"][0] > 0


class RecordingHubApi:
    """Stands in for `huggingface_hub.HfApi` (the Hub is unreachable here): records the calls it gets."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, folder_path))
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_the_folder_to_publish_loads_in_a_fresh_process_and_is_uploaded(tiny_run, tmp_path):
    finetune.main(run_args(tiny_run, tmp_path, "--max_train_steps", "2", "--hub_model_id", "user/freqvit-tiny"))
    folder = tmp_path / "model"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_freqvit.py", "preprocessor_config.json", "README.md"} <= names
    assert "user/freqvit-tiny" in (folder / "README.md").read_text()

    from freqtr_hf import FreqViTForImageClassification

    pixels = torch.randn(2, 3, 64, 64)
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        torch.save(FreqViTForImageClassification.from_pretrained(folder).eval()(pixels).logits, tmp_path / "logits.pt")
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_CHECK, str(folder), str(tmp_path / "pixels.pt"), str(tmp_path / "logits.pt")],
        capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) == 0.0

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
    assert (tmp_path / "model.safetensors").exists()
