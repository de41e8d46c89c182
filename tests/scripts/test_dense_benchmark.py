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


def dense_run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dense.py"), "--checkpoint", str(tmp_path / "vit"),
         "--data", str(tmp_path / "camvid"), "--size", "64", "96", "--methods", "freq", "tome", "--keep-rates", "0.7",
         "--batch-size", "3", *extra],
        capture_output=True, text=True, cwd=tmp_path,
    )


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    write_tiny_vit(tmp_path / "vit")
    for split, count in (("train", 6), ("val", 3)):
        write_scenes(tmp_path / "camvid" / split, count, seed=len(split))
    return tmp_path


@pytest.mark.slow
def test_a_short_run_measures_every_restoration_and_fine_tunes(scenes):
    tmp_path = scenes
    result = dense_run(tmp_path, "--finetune-epochs", "1", "--output", str(tmp_path / "dense.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "dense.json").read_text())
    rows = {(row["method"], row["restoration"]): row for row in record["rows"]}
    assert set(rows) == {("none", None)} | {(m, r) for m in ("freq", "tome") for r in ("carrier", "residual", "nearest")}
    assert all(0 <= row["miou"] <= 100 for row in rows.values())
    assert rows[("freq", "nearest")]["gmacs"] < rows[("none", None)]["gmacs"]
    assert set(record["fine_tuned"]["miou"]) == {"none", "freq 0.7", "tome 0.7"}
    assert "freq        0.70" in result.stdout and "fine-tuned 1 epoch(s), freq 0.7" in result.stdout


@pytest.mark.slow
def test_a_run_resumes_from_its_state_and_refuses_another_jobs(scenes):
    """The state of a run stopped after some measurements (here: a state holding only the first two, as an
    interrupted run leaves it) is resumed to the figures of an uninterrupted run; a state of other settings is refused
    naming them, before any work."""
    tmp_path = scenes
    whole = dense_run(tmp_path, "--state-file", str(tmp_path / "state.json"), "--output", str(tmp_path / "a.json"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    state = json.loads((tmp_path / "state.json").read_text())
    first_two = dict(list(state["done"].items())[:2])
    (tmp_path / "state.json").write_text(json.dumps({**state, "done": first_two}))
    resumed = dense_run(tmp_path, "--state-file", str(tmp_path / "state.json"), "--output", str(tmp_path / "b.json"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads((tmp_path / name).read_text())["rows"] for name in ("a.json", "b.json")]
    assert rows[0] == rows[1]
    assert list(first_two) == ["freq 0.7 carrier", "freq 0.7 residual"]
    assert "freq 0.7 carrier" not in resumed.stderr and "tome 0.7 nearest" in resumed.stderr  # skipped, then measured
    other = dense_run(tmp_path, "--state-file", str(tmp_path / "state.json"), "--size", "64", "80")
    assert other.returncode == 2 and "--state-file" in other.stderr and "size differs" in other.stderr
    assert "unreduced" not in other.stdout  # refused before any work
