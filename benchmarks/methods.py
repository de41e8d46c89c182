"""Every training-free method on one checkpoint, without fine-tuning: top-1, agreement with the unreduced model,
GMACs and throughput per data set and keep rate, in tables, a JSON file and a plot of accuracy against GMACs.

    python benchmarks/methods.py [--model ../shared/assets/deit-tiny-patch16-224]
        [--data ../shared/assets/imagenette/val ../shared/assets/imagewoof_train_sample] [--every 4 1]
        [--keep-rates 0.9 0.7 0.5 0.25] [--output benchmarks/methods.json] [--plot docs/keep_rate.png]

Within a data set and keep rate, every batch runs through the unreduced model and each method in turn, so the
throughputs are measured side by side. `freq_logits` is `freq` with `score_source="logits"`. Per-layer ToMe (`tome_r`, the original form) runs at the r whose GMACs are
closest to the per-stage methods' at that keep rate (none at 0.25, below its ⌊(t − 1)/2⌋ cap).
"""

import argparse
import os
from pathlib import Path

import torch
from transformers import AutoImageProcessor

from freqtr_hf import FreqViTConfig, count_macs
from freqtr_hf.models.freqvit.configuration_freqvit import TRAINING_FREE_METHODS
from freqtr_hf.devices import describe, resolve_device
from freqtr_hf.evaluation import build_models, compare_methods, format_table
from freqtr_hf.data import label_mapping, label_names, load_images
from freqtr_hf.runs import BENCHMARK_KIND, FIGURE, check_output_file, write_figure, write_json
from freqtr_hf.cli import HelpFormatter, positive_int, keep_rate as parse_keep_rate


SHARED_ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"  # ../shared/assets beside the repository
SHARED_DATA = {"imagenette/val": 4, "imagewoof_train_sample": 1}  # the shared data sets and the step each is read at


def shared_asset(name: str) -> str:
    """The path of a shared asset relative to the working directory (`../shared/assets/<name>` from the repository
    root), so the benchmarks run from any folder and print the same short paths."""
    return os.path.relpath(SHARED_ASSETS / name)


def add_shared_data_arguments(parser: argparse.ArgumentParser, keep_rates: list[float]) -> None:
    """The checkpoint, the two shared data sets (every 4th Imagenette val image, the whole Imagewoof sample), the
    synset list and the keep rates: the flags every accuracy benchmark shares (see `check_shared_data_arguments`)."""
    parser.formatter_class = HelpFormatter
    parser.add_argument("--model", default=shared_asset("deit-tiny-patch16-224"), help="ViT/DeiT checkpoint folder")
    parser.add_argument("--data", nargs="+", default=[shared_asset(name) for name in SHARED_DATA],
                        help="image folders (class sub-folders) or saved datasets")
    parser.add_argument("--every", type=positive_int, nargs="+",
                        help="read every N-th image: one value for all --data, or one per --data (default: 4 and 1 "
                        "for the two shared data sets, else 1)")
    parser.add_argument("--synsets", default=shared_asset("imagenet_synsets.txt"),
                        help="class list mapping folder wnids to the model's classes")
    parser.add_argument("--keep-rates", type=parse_keep_rate, nargs="+", default=keep_rates, help="keep rates to compare")


def check_shared_data_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve `--every` to one value per data set, or exit naming the flag."""
    if args.every is None:
        steps = {shared_asset(name): step for name, step in SHARED_DATA.items()}
        args.every = [steps.get(data, 1) for data in args.data]
    elif len(args.every) == 1:
        args.every = args.every * len(args.data)
    if len(args.every) != len(args.data):
        parser.error(f"--every: give one value, or one per --data ({len(args.data)}), got {len(args.every)}")
    if min(args.every) < 1:
        parser.error(f"--every: must be >= 1, got {args.every}")


def matched_tome_r(model: str, keep_rate: float) -> int | None:
    """The per-layer ToMe r whose MACs are closest to the per-stage `freq` schedule at `keep_rate`, if it is within 3%."""
    config = FreqViTConfig.from_pretrained(model)
    target = count_macs(FreqViTConfig.from_dict(config.to_dict(), keep_rate=keep_rate))
    macs = {r: count_macs(FreqViTConfig.from_dict(config.to_dict(), reduction_method="tome", tome_r=r)) for r in range(1, 33)}
    best = min(macs, key=lambda r: abs(macs[r] - target))
    return best if abs(macs[best] - target) <= 0.03 * target else None


def plot(rows: list[dict], path: str) -> None:
    """Top-1 (or agreement, without labels) against GMACs, one line per method, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(row["data"] for row in rows))
    root = os.path.commonpath(datasets) if len(datasets) > 1 else str(Path(datasets[0]).parent)
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for axis, data in zip(axes[0], datasets):
        subset = [row for row in rows if row["data"] == data]
        unreduced = next(row for row in subset if row["method"] == "none")
        line_of = {row["method"]: "tome (per layer)" if row["method"].startswith("tome_r") else row["method"]
                   for row in subset}
        for line in dict.fromkeys(line_of[row["method"]] for row in subset if row["method"] != "none"):
            points = sorted((r["gmacs"], 100 * (r["top1"] if r["top1"] is not None else r["agreement"]))
                            for r in subset if line_of[r["method"]] == line)
            axis.plot(*zip(*points), "o-", label=line, linewidth=2.5 if line.startswith("freq") else 1.2)
        axis.axhline(100 * (unreduced["top1"] if unreduced["top1"] is not None else 1.0), color="grey", ls="--",
                     label=f"unreduced ({unreduced['gmacs']:.2f} GMACs)")
        axis.set_title(f"{os.path.relpath(data, root)} ({unreduced['images']} images)")
        axis.set_xlabel("GMACs per image")
        axis.set_ylabel("top-1 %" if unreduced["top1"] is not None else "agreement with unreduced %")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Training-free token reduction: accuracy against cost (keep rates 0.9 → 0.25, right to left)")
    figure.tight_layout()
    write_figure(figure, path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_data_arguments(parser, keep_rates=[0.9, 0.7, 0.5, 0.25])
    parser.add_argument("--methods", nargs="+", default=list(TRAINING_FREE_METHODS))
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--output", help="write all rows as JSON here")
    parser.add_argument("--plot", help="write the accuracy-against-GMACs plot here (PNG)")
    args = parser.parse_args()
    for flag, kind in (("--output", BENCHMARK_KIND), ("--plot", FIGURE)):  # before any work: never a file this project did not write
        if getattr(args, flag[2:], None):
            check_output_file(getattr(args, flag[2:]), flag, kind)
    check_shared_data_arguments(parser, args)

    device = resolve_device(args.device)
    print(f"{describe(device)}, float32, batch {args.batch_size}")
    processor = AutoImageProcessor.from_pretrained(args.model)
    rows = []
    for data, every in zip(args.data, args.every):
        dataset = load_images(data, every=every)
        for keep_rate in args.keep_rates:
            models = build_models(args.model, args.methods, keep_rate, device=device)
            variants = {}
            tome_r = matched_tome_r(args.model, keep_rate) if "tome" in args.methods else None
            if tome_r is not None:
                variants[f"tome_r{tome_r}"] = ("tome", {"tome_r": tome_r})
            if "freq" in args.methods:  # the paper's attention-free score (App. J)
                variants["freq_logits"] = ("freq", {"score_source": "logits"})
            for name, (method, overrides) in variants.items():
                models[name] = build_models(args.model, [method], keep_rate, device=device, overrides=overrides)[method]
            labels = label_mapping(label_names(dataset), models["none"].config.id2label, args.synsets)
            results, _ = compare_methods(models, dataset, processor, labels, batch_size=args.batch_size)
            for name, row in zip(models, results):
                row.method = name
            print(f"\n{data}, keep rate {keep_rate}, {len(dataset)} images")
            print(format_table(results), flush=True)
            rows += [r.__dict__ | {"keep_rate": keep_rate, "data": data, "images": len(dataset)} for r in results]
    if args.output:
        write_json(args.output, {"rows": rows}, BENCHMARK_KIND)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
