"""benchmarks/dense.py: its mIoU against the definition, and a short run on a CamVid-layout folder of generated
scenes with a tiny checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_tiny_vit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from dense import CLASSES, VOID, mean_iou, quarter_targets  # noqa: E402


def test_mean_iou_is_the_mean_over_classes_of_intersection_over_union():
    """A head that is the identity on one-hot class features predicts the features' class; void pixels are ignored
    and a class absent from both prediction and truth is left out of the mean."""
    head = torch.nn.Conv2d(len(CLASSES), len(CLASSES), 1)
    with torch.no_grad():
        head.weight.copy_(torch.eye(len(CLASSES))[..., None, None])
        head.bias.zero_()
    predicted = torch.tensor([[[0, 0], [1, 2]]])  # (1, 2, 2) classes
    features = torch.nn.functional.one_hot(predicted, len(CLASSES)).permute(0, 3, 1, 2).float() * 10
    truth = torch.tensor([[[0, 1], [1, VOID]]])
    # class 0: 1 / 2 (one right, one predicted where truth is 1); class 1: 1 / 2; class 2 only at a void pixel: absent
    assert mean_iou(head, features, truth) == pytest.approx(100 * (0.5 + 0.5) / 2)


def test_quarter_targets_keep_the_labels():
    labels = torch.randint(0, 12, (2, 8, 12))
    assert torch.equal(quarter_targets(labels), labels[:, ::4, ::4])


def write_scenes(folder: Path, count: int, seed: int) -> None:
    """`count` 64x96 scenes: a sky band (class 0) over a road (class 3) with a car (class 8), void at the border."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(count):
        label = np.full((64, 96), 3, dtype=np.uint8)
        horizon = rng.integers(16, 40)
        label[:horizon] = 0
        left = rng.integers(0, 60)
        label[horizon : horizon + 16, left : left + 24] = 8
        label[:, :2] = VOID
        colours = np.array([[120, 170, 250], [0, 0, 0], [0, 0, 0], [90, 90, 90]] + [[0, 0, 0]] * 4 + [[200, 30, 30]]
                           + [[0, 0, 0]] * 3, dtype=np.float64)
        image = colours[label] + rng.normal(0, 10, (64, 96, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / "images" / f"{i}.jpg")
        Image.fromarray(label).save(folder / "labels" / f"{i}.png")


@pytest.mark.slow
def test_a_short_run_measures_every_restoration_and_fine_tunes(tmp_path):
    write_tiny_vit(tmp_path / "vit")
    for split, count in (("train", 6), ("val", 3)):
        write_scenes(tmp_path / "camvid" / split, count, seed=len(split))
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dense.py"), "--checkpoint", str(tmp_path / "vit"),
         "--data", str(tmp_path / "camvid"), "--size", "64", "96", "--methods", "freq", "tome", "--keep-rates", "0.7",
         "--finetune-epochs", "1", "--batch-size", "3", "--output", str(tmp_path / "dense.json")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "dense.json").read_text())
    rows = {(row["method"], row["restoration"]): row for row in record["rows"]}
    assert set(rows) == {("none", None)} | {(m, r) for m in ("freq", "tome") for r in ("carrier", "residual", "nearest")}
    assert all(0 <= row["miou"] <= 100 for row in rows.values())
    assert rows[("freq", "nearest")]["gmacs"] < rows[("none", None)]["gmacs"]
    assert set(record["fine_tuned"]["miou"]) == {"none", "freq 0.7", "tome 0.7"}
    assert "freq        0.70" in result.stdout and "fine-tuned 1 epoch(s), freq 0.7" in result.stdout
