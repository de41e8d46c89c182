"""The one data layer: images from a folder of class sub-folders, a saved dataset or the Hub, their labels mapped to
a model's classes, and batches read with the one image reader under one bad-image policy. Evaluation, the analysis,
fine-tuning and the benchmarks read their data here.
"""

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import torch
from transformers import BaseImageProcessor

from .fingerprint import files_digest
from .images import ImageReadError, read_image


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_synsets(path: str | os.PathLike) -> list[tuple[str, str]]:
    """`(wnid, first name)` per line of a synset list (`n01440764 tench, Tinca tinca`), in class-index order."""
    entries = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            wnid, _, names = line.strip().partition(" ")
            entries.append((wnid, names.split(",")[0].strip()))
    return entries


def label_mapping(label_names: list[str], id2label: dict[int, str], synsets_path: str | None) -> list[int]:
    """Model class of each dataset label, -1 where unknown: by WordNet id or first name through the synset list,
    else by the model's own label names, else the identity when the label spaces have the same size."""
    keys = {}
    if synsets_path:
        for index, (wnid, name) in enumerate(read_synsets(synsets_path)):
            keys.setdefault(wnid, index)
            keys.setdefault(name, index)
    for index, label in id2label.items():
        keys.setdefault(label.split(",")[0].strip(), int(index))
    mapped = [keys.get(name, keys.get(name.split(",")[0].strip(), -1)) for name in label_names]
    if label_names and all(index < 0 for index in mapped) and len(label_names) == len(id2label):
        warnings.warn(
            f"no class of the data ({', '.join(label_names[:3])}, ...) is among the model's labels or the synset list; "
            f"as both have {len(label_names)} classes they are matched by position (data class i = model class i)",
            stacklevel=2,
        )
        return list(range(len(label_names)))
    return mapped


def label_names(dataset: datasets.Dataset) -> list[str]:
    """The class names of a data set's `label` column, or [] when it has none. A label column that is not a
    `ClassLabel` (plain integers or strings) raises `ValueError` naming it: its numbers say nothing about classes."""
    if "label" not in dataset.features:
        return []
    feature = dataset.features["label"]
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(
            f"data: its 'label' column holds {feature!r}, not class names (a datasets ClassLabel); cast it with "
            "dataset.cast_column('label', ClassLabel(names=[...])) or use a folder of class sub-folders"
        )
    return list(feature.names)


def load_images(
    data: str, split: str = "validation", every: int = 1, dataset_config: str | None = None
) -> datasets.Dataset:
    """Images with a `label` column, every `every`-th: a local folder of class sub-folders (files sorted by path),
    a dataset saved with `save_to_disk`, or a Hub dataset id. The `image` column is left undecoded, so that every
    image goes through `read_image` (one reader, and errors that name the file)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every: must be a whole number >= 1 (use every N-th image), got {every!r}")
    path = Path(data)
    if path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        dataset = datasets.load_from_disk(data)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"data: {data} has no split {split!r} (its splits: {', '.join(dataset)})")
            dataset = dataset[split]
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[::every]
        if not files:
            raise ValueError(f"data: no images under {data}")
        # explicit data_files: file names such as ILSVRC2012_val_* would otherwise make `datasets` split them off
        # explicit labels: with a single class folder `datasets` would drop them
        with _quiet_datasets():  # its "Downloading data" bars for local files read oddly offline
            dataset = datasets.load_dataset("imagefolder", data_files={"eval": files}, split="eval", drop_labels=False)
        if len(dataset) != len(files):
            raise RuntimeError(f"data: {len(files)} images found under {data} but {len(dataset)} loaded")
        return dataset.cast_column("image", datasets.Image(decode=False))
    elif path.exists() or data.startswith((".", "/", "~")):
        raise ValueError(f"data: {data} is not a folder of images or a saved dataset")
    else:
        dataset = datasets.load_dataset(data, dataset_config, split=split)
    if "image" not in dataset.features:
        raise ValueError(f"data: {data} has no 'image' column (columns: {', '.join(dataset.column_names)})")
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset.select(range(0, len(dataset), every)) if every > 1 else dataset


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """`datasets` without its progress bars, restored as they were."""
    were_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not were_disabled:
            datasets.utils.enable_progress_bars()


def data_fingerprint(dataset: datasets.Dataset) -> str:
    """What identifies the images of a run: the names and sizes of its files, or `datasets`' own fingerprint for
    images stored in the dataset."""
    sources = dataset["image"]
    paths = [source.get("path") for source in sources]
    if all(path and not source.get("bytes") and os.path.exists(path) for path, source in zip(paths, sources)):
        return files_digest(paths, root=os.path.commonpath(paths) if paths else None)
    return f"datasets:{dataset._fingerprint}"


def class_names(label_names: list[str], synsets: str | None) -> list[str]:
    """Readable names for dataset classes: a WordNet-id folder (`n01440764`) gets its name in the synset list
    (`tench`); other folders keep their own name."""
    by_wnid = dict(read_synsets(synsets)) if synsets else {}
    return [by_wnid.get(name, name) for name in label_names]


def read_batch(
    rows: list[dict], processor: BaseImageProcessor, label_of: list[int], skip_bad_images: bool = False,
    skip_flag: str | None = "--skip-bad-images", **processing,
) -> tuple[torch.Tensor | None, list[int], list[str], int]:
    """Pixel values of the readable images of a batch (`processing`: the processor's overrides), their model labels
    (-1: unknown), the files skipped and the number of rows: the bad-image policy of every command and script. An
    unreadable image raises `ImageReadError` naming it and `skip_flag` (the flag that skips such images), unless
    `skip_bad_images`."""
    images, labels, skipped = [], [], []
    for row in rows:
        try:
            images.append(read_image(row["image"]))
        except ImageReadError as error:
            if not skip_bad_images:
                hint = f" (pass {skip_flag} to skip unreadable images)" if skip_flag else ""
                raise ImageReadError(f"{error}{hint}") from error
            skipped.append(str(error))
            continue
        labels.append(label_of[row["label"]] if "label" in row and row["label"] is not None else -1)
    pixels = processor(images, return_tensors="pt", **processing)["pixel_values"] if images else None
    return pixels, labels, skipped, len(rows)
