"""The jobs of `freqtr-hf analyze`: one model's pass over one data set, its per-image statistics, and their cache.

A *job* is the unreduced model, a method at a keep rate, or the unreduced model under the noise test. Each job's
per-image statistics go to `output/cache/<data set>/<job>.npz`, with a fingerprint of what produced them (checkpoint
and its weights files, image files, job, config, batch size). A re-run reuses every cache whose fingerprint matches
and recomputes the others; an interrupted job resumes at the batch after its last checkpoint. All pending jobs of a
data set share each decoded, preprocessed batch.
"""

import io
import json
import math
import os
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedModel
from tqdm.auto import tqdm

from ..models.freqvit.configuration_freqvit import REDUCTION_METHODS
from ..data import read_batch
from ..fingerprint import mismatch, slug
from .frequency import (
    NOISE_SETS,
    add_token_noise,
    block_patch_grids,
    diagonal_log_amplitude,
    evit_kept_patches,
    last_layer_similarity,
    token_set_similarity,
)
from .patterns import (
    set_iou,
)
from ..runs import write_atomically
from ..models.freqvit.token_schedule import patch_grid
from ..models.freqvit.token_state import TokenProvenance




# bump when the statistics a job computes change, so that old caches are recomputed (4: radial ranks ties by patch
# index; 5: k-medoids assignments to the final medoids, the same noise draws for every noise set; 6: k-medoids on
# distances with an exact diagonal, a tie keeping the medoid)
STATS_VERSION = 6


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of the analyses that are not a model: the noise test and the checkpoint interval."""

    noise_fraction: float = 0.25
    noise_scale: float = 1.0
    noise_layers: tuple[int, ...] | None = None  # None: the checkpoint's reduction layers
    seed: int = 0
    nmi_images: int = 256  # images whose assignments the NMI compares (scikit-learn's NMI is one call per image)
    chance_images: int = 64  # images used for the NMI of shuffled assignments
    checkpoint_seconds: float = 60.0

    def noise_settings(self, layers: tuple[int, ...]) -> dict:
        """What the noise test's statistics depend on, for the cache fingerprint."""
        return {"fraction": self.noise_fraction, "scale": self.noise_scale, "seed": self.seed, "layers": layers}


@dataclass(frozen=True)
class Job:
    """One model's pass over a data set: `method` at `keep_rate` (1.0 for the unreduced model), with Gaussian
    noise on a token set (`noise`, one of `NOISE_SETS`) for the noise test."""

    method: str
    keep_rate: float = 1.0
    noise: str | None = None

    @property
    def label(self) -> str:
        """'none', 'topk@0.7', 'noise:hf'."""
        if self.noise:
            return f"noise:{self.noise}"
        return "none" if self.method == "none" else f"{self.method}@{self.keep_rate:g}"


def analysis_jobs(methods: list[str], keep_rates: list[float]) -> list[Job]:
    """The unreduced model, every method at every keep rate, then the noise test's three passes."""
    return [
        Job("none"),
        *(Job(method, rate) for method in methods for rate in keep_rates),
        *(Job("none", noise=which) for which in NOISE_SETS),
    ]


def check_arguments(
    data: list[str], methods: list[str], keep_rates: list[float], every: list[int], batch_size: int
) -> None:
    """Raise `ValueError` naming the flag for arguments the analysis cannot run with."""
    if not data:
        raise ValueError("--data: give at least one data set")
    if len(every) != len(data):
        raise ValueError(f"--every: give one number, or one per data set ({len(data)}), got {every}")
    unknown = [m for m in methods if m not in REDUCTION_METHODS or m == "none"]
    if unknown or not methods:
        raise ValueError(f"--methods: give methods among {REDUCTION_METHODS[1:]}, got {methods}")
    if len(set(methods)) != len(methods) or len(set(keep_rates)) != len(keep_rates):
        raise ValueError(f"--methods/--keep-rates: repeated values in {methods} / {keep_rates}")
    if not keep_rates or any(not 0.0 < rate < 1.0 for rate in keep_rates):
        raise ValueError(f"--keep-rates: every rate must be in (0, 1), got {keep_rates}")
    if min(every) < 1 or batch_size < 1:
        raise ValueError(f"--every and --batch-size must be >= 1, got {every} and {batch_size}")


def data_set_names(data: list[str]) -> list[str]:
    """Short unique names: local folders relative to their common parent ('imagenette/val'), Hub ids as they are."""
    local = [Path(d).resolve() for d in data]
    if len(data) > 1 and all(p.is_dir() for p in local):
        parent = Path(os.path.commonpath(local))
        names = [str(p.relative_to(parent)) if p != parent else p.name for p in local]
    else:
        names = [p.name if p.is_dir() else d for p, d in zip(local, data)]
    if len(set(names)) != len(names):
        raise ValueError(f"--data: two data sets have the same name: {names}")
    return names


class JobCache:
    """A job's statistics on one data set: per-image arrays (concatenated over batches) and `*_sum` arrays
    (summed over images), saved as `<job>.npz` beside `<job>.json` (fingerprint, images done, stage layout)."""

    def __init__(self, folder: Path, job: Job, fingerprint: dict):
        self.arrays_path = folder / f"{slug(job.label)}.npz"
        self.meta_path = folder / f"{slug(job.label)}.json"
        self.fingerprint = fingerprint
        self.done, self.complete, self.stages = 0, False, []
        self.parts: dict[str, list[np.ndarray]] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.stale = None  # why an existing cache is not reused
        if self.meta_path.exists() and self.arrays_path.exists():
            try:
                meta = json.loads(self.meta_path.read_text())
                self.stale = mismatch(meta.get("fingerprint", {}), fingerprint)
                if self.stale is None:
                    self.done, self.complete, self.stages = meta["done"], meta["complete"], meta["stages"]
                    with np.load(self.arrays_path) as arrays:
                        for key in arrays.files:
                            self._put(key, arrays[key])
            except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as error:
                # a cache is only saved work: a damaged one is named and computed again
                self.done, self.complete, self.stages, self.parts, self.sums = 0, False, [], {}, {}
                self.stale = f"{self.meta_path} or {self.arrays_path.name} is damaged ({type(error).__name__}: {error})"

    def _put(self, key: str, value: np.ndarray) -> None:
        if key.endswith("_sum"):
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        else:
            self.parts.setdefault(key, []).append(value)

    def add(self, batch: dict[str, np.ndarray], stages: list[list[int]]) -> None:
        """Add one batch's statistics (every per-image array has the batch's length first)."""
        for key, value in batch.items():
            self._put(key, value)
        self.done += len(batch["prediction"])
        self.stages = stages

    def arrays(self) -> dict[str, np.ndarray]:
        """Every statistic: per-image arrays (N, ...) and sums."""
        self.parts = {key: [np.concatenate(parts)] for key, parts in self.parts.items()}
        return {**{key: parts[0] for key, parts in self.parts.items()}, **self.sums}

    def save(self, complete: bool = False) -> None:
        self.complete = complete
        arrays = self.arrays()
        self.arrays_path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomically(self.arrays_path, buffer.getvalue())
        meta = {"fingerprint": self.fingerprint, "done": self.done, "complete": complete, "stages": self.stages}
        write_atomically(self.meta_path, json.dumps(meta, indent=1))

    def provenance(self) -> tuple[TokenProvenance, ...]:
        """The stored provenance of every image as `TokenProvenance` records, one per stage."""
        if not self.stages:
            return ()
        arrays = self.arrays()
        patch_to_token = torch.from_numpy(arrays["provenance"].astype(np.int64))
        kept = torch.from_numpy(arrays["kept"])
        return tuple(TokenProvenance(layer, patch_to_token[:, i], num_kept, kept[:, i])
                     for i, (layer, num_kept) in enumerate(self.stages))


@contextmanager
def forward_hooks(modules: list[torch.nn.Module], hook) -> Iterator[None]:
    """Register `hook` as a forward hook on each module for the duration of the block."""
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def model_statistics(
    model: PreTrainedModel, job: Job, pixel_values: torch.Tensor
) -> tuple[dict[str, np.ndarray], list[list[int]]]:
    """One batch through a (reduced or unreduced) model with hidden states and provenance: predictions, final CLS
    features, the summed diagonal log amplitudes per block, the similarity of each block to the last, and the
    provenance (B, stages, P); for `freq` also the EViT/HF overlap and the DC-signal similarities of every
    reduction. Also returns the stages' `[layer, num_kept]`."""
    encoder = model.base_model
    is_freq = job.method == "freq"
    set_similarity = []

    def capture_sets(module, args, output):
        set_similarity.append(token_set_similarity(args[0], args[2], *output))

    reducers = [layer.token_reducer for layer in encoder.blocks if layer.token_reducer is not None] if is_freq else []
    with forward_hooks(reducers, capture_sets):
        outputs = model(pixel_values, output_hidden_states=True, output_attentions=is_freq,
                        output_token_provenance=True)
    provenance = outputs.token_provenance
    grid = patch_grid(tuple(pixel_values.shape[-2:]), model.config.patch_size)
    prefix = model.config.num_prefix_tokens
    grids = [tokens for tokens, _ in block_patch_grids(outputs.hidden_states, provenance, prefix)]
    carried = provenance[-1].patch_to_token >= 0 if provenance else None
    stats = {
        "prediction": outputs.logits.argmax(-1),
        "cls": encoder.layernorm(outputs.hidden_states[-1][:, :1])[:, 0],
        "log_amplitude_sum": torch.stack([diagonal_log_amplitude(tokens, grid).sum(0) for tokens in grids]).double(),
        "last_layer_similarity": last_layer_similarity(grids, carried),
    }
    if provenance:
        stats["provenance"] = torch.stack([stage.patch_to_token for stage in provenance], dim=1).short()
        stats["kept"] = torch.stack([stage.kept for stage in provenance], dim=1)
    if is_freq:
        previous, overlap = None, []
        for stage in provenance:
            evit = evit_kept_patches(outputs.attentions[stage.layer], previous, stage)
            overlap.append(set_iou(evit, stage.kept))
            previous = stage
        stats["evit_iou"] = torch.stack(overlap, dim=1)
        stats["dc_similarity"] = torch.stack(set_similarity, dim=1)
    stages = [[stage.layer, stage.num_kept] for stage in provenance]
    return {key: value.detach().cpu().numpy() for key, value in stats.items()}, stages


def noise_statistics(
    model: PreTrainedModel, job: Job, pixel_values: torch.Tensor, layers: tuple[int, ...],
    options: AnalysisOptions, batch_start: int,
) -> dict:
    """One batch through the unreduced model with Gaussian noise added, after each of `layers`, to the token set
    `job.noise` chosen by that block's attention; the noise is drawn from a generator seeded by the batch's
    position, so the three sets get the same draws and a resumed run the same noise."""
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + batch_start)

    def add_noise(module, args, output):
        hidden_states, tokens, attention_probs = output
        noisy = add_token_noise(hidden_states, attention_probs, job.noise, options.noise_fraction,
                                options.noise_scale, generator, model.config.num_prefix_tokens)
        return noisy, tokens, attention_probs

    with forward_hooks([model.base_model.blocks[layer] for layer in layers], add_noise):
        logits = model(pixel_values, output_attentions=True).logits
    return {"prediction": logits.argmax(-1).cpu().numpy()}


def _batches(dataset: datasets.Dataset, processor, label_of: list[int], start: int, batch_size: int):
    """(first index, pixel values, model labels) per batch from image `start` on, read by `read_batch` (an unreadable
    image stops the analysis naming it: the statistics are kept per image index)."""
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    for first in range(start, len(dataset), batch_size):
        rows = list(undecoded.select(range(first, min(first + batch_size, len(dataset)))))
        pixels, labels, _, _ = read_batch(rows, processor, label_of, skip_flag=None)
        yield first, pixels, np.array(labels)


def run_jobs(
    name: str, dataset: datasets.Dataset, processor, label_of: list[int], models: dict[str, torch.nn.Module],
    jobs: list[Job], caches: dict[str, JobCache], options: AnalysisOptions, noise_layers: tuple[int, ...],
    device: torch.device, batch_size: int,
) -> None:
    """Run the incomplete jobs of one data set over its batches in lockstep, checkpointing their caches."""
    pending = [job for job in jobs if not caches[job.label].complete]
    if not pending:
        return
    start = min(caches[job.label].done for job in pending)
    last_save = time.monotonic()
    batches = _batches(dataset, processor, label_of, start, batch_size)
    progress = tqdm(batches, total=math.ceil((len(dataset) - start) / batch_size), unit="batch",
                    desc=f"analyze {name} ({len(pending)} models)")
    with torch.inference_mode():
        for first, pixel_values, labels in progress:
            pixel_values = pixel_values.to(device)
            for job in pending:
                cache = caches[job.label]
                if cache.done > first:  # a checkpoint written just before an interruption got further
                    continue
                model = models["none" if job.noise else job.label]
                if job.noise:
                    stats, stages = noise_statistics(model, job, pixel_values, noise_layers, options, first), []
                else:
                    stats, stages = model_statistics(model, job, pixel_values)
                cache.add({**stats, "label": labels}, stages)
            if time.monotonic() - last_save > options.checkpoint_seconds:
                for job in pending:
                    caches[job.label].save()
                last_save = time.monotonic()
    for job in pending:
        caches[job.label].save(complete=True)


# ----------------------------------------------------------------------------------------------------------------
# From the cached statistics to the report
