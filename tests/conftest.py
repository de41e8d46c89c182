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
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification


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


def real_images(folder, count=4):
    files = sorted(folder.rglob("*.JPEG"))[:: max(1, len(list(folder.rglob("*.JPEG"))) // count)][:count]
    return [Image.open(f).convert("RGB") for f in files]


EXPORT_CHECK = """
import sys
sys.modules["freqtr_hf"] = None  # the package is not importable: only the exported code may serve
import torch
from transformers import AutoModel, AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert "freqtr_hf" not in type(model).__module__, type(model).__module__
encoder = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(encoder).__name__ == "FreqViTModel", type(encoder).__name__
pixels = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(pixels).logits
    features = encoder(pixels).last_hidden_state
    assert torch.equal(features, model.vit(pixels).last_hidden_state)  # the classifier's own encoder weights
print((logits - torch.load(sys.argv[3])).abs().max().item())
"""


def remote_code_difference(folder: Path, pixels: torch.Tensor, logits: torch.Tensor, workdir: Path) -> float:
    """Load `folder` with `trust_remote_code` in a fresh process where `freqtr_hf` cannot be imported (EXPORT_CHECK)
    and return the largest difference of its logits on `pixels` from `logits`."""
    torch.save(pixels, workdir / "pixels.pt")
    torch.save(logits, workdir / "logits.pt")
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_CHECK, str(folder), str(workdir / "pixels.pt"), str(workdir / "logits.pt")],
        capture_output=True, text=True, cwd=workdir,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(workdir / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.strip().splitlines()[-1])


def vit_twin(config, attn_implementation="sdpa"):
    """A FreqViT and a transformers ViT with the same weights."""
    vit_config = ViTConfig(**{k: v for k, v in config.to_dict().items() if k in ViTConfig().to_dict()})
    vit = ViTForImageClassification(vit_config).eval()
    vit.set_attn_implementation(attn_implementation)
    model = FreqViTForImageClassification(config).eval()
    model.set_attn_implementation(attn_implementation)
    missing, unexpected = model.load_state_dict(vit.state_dict(), strict=False)
    assert not unexpected
    assert all(key.rsplit(".", 1)[-1] in ("high_pass_gain", "dc_gain", "dc_position_embeddings") for key in missing)
    return model, vit


class RecordingHubApi:
    """Stands in for `huggingface_hub.HfApi` (the Hub is unreachable here): records the calls it gets."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, folder_path))
        return f"https://huggingface.co/{repo_id}/commit/0"


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


ASSET_FIXTURES = {"deit_tiny", "imagenette_val", "default_deit", "running_space"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `assets` marker on every test that reads ../shared, by the fixtures it uses or its module's reference."""
    for item in items:
        module = getattr(item, "module", None)
        if ASSET_FIXTURES & set(getattr(item, "fixturenames", ())) or getattr(module, "REFERENCE", None) is not None:
            item.add_marker(pytest.mark.assets)


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
