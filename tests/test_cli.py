"""`freqtr-hf evaluate` and the evaluation it runs, on the shared DeiT-Tiny and Imagenette images."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoImageProcessor

from freqtr_hf.cli import main
from freqtr_hf.evaluation import build_models, compare_methods, label_mapping, load_images

from conftest import SYNSETS


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


def test_an_interrupted_evaluation_resumes(deit_tiny, imagenette_val, tmp_path):
    dataset = load_images(str(imagenette_val), every=400)
    processor = AutoImageProcessor.from_pretrained(deit_tiny)
    models = build_models(str(deit_tiny), ["freq"], 0.7, dtype=torch.float32)
    labels = label_mapping(dataset.features["label"].names, models["none"].config.id2label, str(SYNSETS))
    state = tmp_path / "state.json"
    # the "interruption": a first run that only got through the first 4 images
    compare_methods(models, dataset.select(range(4)), processor, labels, batch_size=2, state_file=str(state))
    assert json.loads(state.read_text())["done"] == 4
    resumed = compare_methods(models, dataset, processor, labels, batch_size=2, state_file=str(state))
    fresh = compare_methods(models, dataset, processor, labels, batch_size=2)
    assert json.loads(state.read_text())["done"] == len(dataset)
    assert [(r.top1, r.agreement) for r in resumed] == [(r.top1, r.agreement) for r in fresh]


def test_wnid_folders_map_to_imagenet_classes(deit_tiny):
    if not SYNSETS.exists():
        pytest.skip(f"{SYNSETS} is absent")
    id2label = {i: f"class {i}" for i in range(1000)}
    assert label_mapping(["n01440764", "n01443537", "unknown"], id2label, str(SYNSETS)) == [0, 1, -1]
    assert label_mapping(["tench", "goldfish"], id2label, str(SYNSETS)) == [0, 1]


def test_unreachable_hub_gives_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "freqtr_hf.cli", "evaluate", "--model", "facebook/deit-tiny-patch16-224",
         "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "pass local folders with --model and --data" in message[0]
