"""`freqtr-hf evaluate`: compare reduction methods on one checkpoint and one image set."""

import argparse
import sys

import torch
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from .configuration_freqvit import REDUCTION_METHODS
from .evaluation import format_table, results_json, run_evaluation


DEFAULT_MODEL = "facebook/deit-tiny-patch16-224"
DEFAULT_DATA = "frgfm/imagenette"
DEFAULT_DATA_CONFIG = "320px"  # that dataset's configurations are full_size, 320px and 160px


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freqtr-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="top-1, agreement, GMACs and images/s per reduction method")
    evaluate.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or folder of a ViT/DeiT/FreqViT checkpoint")
    evaluate.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="folder of class sub-folders (e.g. ImageNet wnids), a saved dataset folder, or a Hub dataset id",
    )
    evaluate.add_argument("--split", default="validation", help="split of a Hub or saved dataset")
    evaluate.add_argument(
        "--dataset-config", help=f"configuration of a Hub dataset (default for {DEFAULT_DATA}: {DEFAULT_DATA_CONFIG})"
    )
    evaluate.add_argument("--every", type=int, default=1, help="use every N-th image (files sorted by path)")
    evaluate.add_argument("--synsets", help="class list mapping folder names (wnids) to the model's class indices")
    evaluate.add_argument("--methods", nargs="+", default=["freq"], choices=REDUCTION_METHODS)
    evaluate.add_argument("--keep-rate", type=float, default=0.7)
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    evaluate.add_argument("--output", help="also write the results as JSON to this file")
    evaluate.add_argument("--state-file", help="save progress here after every batch; rerun to resume")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dataset_config is None and args.data == DEFAULT_DATA:
        args.dataset_config = DEFAULT_DATA_CONFIG
    try:
        results = run_evaluation(
            args.model,
            args.data,
            args.methods,
            keep_rate=args.keep_rate,
            batch_size=args.batch_size,
            every=args.every,
            split=args.split,
            dataset_config=args.dataset_config,
            synsets=args.synsets,
            dtype=getattr(torch, args.dtype),
            state_file=args.state_file,
        )
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"freqtr-hf: cannot load {args.model!r} or {args.data!r} ({first_line}); without the Hugging Face Hub, "
            "pass local folders with --model and --data",
            file=sys.stderr,
        )
        return 2
    except ValueError as error:
        print(f"freqtr-hf: {error}", file=sys.stderr)
        return 2
    run = {"model": args.model, "data": args.data, "every": args.every, "batch_size": args.batch_size}
    text = results_json(results, **run)
    print(format_table(results))
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
