"""Every training-free method on one checkpoint, without fine-tuning: top-1, agreement, GMACs and throughput per
keep rate, in one table.

    python benchmarks/methods.py [--model ../shared/assets/deit-tiny-patch16-224]
        [--data ../shared/assets/imagenette/val] [--every 4] [--keep-rates 0.9 0.7 0.5 0.25]

Within a keep rate, every batch runs through the unreduced model and each method in turn, so the throughputs are
measured side by side; speed-ups are against the unreduced model of the same keep-rate run.
"""

import argparse
import json

import torch
from transformers import AutoImageProcessor

from freqtr_hf.configuration_freqvit import TRAINING_FREE_METHODS
from freqtr_hf.evaluation import build_models, compare_methods, format_table, label_mapping, load_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="../shared/assets/deit-tiny-patch16-224")
    parser.add_argument("--data", default="../shared/assets/imagenette/val")
    parser.add_argument("--synsets", default="../shared/assets/imagenet_synsets.txt")
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--keep-rates", type=float, nargs="+", default=[0.9, 0.7, 0.5, 0.25])
    parser.add_argument("--methods", nargs="+", default=list(TRAINING_FREE_METHODS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", help="write all rows as JSON here")
    args = parser.parse_args()

    dataset = load_images(args.data, every=args.every)
    processor = AutoImageProcessor.from_pretrained(args.model)
    rows = []
    for keep_rate in args.keep_rates:
        models = build_models(args.model, args.methods, keep_rate, torch.float32)
        labels = label_mapping(dataset.features["label"].names, models["none"].config.id2label, args.synsets)
        results = compare_methods(models, dataset, processor, labels, batch_size=args.batch_size)
        print(f"\nkeep rate {keep_rate}, {len(dataset)} images")
        print(format_table(results), flush=True)
        rows += [r.__dict__ | {"keep_rate": keep_rate} for r in results]
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
