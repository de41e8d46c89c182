"""The speed benchmark's own pieces: the zero-cost reduction it measures the ceiling with, and a short run."""

import subprocess
import sys
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import FreeReduction  # noqa: E402

SHAPE = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=6, image_size=64,
             patch_size=8, num_labels=5)


def test_the_free_reduction_runs_at_the_token_counts_of_freq():
    vit = ViTForImageClassification(ViTConfig(**SHAPE)).eval()
    config = FreqViTConfig(**SHAPE, reduction_method="freq", reduction_layers=(1, 3), dc_window_sizes=(2, 1))
    freq = FreqViTForImageClassification(config).eval()
    lengths = []
    free = FreeReduction(vit, config)
    for layer in vit.vit.layers:
        layer.mlp.register_forward_hook(lambda module, args, output: lengths.append(output.shape[1]))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = free(pixels)
        hidden = freq(pixels, output_hidden_states=True).hidden_states
    assert logits.shape == (2, 5)
    assert lengths == [h.shape[1] for h in hidden[1:]] == [65, 49, 49, 32, 32, 32]  # 44 kept + 4 DC, then 30 + 1


def test_the_speed_benchmark_prints_every_model():
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--device", "cpu", "--sizes", "tiny",
               "--batch-sizes", "1", "--rounds", "1", "--methods", "freq", "free-cut"]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
    rows = {line.split()[0] for line in printed.splitlines() if line and line.split()[0] in ("vit", "freq", "free-cut")}
    assert rows == {"vit", "freq", "free-cut"}
