"""FreqViT against transformers' ViT on the same (random) weights: CPU throughput side by side in one run.

    python benchmarks/speed.py [--sizes small base] [--batch-size 32] [--rounds 5]

Each round times every model once on the same batch, in turn (the order rotates between rounds). A speed-up is the
median over rounds of the ratio within a round (ViT's time / the model's time), so each ratio pairs timings taken
seconds apart on a noisy machine. Goal (issue 2): speed-up >= 90% of the MAC ratio; with
reduction off, FreqViT within 3% of ViT.
"""

import argparse
import statistics
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification, count_macs

DEIT_SHAPES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


def models_for(size: str) -> dict[str, tuple[torch.nn.Module, int]]:
    """ViT, FreqViT with reduction off and FreqViT with the default schedule, sharing one set of weights."""
    width, heads = DEIT_SHAPES[size]
    shape = dict(hidden_size=width, num_attention_heads=heads, intermediate_size=4 * width, num_labels=1000)
    vit = ViTForImageClassification(ViTConfig(**shape)).eval()
    models = {"vit": (vit, count_macs(vit.config))}
    for name, config in (("freqvit-off", FreqViTConfig(**shape, reduction_method="none")),
                         ("freqvit", FreqViTConfig(**shape))):
        model = FreqViTForImageClassification(config).eval()
        model.load_state_dict(vit.state_dict(), strict=False)
        models[name] = (model, count_macs(config))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=DEIT_SHAPES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32, batch {args.batch_size}")
    for size in args.sizes:
        models = models_for(size)
        pixels = torch.randn(args.batch_size, 3, 224, 224)
        times = {name: [] for name in models}
        with torch.inference_mode():
            for model, _ in models.values():  # warm-up
                model(pixels)
            names = list(models)
            for round_index in range(args.rounds):
                # rotate the order, so that no model always runs first (or after the same one)
                for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                    model = models[name][0]
                    start = time.perf_counter()
                    model(pixels)
                    times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) for name, values in times.items()}
        speedups = {
            name: statistics.median(vit_time / model_time for vit_time, model_time in zip(times["vit"], values))
            for name, values in times.items()
        }
        vit_macs = models["vit"][1]
        print(f"\nDeiT-{size[0].upper()} shapes")
        print(f"{'model':<12} {'GMACs':>7} {'img/s':>8} {'speed-up':>9} {'MAC ratio':>10} {'speed-up / MAC ratio':>21}")
        for name, (_, macs) in models.items():
            speedup, mac_ratio = speedups[name], vit_macs / macs
            print(f"{name:<12} {macs / 1e9:>7.2f} {args.batch_size / median[name]:>8.1f} {speedup:>8.2f}x "
                  f"{mac_ratio:>9.2f}x {100 * speedup / mac_ratio:>20.1f}%")


if __name__ == "__main__":
    main()
