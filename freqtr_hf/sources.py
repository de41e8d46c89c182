"""What a `--model` or `--data` names: a Hub id or a local path, told apart before anything loads."""

import argparse
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def is_hub_id(name: str) -> bool:
    """Whether `name` names a Hub repository rather than a local folder or file."""
    if Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_local_paths(args: argparse.Namespace) -> None:
    """Name a flag whose local path is missing, before anything mistakes it for a Hub id."""
    model = Path(args.model)
    if not is_hub_id(args.model) and not model.exists():
        raise ValueError(f"--model: no folder {args.model}")
    if model.is_file():
        raise ValueError(f"--model: {args.model} is a file; give the checkpoint folder (the one with config.json)")
    if model.is_dir() and not (model / "config.json").exists():
        raise ValueError(f"--model: {args.model} has no config.json, so it is not a checkpoint folder")
    if model.is_dir() and not (model / "preprocessor_config.json").exists():
        raise ValueError(
            f"--model: {args.model} has no preprocessor_config.json (its image processor); save the processor with "
            "the weights (`processor.save_pretrained(folder)`)"
        )
    synsets = getattr(args, "synsets", None)
    if synsets and not Path(synsets).is_file():
        raise ValueError(f"--synsets: {synsets} is a folder; give the class-list file" if Path(synsets).is_dir()
                         else f"--synsets: no file {synsets}")
    for data in args.data if isinstance(args.data, list) else [args.data]:
        if data and not is_hub_id(data) and not Path(data).exists():
            raise ValueError(f"--data: no folder {data}")
