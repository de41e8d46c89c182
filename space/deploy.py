"""Deploy the Space to the Hugging Face Hub in one commit: app.py, README.md (the Space's front matter),
requirements.txt and, next to them, the `freqtr_hf` package folder that app.py imports.

    hf auth login                                   # or set HF_TOKEN
    python space/deploy.py user/freqvit-tokens [--private] [--default-model facebook/deit-small-patch16-224]

Running it again updates the Space; package files that no longer exist are deleted from it.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

SPACE = Path(__file__).resolve().parent
PACKAGE = SPACE.parent / "freqtr_hf"
SPACE_FILES = ("app.py", "README.md", "requirements.txt")


def stage_space(folder: Path) -> None:
    """Lay the Space repository's files out in `folder`: the space files at the top, the package beside them."""
    for name in SPACE_FILES:
        shutil.copy2(SPACE / name, folder / name)
    shutil.copytree(PACKAGE, folder / "freqtr_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def deploy(repo_id: str, private: bool = False, default_model: str | None = None, api: HfApi | None = None) -> str:
    """Create the Gradio Space `repo_id` if needed and upload the app with the package in one commit (so the Space
    never builds half an upload). `default_model` sets the Space variable `FREQTR_MODEL`. Returns the Space's URL."""
    api = api or HfApi()
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        stage_space(Path(folder))
        api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=folder,
            delete_patterns=["freqtr_hf/**"],  # stale package files; the ones uploaded now are kept
            commit_message="Deploy the FreqViT token-reduction Space",
        )
    if default_model:
        api.add_space_variable(repo_id, "FREQTR_MODEL", default_model)
    return str(url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo_id", help="the Space, e.g. user/freqvit-tokens")
    parser.add_argument("--private", action="store_true", help="create the Space private (if it does not exist yet)")
    parser.add_argument("--default-model", help="the model the Space shows first (its FREQTR_MODEL variable)")
    args = parser.parse_args(argv)
    print(deploy(args.repo_id, private=args.private, default_model=args.default_model))


if __name__ == "__main__":
    main()
