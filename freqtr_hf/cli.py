"""The `freqtr-hf` command line: argument parsing and the checks of local paths, so that `--help` and a mistyped
folder answer at once.

The commands import torch and transformers only once their arguments are parsed and checked; the work itself is in
`freqtr_hf.commands`, thin over the library. The lists of methods, presets, devices and dtypes are the library's own
(`models.freqvit.methods`, `devices`), which import nothing heavy.
"""

import argparse
import math
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .devices import DEVICE_CHOICES, DTYPE_CHOICES
from .models.freqvit.methods import FREQ_PRESETS, REDUCTION_METHODS, SCORE_SOURCES, TRAINING_FREE_METHODS
from .sources import check_local_paths

DEFAULT_MODEL = "facebook/deit-tiny-patch16-224"
DEFAULT_DATA = "frgfm/imagenette"
DEFAULT_DATA_CONFIG = "320px"  # that dataset's configurations are full_size, 320px and 160px

DESCRIPTION = """Frequency-aware token reduction for Vision Transformers (Lee et al., NeurIPS 2025) and its
baselines, on Hugging Face ViT/DeiT and DINOv2 checkpoints (export: also CLIP and SigLIP vision towers). Offline,
pass local folders to --model and --data."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0.0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def decay(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def keep_rate(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, dtype: bool = True, encoders: bool = False) -> None:
    """--model, --device and --dtype; `encoders`: the command takes encoders too, not only image classifiers."""
    kinds = ("any checkpoint of ViT, DeiT, DINOv2 (with or without registers) or CLIP's or SigLIP's vision tower (one "
             "without a classifier is written as an encoder)" if encoders else
             "an image classification checkpoint of ViT, DeiT or DINOv2 (with or without registers)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"Hub id or local folder: {kinds}, or one of these saved reduced")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: the GPU when there is one")
    if dtype:
        parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help="weights and activations")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")


def add_data_arguments(parser: argparse.ArgumentParser, many: bool = False) -> None:
    parser.add_argument(
        "--data", nargs="+" if many else None, default=[DEFAULT_DATA] if many else DEFAULT_DATA,
        help="folder of class sub-folders (e.g. ImageNet wnids), a save_to_disk folder, or a Hub dataset id",
    )
    if not many:  # the analysis reads folders and saved datasets as they are
        parser.add_argument("--split", default="validation", help="split of a Hub or saved dataset")
        parser.add_argument(
            "--dataset-config", help=f"configuration of a Hub dataset (for {DEFAULT_DATA}: {DEFAULT_DATA_CONFIG})"
        )
    parser.add_argument(
        "--every", type=positive_int, default=[1] if many else 1, nargs="+" if many else None,
        help="use every N-th image (files sorted by path)" + ("; one value, or one per --data" if many else ""),
    )
    parser.add_argument(
        "--synsets", help="class list (imagenet_synsets.txt: line = class index) mapping folder wnids to the model's classes"
    )


PRESET_HELP = (
    "freq: the paper's method, or freqtr_hf.TRAINING_FREE_FREQ (the best model without training: nearest merge, "
    "proportional attention, tempered DC weight; docs/training_free.md)"
)
# a reduction flag left out keeps the checkpoint's value (a saved FreqViT's own), else the config's default
CHECKPOINT_DEFAULT = " (default: the checkpoint's, else {})"


def add_reduction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-rate", type=keep_rate, nargs="+",
        help="share of tokens kept at each reduction layer: one, or one per layer" + CHECKPOINT_DEFAULT.format("0.7"),
    )
    parser.add_argument(
        "--reduction-layers", type=int, nargs="+", help="0-based blocks that reduce" + CHECKPOINT_DEFAULT.format("3 6 9")
    )
    parser.add_argument(
        "--dc-window-sizes", type=int, nargs="+",
        help="freq: DC windows per reduction layer" + CHECKPOINT_DEFAULT.format("2 1 1"),
    )
    parser.add_argument("--tome-r", type=positive_int, help="tome: merge r tokens in every block (the original ToMe)")
    parser.add_argument("--preset", choices=list(FREQ_PRESETS), help=PRESET_HELP + CHECKPOINT_DEFAULT.format("paper"))
    parser.add_argument(
        "--score-source", choices=SCORE_SOURCES,
        help="freq: rank tokens by the attention matrix, or by attention logits (no attention matrix, fused kernels)"
        + CHECKPOINT_DEFAULT.format("attention"),
    )


def build_parser() -> argparse.ArgumentParser:
    formatter = HelpFormatter
    parser = argparse.ArgumentParser(prog="freqtr-hf", description=DESCRIPTION, formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    evaluate = commands.add_parser(
        "evaluate", help="top-1, agreement, GMACs and images/s of reduction methods, side by side",
        description="Compare reduction methods with the unreduced model on one checkpoint and one image set.",
        formatter_class=formatter,
    )
    add_model_arguments(evaluate)
    add_data_arguments(evaluate)
    evaluate.add_argument(
        "--methods", nargs="+", default=["freq"], choices=REDUCTION_METHODS, metavar="METHOD",
        help=f"reduction methods; the unreduced model always runs too. One or more of: {', '.join(REDUCTION_METHODS)}",
    )
    add_reduction_arguments(evaluate)
    evaluate.add_argument("--output", help="also write the results as JSON to this file")
    evaluate.add_argument("--state-file", help="save progress here after every batch; the same command resumes")
    evaluate.add_argument("--restart", action="store_true", help="ignore a saved --state-file and start afresh")
    evaluate.add_argument(
        "--skip-bad-images", action="store_true", help="skip unreadable images (listed in the JSON) instead of stopping"
    )

    export = commands.add_parser(
        "export", help="write a ready-to-push folder of a training-free reducing model (weights, code, processor, model card)",
        description="Turn a ViT/DeiT, DINOv2, CLIP or SigLIP checkpoint into a reducing model folder that loads with "
        "trust_remote_code=True.",
        formatter_class=formatter,
    )
    add_model_arguments(export, dtype=False, encoders=True)  # the weights are written as the checkpoint holds them
    export.add_argument("--method", default="freq", choices=REDUCTION_METHODS[1:], help="reduction method")
    add_reduction_arguments(export)
    export.add_argument("--output", required=True, help="folder to write (new, empty, or an earlier export)")
    export.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier export in --output (a folder holding anything else is never replaced)",
    )
    export.add_argument("--data", help="optional: measure top-1 and agreement on these images for the model card")
    export.add_argument("--every", type=positive_int, default=1, help="with --data: every N-th image")
    export.add_argument("--synsets", help="with --data: class list mapping folder wnids to the model's classes")
    export.add_argument("--license", help="license of the model card (default: the base model's, else apache-2.0)")
    export.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repository")
    export.add_argument("--token", help="Hub token (default: the one `hf auth login` saved)")

    analyze = commands.add_parser(
        "analyze", help="the papers' frequency and reduction-pattern analyses: report.json, figures, report.md",
        description="Run each method over the data with provenance and attention output and write a report.",
        formatter_class=formatter,
    )
    add_model_arguments(analyze, dtype=False)  # the analysis runs in float32
    add_data_arguments(analyze, many=True)
    analyze.add_argument(
        "--methods", nargs="+", default=list(TRAINING_FREE_METHODS), choices=REDUCTION_METHODS[1:], metavar="METHOD",
        help=f"methods to analyse. One or more of: {', '.join(REDUCTION_METHODS[1:])}",
    )
    analyze.add_argument("--keep-rates", type=keep_rate, nargs="+", default=[0.5, 0.7, 0.9], help="keep rates")
    analyze.add_argument("--preset", choices=list(FREQ_PRESETS), default="paper", help=PRESET_HELP)
    analyze.add_argument("--output", required=True, help="folder for report.json, report.md and the figures")
    return parser


def package_version() -> str:
    try:
        return version("freqtr-hf")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = getattr(args, "methods", None) or [getattr(args, "method", None)]
    if getattr(args, "preset", None) not in (None, "paper") and "freq" not in methods:
        parser.error(f"--preset {args.preset} sets options of freq, which is not among the methods ({', '.join(methods)})")
    if hasattr(args, "dataset_config") and args.dataset_config is None and args.data == DEFAULT_DATA:
        args.dataset_config = DEFAULT_DATA_CONFIG
    try:
        check_local_paths(args)
    except ValueError as error:
        print(f"freqtr-hf: {error}", file=sys.stderr)
        return 2
    try:
        from . import commands

        return getattr(commands, f"run_{args.command}")(args)
    except KeyboardInterrupt:
        state = getattr(args, "state_file", None)
        resume = ""
        if state and Path(state).exists():
            resume = f"; run the same command again to resume from {state}"
        elif hasattr(args, "state_file") and not state:
            resume = "; with --state-file FILE a run can be resumed after an interruption"
        elif args.command == "analyze" and (Path(args.output) / "cache").exists():
            resume = f"; run the same command again to resume from the caches in {Path(args.output) / 'cache'}"
        print(f"\nfreqtr-hf: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
