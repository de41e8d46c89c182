"""The fingerprint of a run: everything that changes its result, so that a resumed job continues only the same job.

A fingerprint is a flat dict of JSON values. `mismatch` compares a saved one with the current one and names the
fields that differ, for the error a resume gives.
"""

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_FILES = ("config.json", "preprocessor_config.json")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def slug(text: str) -> str:
    """`text` as a file name: letters, digits and `-_.@` kept, anything else (a path's `/`) turned into `_`."""
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)


def value_digest(value) -> str:
    """A short SHA-256 of a JSON value (keys sorted, other types by `str`): a fingerprint field for settings too
    large to compare field by field."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_digest(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """SHA-256 over a list of files: their names (relative to `root`) and sizes, in the order given. Cheap for
    thousands of images, and it changes when a file is added, removed, renamed or resized."""
    digest = hashlib.sha256()
    for path in paths:
        name = os.path.relpath(path, root) if root is not None else str(path)
        digest.update(f"{name}\0{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()


def model_digest(model: str, commit_hash: str | None = None) -> str:
    """What identifies a checkpoint: the SHA-256 of a local folder's weight files, its config and its preprocessor
    config (a reduction option or an image size edited in place is another model), or the Hub commit it was loaded
    from (`config._commit_hash`)."""
    folder = Path(model)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_FILES)
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.name}\0{file_digest(path)}\n".encode())
        return digest.hexdigest()
    return f"hub:{model}@{commit_hash or 'unknown'}"


def resolved_source(name: str | None) -> str | None:
    """A model, data or file source as a fingerprint field: an existing local path as its absolute real path, so that
    `../x` given in one folder and `/abs/x` in another are the same run; anything else (a Hub id) as given."""
    return os.path.realpath(name) if name is not None and os.path.exists(name) else name


def mismatch(saved: dict, current: dict) -> str | None:
    """None when the fingerprints are equal, else a sentence naming every field that differs."""
    fields = [field for field in sorted(set(saved) | set(current)) if saved.get(field) != current.get(field)]
    if not fields:
        return None
    return "; ".join(
        f"{field} differs (saved run: {_short(saved.get(field))}, this run: {_short(current.get(field))})"
        for field in fields
    )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
