import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification, count_macs

from conftest import tiny_config

DEIT = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


@pytest.mark.parametrize(
    "size, unreduced, reduced", [("tiny", 1.25, 0.81), ("small", 4.60, 3.00), ("base", 17.56, 11.51)]
)
def test_deit_shapes_give_the_papers_gmacs(size, unreduced, reduced):
    width, heads = DEIT[size]
    shape = dict(hidden_size=width, num_attention_heads=heads, intermediate_size=4 * width, num_labels=1000)
    assert count_macs(FreqViTConfig(**shape, reduction_method="none")) / 1e9 == pytest.approx(unreduced, rel=0.01)
    assert count_macs(ViTConfig(**shape)) == count_macs(FreqViTConfig(**shape, reduction_method="none"))
    assert count_macs(FreqViTConfig(**shape)) / 1e9 == pytest.approx(reduced, rel=0.01)


@pytest.mark.parametrize("overrides", [{}, dict(reduction_method="none"), dict(keep_rate=(0.5, 0.9))])
@pytest.mark.parametrize("image_size", [None, (96, 80)])
def test_count_equals_torch_flop_counter(overrides, image_size):
    config = tiny_config(**overrides)
    model = FreqViTForImageClassification(config).eval()
    model.set_attn_implementation("eager")  # torch's counter sees every matmul of eager attention
    pixels = torch.randn(1, 3, *(image_size or (64, 64)))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixels, interpolate_pos_encoding=image_size is not None)
    assert counter.get_total_flops() == 2 * count_macs(config, image_size)


def test_reduction_lowers_the_count():
    assert count_macs(tiny_config()) < count_macs(tiny_config(reduction_method="none"))

