"""Shared fixtures: tiny random configs for mechanics, `../shared/assets` for real-weight checks."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessorPil

from freqtr_hf import FreqViTConfig


# the same generated examples on every run, so CI never fails on an example no earlier run drew;
# `--hypothesis-profile default` draws fresh ones
settings.register_profile("repeatable", derandomize=True)
settings.load_profile("repeatable")


ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
DEIT_TINY = ASSETS / "deit-tiny-patch16-224"
IMAGENETTE_VAL = ASSETS / "imagenette" / "val"
SYNSETS = ASSETS / "imagenet_synsets.txt"


def tiny_config(**overrides) -> FreqViTConfig:
    """A 4-block ViT on 64 px images with 8 px patches (8x8 grid), reducing after blocks 1 and 2."""
    values = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=8,
        reduction_layers=(1, 2),
        dc_window_sizes=(2, 1),
        num_labels=10,
        layer_norm_eps=1e-6,
    )
    values.update(overrides)
    return FreqViTConfig(**values)


def write_tiny_vit(folder: Path) -> Path:
    """A tiny random ViT checkpoint whose classes are `class 0 … class 9`, with an image processor (64 px)."""
    torch.manual_seed(0)
    config = tiny_config(reduction_method="none", id2label={i: f"class {i}" for i in range(10)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 64, "width": 64}, do_center_crop=False).save_pretrained(folder)
    return folder


def write_images(folder: Path, classes: list[str], count: int, seed: int = 0) -> None:
    """`count` random 80x72 PNGs in a sub-folder per class."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")


@pytest.fixture
def deit_tiny() -> Path:
    if not DEIT_TINY.exists():
        pytest.skip(f"real-weight check: {DEIT_TINY} is absent (the shared offline assets are not beside the repo)")
    return DEIT_TINY


@pytest.fixture
def imagenette_val() -> Path:
    if not IMAGENETTE_VAL.exists():
        pytest.skip(f"real-image check: {IMAGENETTE_VAL} is absent (the shared offline assets are not beside the repo)")
    return IMAGENETTE_VAL


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """Another process holds `path` (a state file, an output folder) as a run does, until the block ends; then it
    is killed (SIGKILL: no clean-up of its own), as a crashed run would be."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from freqtr_hf.runs import exclusive_use\n"
         "with exclusive_use(sys.argv[1], 'x'):\n print('held', flush=True); time.sleep(600)", str(path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
