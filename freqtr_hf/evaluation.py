"""Side-by-side evaluation of reduction methods on one checkpoint: top-1, agreement, GMACs, images/s.

Every batch is preprocessed once and run through each model in turn, so timings are measured side by side.
Progress is saved after every batch when a state file is given, and an interrupted run resumes from it.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import evaluate
import torch
from tqdm.auto import tqdm
from transformers import AutoImageProcessor

from .configuration_freqvit import FreqViTConfig
from .macs import count_macs
from .modeling_freqvit import FreqViTForImageClassification


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
METRIC_SCRIPT = str(Path(__file__).parent / "metrics" / "top1_agreement.py")


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
    if all(index < 0 for index in mapped) and len(label_names) == len(id2label):
        return list(range(len(label_names)))
    return mapped


def load_images(
    data: str, split: str = "validation", every: int = 1, dataset_config: str | None = None
) -> datasets.Dataset:
    """Images with a `label` column, every `every`-th: a local folder of class sub-folders (files sorted by path),
    a dataset saved with `save_to_disk`, or a Hub dataset id."""
    path = Path(data)
    if path.is_dir() and (path / "dataset_info.json").exists():
        dataset = datasets.load_from_disk(data)
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[::every]
        if not files:
            raise ValueError(f"data: no images under {data}")
        # explicit data_files: file names such as ILSVRC2012_val_* would otherwise make `datasets` split them off
        dataset = datasets.load_dataset("imagefolder", data_files={"eval": files}, split="eval")
        if len(dataset) != len(files):
            raise RuntimeError(f"data: {len(files)} images found under {data} but {len(dataset)} loaded")
        return dataset
    else:
        dataset = datasets.load_dataset(data, dataset_config, split=split)
    return dataset.select(range(0, len(dataset), every)) if every > 1 else dataset


@dataclass
class MethodResult:
    """One row of the comparison table."""

    method: str
    keep_rate: float
    top1: float | None
    agreement: float
    gmacs: float
    images_per_second: float
    speedup: float


def build_models(model: str, methods: list[str], keep_rate: float, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """One model per method from the same checkpoint; `"none"` (the unreduced reference) always comes first."""
    models = {}
    for method in ["none", *[m for m in methods if m != "none"]]:
        models[method] = FreqViTForImageClassification.from_pretrained(
            model, reduction_method=method, keep_rate=keep_rate, dtype=dtype
        ).eval()
    return models


def compare_methods(
    models: dict[str, torch.nn.Module],
    dataset: datasets.Dataset,
    processor,
    label_of: list[int],
    batch_size: int = 32,
    state_file: str | None = None,
) -> list[MethodResult]:
    """Run every model on every batch; top-1 against labels (when known), agreement with the `"none"` model."""
    state = {"done": 0, "predictions": {m: [] for m in models}, "labels": [], "seconds": {m: 0.0 for m in models}}
    if state_file and Path(state_file).exists():
        state = json.loads(Path(state_file).read_text())
        if set(state["predictions"]) != set(models):
            raise ValueError(f"{state_file} holds a run of other methods; delete it or pick another --state-file")
    dtype = next(iter(models.values())).dtype
    loader = torch.utils.data.DataLoader(
        dataset.select(range(state["done"], len(dataset))),
        batch_size=batch_size,
        collate_fn=lambda rows: (
            processor([row["image"].convert("RGB") for row in rows], return_tensors="pt")["pixel_values"],
            [label_of[row["label"]] if "label" in row else -1 for row in rows],
        ),
    )
    with torch.inference_mode():
        for pixel_values, labels in tqdm(loader, desc="evaluate", unit="batch", initial=state["done"] // batch_size):
            pixel_values = pixel_values.to(dtype)
            for method, model in models.items():
                start = time.perf_counter()
                logits = model(pixel_values).logits
                state["seconds"][method] += time.perf_counter() - start
                state["predictions"][method] += logits.argmax(-1).tolist()
            state["labels"] += labels
            state["done"] += len(labels)
            if state_file:
                _write_atomically(state_file, json.dumps(state))

    metric = evaluate.load(METRIC_SCRIPT)
    reference = state["predictions"]["none"]
    base_speed = state["done"] / state["seconds"]["none"]
    results = []
    for method, model in models.items():
        scores = metric.compute(
            predictions=state["predictions"][method], references=state["labels"], reference_predictions=reference
        )
        speed = state["done"] / state["seconds"][method]
        config = model.config
        results.append(
            MethodResult(
                method=method,
                keep_rate=config.keep_rate if method != "none" else 1.0,
                top1=scores.get("top1"),
                agreement=scores["agreement"],
                gmacs=count_macs(config) / 1e9,
                images_per_second=speed,
                speedup=speed / base_speed,
            )
        )
    return results


def format_table(results: list[MethodResult]) -> str:
    header = f"{'method':<10} {'keep':>5} {'top-1 %':>8} {'agree %':>8} {'GMACs':>7} {'img/s':>8} {'speed-up':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        top1 = f"{100 * r.top1:.1f}" if r.top1 is not None else "-"
        lines.append(
            f"{r.method:<10} {r.keep_rate:>5} {top1:>8} {100 * r.agreement:>8.1f} {r.gmacs:>7.2f} "
            f"{r.images_per_second:>8.1f} {r.speedup:>7.2f}x"
        )
    return "\n".join(lines)


def results_json(results: list[MethodResult], **run) -> str:
    return json.dumps({**run, "results": [asdict(r) for r in results]}, indent=2)


def _write_atomically(path: str, text: str) -> None:
    """Write to a temporary file and rename, so an interruption never leaves a half-written file."""
    temporary = f"{path}.tmp"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


def run_evaluation(
    model: str,
    data: str,
    methods: list[str],
    keep_rate: float = 0.7,
    batch_size: int = 32,
    every: int = 1,
    split: str = "validation",
    dataset_config: str | None = None,
    synsets: str | None = None,
    dtype: torch.dtype = torch.float32,
    state_file: str | None = None,
) -> list[MethodResult]:
    """Load the checkpoint once per method and the data once, and compare the methods side by side."""
    FreqViTConfig.from_pretrained(model)  # a clear error for a checkpoint that is not a ViT, before any data work
    models = build_models(model, methods, keep_rate, dtype)
    processor = AutoImageProcessor.from_pretrained(model)
    dataset = load_images(data, split=split, every=every, dataset_config=dataset_config)
    label_names = dataset.features["label"].names if "label" in dataset.features else []
    label_of = label_mapping(label_names, models["none"].config.id2label, synsets)
    return compare_methods(models, dataset, processor, label_of, batch_size=batch_size, state_file=state_file)
