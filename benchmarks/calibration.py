"""Calibration across domains: the reduction's own parameters (`training/finetune.py --calibrate`) trained on a few
hundred unlabeled images of one data set, evaluated on both, beside the off-the-shelf model and full fine-tuning
in the same budget (same images, steps and batch size).

    python benchmarks/calibration.py [--model ../shared/assets/deit-tiny-patch16-224] [--keep-rate 0.7]
        [--images 320] [--steps 100] [--batch-size 32] [--starts paper training_free]
        [--modes calibrate finetune] [--work runs/calibration] [--output benchmarks/calibration.json]

The two domains are the shared data sets. Imagenette calibrates on `--images` random train images and is evaluated
on every 4th val image (982); the Imagewoof sample is split once, stratified by class, into `--images` to calibrate
on and the rest to evaluate on. The splits are saved under `--work` as `datasets` folders that `finetune.py` reads
(`--dataset_name`). Every training run checkpoints and resumes, and a finished one trains no further, so an
interrupted benchmark continues where it stopped. A cell reads `top-1 / agreement with the unreduced model` (%).
"""

import argparse
import subprocess
import sys
from pathlib import Path

import datasets
import torch
from transformers import AutoImageProcessor

sys.path.insert(0, str(Path(__file__).parent))
from methods import shared_asset  # noqa: E402

from freqtr_hf import FreqViTForImageClassification  # noqa: E402
from freqtr_hf.models.freqvit.configuration_freqvit import FREQ_PRESETS  # noqa: E402
from freqtr_hf.evaluation import build_models, compare_methods  # noqa: E402
from freqtr_hf.data import label_mapping, label_names, load_images  # noqa: E402
from freqtr_hf.runs import BENCHMARK_KIND, check_output_file, write_json  # noqa: E402
from freqtr_hf.cli import HelpFormatter, keep_rate, positive_int  # noqa: E402

FINETUNE = Path(__file__).parents[1] / "training" / "finetune.py"
MODES = {"calibrate": ["--calibrate"], "finetune": ["--distill_only", "--ema_decay", "0"]}


def domain_splits(args) -> dict[str, Path]:
    """Each domain's calibration and evaluation images as a saved DatasetDict (`train`, `validation`)."""
    imagenette = Path(args.imagenette)
    sources = {
        "imagenette": lambda: datasets.DatasetDict(
            train=load_images(str(imagenette / "train")).shuffle(seed=args.seed).select(range(args.images)),
            validation=load_images(str(imagenette / "val"), every=4),
        ),
        "imagewoof": lambda: datasets.DatasetDict(zip(
            ("train", "validation"),
            load_images(args.imagewoof).train_test_split(
                train_size=args.images, stratify_by_column="label", seed=args.seed).values(),
        )),
    }
    folders = {}
    for name, build in sources.items():
        folder = Path(args.work) / "data" / f"{name}-{args.images}-seed{args.seed}"
        if not (folder / "dataset_dict.json").exists():
            build().save_to_disk(str(folder))
        folders[name] = folder
    return folders


def train(args, start: str, mode: str, domain: str, data: Path) -> Path:
    """One run of finetune.py, resumed where it stopped (a finished one trains no further); its model folder.
    finetune.py refuses a folder that holds another job (other settings, model, data or preset), naming the field."""
    output = Path(args.work) / "runs" / f"{start}-{mode}-{domain}"
    command = [
        sys.executable, str(FINETUNE), "--model_name_or_path", args.model, "--dataset_name", str(data),
        "--synsets", args.synsets, "--output_dir", str(output), "--preset", start,
        "--keep_rate", str(args.keep_rate), "--max_train_steps", str(args.steps),
        "--per_device_train_batch_size", str(args.batch_size), "--seed", str(args.seed),
        "--mixed_precision", "no", "--checkpointing_steps", "20", "--resume_from_checkpoint", "latest",
        "--validation_every", "10",  # finetune's own check; the table below evaluates on every image
        *MODES[mode],
    ]
    print("$", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"{output}: finetune.py stopped (its message is above); remove a folder of another job, or pass "
                 "another --work")
    return output / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--model", default=shared_asset("deit-tiny-patch16-224"))
    parser.add_argument("--imagenette", default=shared_asset("imagenette"), help="with train/ and val/")
    parser.add_argument("--imagewoof", default=shared_asset("imagewoof_train_sample"))
    parser.add_argument("--synsets", default=shared_asset("imagenet_synsets.txt"))
    parser.add_argument("--keep-rate", type=keep_rate, default=0.7)
    parser.add_argument("--images", type=positive_int, default=320, help="calibration images per domain")
    parser.add_argument("--steps", type=positive_int, default=100, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--starts", nargs="+", choices=list(FREQ_PRESETS), default=list(FREQ_PRESETS))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--work", default="runs/calibration", help="splits, training runs")
    parser.add_argument("--output", help="write all rows as JSON here")
    args = parser.parse_args()
    if args.output:  # before any work: never a file this project did not write
        check_output_file(args.output, "--output", BENCHMARK_KIND)

    splits = domain_splits(args)
    trained = {(start, mode, domain): train(args, start, mode, domain, data)
               for start in args.starts for mode in args.modes for domain, data in splits.items()}

    torch.set_grad_enabled(False)
    processor = AutoImageProcessor.from_pretrained(args.model)
    models = build_models(args.model, [], 1.0)
    for start in args.starts:
        models[f"{start}, off the shelf"] = build_models(
            args.model, ["freq"], args.keep_rate, overrides=FREQ_PRESETS[start])["freq"]
        for mode in args.modes:
            for domain in splits:
                models[f"{start}, {mode} on {domain}"] = FreqViTForImageClassification.from_pretrained(
                    trained[(start, mode, domain)]).eval()
    rows = {name: {} for name in models if name != "none"}
    for domain, folder in splits.items():
        dataset = load_images(str(folder), split="validation")
        labels = label_mapping(label_names(dataset), models["none"].config.id2label, args.synsets)
        results, _ = compare_methods(models, dataset, processor, labels, batch_size=64)
        print(f"{domain}: {len(dataset)} images, unreduced top-1 {100 * results[0].top1:.1f}", flush=True)
        for name, result in zip(models, results):
            if name != "none":
                rows[name][domain] = {"images": len(dataset), "top1": result.top1, "agreement": result.agreement,
                                      "gmacs": result.gmacs}

    print(f"\nkeep {args.keep_rate}, {args.images} calibration images per domain, {args.steps} steps × "
          f"{args.batch_size}; cells: top-1 / agreement with unreduced (%)")
    print("| model | " + " | ".join(splits) + " |\n|---|" + "---|" * len(splits))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(
            f"{100 * cells[d]['top1']:.1f} / {100 * cells[d]['agreement']:.1f}" for d in splits) + " |")
    if args.output:
        write_json(args.output, {"rows": rows}, BENCHMARK_KIND)


if __name__ == "__main__":
    main()
