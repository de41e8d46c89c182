"""`freqtr-hf analyze`: run every model once over the data, collect the statistics of both papers' analyses, and
write `report.json`, one PNG figure per analysis and `report.md`.

A *job* is one model's pass over one data set: the unreduced model, a method at a keep rate, or the unreduced
model under the noise test. Each job's per-image statistics go to `output/cache/<data set>/<job>.npz`, with a
fingerprint of what produced them (checkpoint and its weights files, image files, job, config, batch size). A
re-run reuses every cache whose fingerprint matches and recomputes the others; an interrupted job resumes at the
batch after its last checkpoint. All pending jobs of a data set share each decoded, preprocessed batch.
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
import evaluate
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoImageProcessor

from .analysis_figures import write_figures, write_markdown
from .models.freqvit.configuration_freqvit import FREQ_PRESETS, REDUCTION_METHODS, FreqViTConfig
from .devices import describe, resolve_device
from .evaluation import METRIC_SCRIPT
from .data import data_fingerprint, label_mapping, label_names, load_images, read_batch
from .fingerprint import mismatch, model_digest, slug, value_digest
from .frequency_analysis import (
    NOISE_SETS,
    add_token_noise,
    block_patch_grids,
    diagonal_frequencies,
    diagonal_log_amplitude,
    evit_kept_patches,
    last_layer_similarity,
    relative_log_amplitude,
    token_set_similarity,
)
from .macs import count_macs
from .models.freqvit.modeling_freqvit import FreqViTForImageClassification
from .pattern_analysis import (
    assignment_nmi,
    compare_maps,
    departure_depth,
    linear_cka,
    rank_correlations,
    set_iou,
)
from .runs import check_output_folder, exclusive_use, write_atomically, write_marker
from .models.freqvit.token_schedule import MERGING_METHODS, patch_grid
from .models.freqvit.token_state import TokenProvenance


# bump when the statistics a job computes change, so that old caches are recomputed (4: radial ranks ties by patch
# index; 5: k-medoids assignments to the final medoids, the same noise draws for every noise set; 6: k-medoids on
# distances with an exact diagonal, a tie keeping the medoid)
STATS_VERSION = 6
ANALYSIS_FOLDER = "report"  # the kind of folder `run_analysis` writes (see `runs`)
MAP_METRICS = ("pearson", "spearman", "js_divergence", "histogram_intersection")


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
    model: FreqViTForImageClassification, job: Job, pixel_values: torch.Tensor
) -> tuple[dict[str, np.ndarray], list[list[int]]]:
    """One batch through a (reduced or unreduced) model with hidden states and provenance: predictions, final CLS
    features, the summed diagonal log amplitudes per block, the similarity of each block to the last, and the
    provenance (B, stages, P); for `freq` also the EViT/HF overlap and the DC-signal similarities of every
    reduction. Also returns the stages' `[layer, num_kept]`."""
    vit = model.vit
    is_freq = job.method == "freq"
    set_similarity = []

    def capture_sets(module, args, output):
        set_similarity.append(token_set_similarity(args[0], args[2], *output))

    reducers = [layer.token_reducer for layer in vit.layers if layer.token_reducer is not None] if is_freq else []
    with forward_hooks(reducers, capture_sets):
        outputs = model(pixel_values, output_hidden_states=True, output_attentions=is_freq,
                        output_token_provenance=True)
    provenance = outputs.token_provenance
    grid = patch_grid(tuple(pixel_values.shape[-2:]), vit.embeddings.patch_embeddings.patch_size)
    grids = [tokens for tokens, _ in block_patch_grids(outputs.hidden_states, provenance)]
    carried = provenance[-1].patch_to_token >= 0 if provenance else None
    stats = {
        "prediction": outputs.logits.argmax(-1),
        "cls": vit.layernorm(outputs.hidden_states[-1][:, :1])[:, 0],
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
    model: FreqViTForImageClassification, job: Job, pixel_values: torch.Tensor, layers: tuple[int, ...],
    options: AnalysisOptions, batch_start: int,
) -> dict:
    """One batch through the unreduced model with Gaussian noise added, after each of `layers`, to the token set
    `job.noise` chosen by that block's attention; the noise is drawn from a generator seeded by the batch's
    position, so the three sets get the same draws and a resumed run the same noise."""
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + batch_start)

    def add_noise(module, args, output):
        hidden_states, tokens, attention_probs = output
        noisy = add_token_noise(hidden_states, attention_probs, job.noise, options.noise_fraction,
                                options.noise_scale, generator)
        return noisy, tokens, attention_probs

    with forward_hooks([model.vit.layers[layer] for layer in layers], add_noise):
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


def _mean(values) -> float:
    return float(np.mean(values))


def accuracy_section(arrays: dict[str, dict], models: dict[str, torch.nn.Module], metric) -> dict:
    """Per model: top-1 (when labels are known), agreement with the unreduced model, GMACs."""
    reference = arrays["none"]["prediction"].tolist()
    section = {}
    for label, stats in arrays.items():
        scores = metric.compute(predictions=stats["prediction"].tolist(), references=stats["label"].tolist(),
                                reference_predictions=reference)
        model = models["none" if label.startswith("noise:") else label]
        section[label] = {"top1": scores.get("top1"), "agreement": scores["agreement"],
                          "gmacs": count_macs(model.config) / 1e9}
    return section


def depth_map(cache: JobCache, num_layers: int, grid: tuple[int, int]) -> np.ndarray:
    """The (h, w) map of the mean depth at which each patch leaves (see `departure_depth`)."""
    depth = departure_depth(cache.provenance(), num_layers, grid[0] * grid[1])
    return depth.mean(0).reshape(grid).numpy()


def pruning_similarity(caches: dict[str, JobCache], labels: list[str]) -> dict:
    """Per stage, the mean over images of the IoU of the kept patch sets between every pair of models."""
    kept = {label: [stage.kept for stage in caches[label].provenance()] for label in labels}
    num_stages = min(len(v) for v in kept.values()) if kept else 0
    matrices = [[[_mean(set_iou(kept[a][s], kept[b][s]).numpy()) for b in labels] for a in labels]
                for s in range(num_stages)]
    layers = [stage[0] for stage in caches[labels[0]].stages][:num_stages] if labels else []
    return {"labels": labels, "layers": layers, "matrix": matrices}


def merging_similarity(caches: dict[str, JobCache], labels: list[str], options: AnalysisOptions) -> dict:
    """Per stage, the mean over the first `options.nmi_images` images of the NMI of the patch-to-token assignments
    between every pair of models, and each model's chance level: its NMI with its own assignment shuffled over the
    patches (many small clusters score well above 0 by chance)."""
    assignments = {label: caches[label].arrays()["provenance"][: options.nmi_images] for label in labels}
    num_stages = min(v.shape[1] for v in assignments.values()) if labels else 0
    rng = np.random.default_rng(options.seed)
    matrices, chance = [], {label: [] for label in labels}
    for s in range(num_stages):
        matrix = [[1.0] * len(labels) for _ in labels]
        for i, a in enumerate(labels):
            for j in range(i + 1, len(labels)):
                value = _mean(assignment_nmi(assignments[a][:, s], assignments[labels[j]][:, s]))
                matrix[i][j] = matrix[j][i] = value
            sample = assignments[a][: options.chance_images, s]
            chance[a].append(_mean(assignment_nmi(sample, rng.permuted(sample, axis=1))))
        matrices.append(matrix)
    layers = [stage[0] for stage in caches[labels[0]].stages][:num_stages] if labels else []
    images = min(options.nmi_images, *(len(v) for v in assignments.values())) if labels else 0
    return {"labels": labels, "layers": layers, "images": images, "matrix": matrices, "chance": chance}


def map_similarity(maps: dict[str, np.ndarray]) -> dict:
    """Every metric of `compare_maps` between every pair of maps."""
    labels = list(maps)
    result = {"labels": labels, **{metric: [] for metric in MAP_METRICS}}
    for a in labels:
        rows = [compare_maps(maps[a], maps[b]) for b in labels]
        for metric in MAP_METRICS:
            result[metric].append([row[metric] for row in rows])
    return result


def setting_dependence(depth_maps: dict[str, dict[str, list]], methods: list[str], keep_rates: list[float]) -> dict:
    """Do patterns depend on the keep rate more than on the data? Mean depth-map Pearson correlation and JS
    divergence between data sets (same method and keep rate) and between keep rates (same method and data)."""
    names = list(depth_maps)
    across_data, across_rates = [], []
    for method in methods:
        for i, rate in enumerate(keep_rates):
            key = f"{method}@{rate:g}"
            across_data += [compare_maps(depth_maps[a][key], depth_maps[b][key])
                            for a in names for b in names if a < b]
            across_rates += [compare_maps(depth_maps[n][key], depth_maps[n][f"{method}@{other:g}"])
                             for n in names for other in keep_rates[i + 1 :]]

    def summary(pairs):
        pearson = [p["pearson"] for p in pairs if p["pearson"] is not None]
        return {"pairs": len(pairs), "pearson": _mean(pearson) if pearson else None,
                "js_divergence": _mean([p["js_divergence"] for p in pairs]) if pairs else None}

    return {"across_data": summary(across_data), "across_keep_rates": summary(across_rates)}


def cka_section(arrays: dict[str, dict], labels: list[str]) -> dict:
    features = {label: arrays[label]["cls"] for label in labels}
    return {"labels": labels, "matrix": [[linear_cka(features[a], features[b]) for b in labels] for a in labels]}


def _pair_value(section: dict, a: str, b: str, stage: int | None = None):
    labels = section["labels"]
    if a not in labels or b not in labels:
        return None
    matrix = section["matrix"] if stage is None else section["matrix"][stage]
    return matrix[labels.index(a)][labels.index(b)]


def correlation_section(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> dict:
    """For Top-K and K-Medoids as references: per similarity measure, Spearman and Kendall correlation over
    (data set, keep rate, method) between a method's pattern similarity to the reference (same data and keep
    rate) and its top-1 difference to the reference (agreement where no labels), signed and absolute."""
    result = {}
    for reference in ("topk", "kmedoids"):
        if reference not in methods:
            continue
        points = []
        for name in names:
            accuracy = report["accuracy"][name]
            maps = report["pattern_similarity"]["depth_maps"]
            for rate in keep_rates:
                ref = f"{reference}@{rate:g}"
                score = "top1" if accuracy[ref]["top1"] is not None else "agreement"
                for method in methods:
                    label = f"{method}@{rate:g}"
                    if method == reference:
                        continue
                    similarity = {metric: _pair_value({"labels": maps["labels"], "matrix": maps[metric]},
                                                      f"{name} {label}", f"{name} {ref}") for metric in MAP_METRICS}
                    similarity["cka"] = _pair_value(report["cka"][name], label, ref)
                    similarity["iou"] = _pair_value(report["pattern_similarity"]["iou"][name], label, ref, -1)
                    similarity["nmi"] = _pair_value(report["pattern_similarity"]["nmi"][name], label, ref, -1)
                    difference = accuracy[label][score] - accuracy[ref][score]
                    points.append({"data": name, "model": label, "similarity": similarity, "difference": difference})
        measures = {}
        for measure in (*MAP_METRICS, "cka", "iou", "nmi"):
            usable = [p for p in points if p["similarity"][measure] is not None]
            x = [p["similarity"][measure] for p in usable]
            measures[measure] = {
                "signed": rank_correlations(x, [p["difference"] for p in usable]),
                "absolute": rank_correlations(x, [abs(p["difference"]) for p in usable]),
            }
        result[reference] = {"points": points, "measures": measures}
    return result


def build_report(
    names: list[str], caches: dict[str, dict[str, JobCache]], models: dict[str, torch.nn.Module],
    methods: list[str], keep_rates: list[float], options: AnalysisOptions, run: dict,
) -> dict:
    """The report dict (see docs/analysis.md for its keys) from the complete caches of every data set."""
    metric = evaluate.load(METRIC_SCRIPT)
    config = models["none"].config
    grid = patch_grid(config.image_size, config.patch_size)
    num_layers = config.num_hidden_layers
    model_labels = [f"{m}@{r:g}" for m in methods for r in keep_rates]
    pruning = [label for label in model_labels if label.split("@")[0] not in MERGING_METHODS]
    merging = [label for label in model_labels if label.split("@")[0] in MERGING_METHODS]
    freq_rates = [rate for rate in keep_rates if "freq" in methods]
    report = {"run": run, "accuracy": {}, "log_amplitude": {}, "dc_similarity": {}, "last_layer_similarity": {},
              "noise_test": {},
              "evit_hf_iou": {}, "depth_maps": {}, "pattern_similarity": {"iou": {}, "nmi": {}}, "cka": {}}
    for name in names:
        arrays = {label: cache.arrays() for label, cache in caches[name].items()}
        report["accuracy"][name] = {label: v for label, v in accuracy_section(arrays, models, metric).items()
                                    if not label.startswith("noise:")}
        count = len(arrays["none"]["prediction"])
        amplitude = {"frequencies": diagonal_frequencies(grid)}
        for label in ["none", *model_labels]:
            curves = relative_log_amplitude(torch.from_numpy(arrays[label]["log_amplitude_sum"] / count))
            amplitude[label] = {"curves": curves.tolist(), "at_pi": curves[:, -1].tolist()}
        report["log_amplitude"][name] = amplitude
        report["last_layer_similarity"][name] = {
            label: arrays[label]["last_layer_similarity"].mean(0).tolist() for label in ["none", *model_labels]
        }
        noisy = accuracy_section({k: arrays[k] for k in ["none", *(f"noise:{s}" for s in NOISE_SETS)]}, models,
                                 metric)
        report["noise_test"][name] = {("clean" if k == "none" else k.split(":")[1]): {
            "top1": v["top1"], "agreement": v["agreement"]} for k, v in noisy.items()}
        report["dc_similarity"][name], report["evit_hf_iou"][name] = {}, {}
        for rate in freq_rates:
            stats, cache = arrays[f"freq@{rate:g}"], caches[name][f"freq@{rate:g}"]
            layers = [layer for layer, _ in cache.stages]
            mean_sets = stats["dc_similarity"].mean(0)
            report["dc_similarity"][name][f"{rate:g}"] = {
                "layers": layers, "hf": mean_sets[:, 0].tolist(), "lf": mean_sets[:, 1].tolist(),
                "dc": mean_sets[:, 2].tolist(),
            }
            candidates = [grid[0] * grid[1]] + [kept for _, kept in cache.stages[:-1]]
            report["evit_hf_iou"][name][f"{rate:g}"] = {
                "layers": layers, "iou": stats["evit_iou"].mean(0).tolist(),
                # two random k-subsets of m candidates: E|A∩B| = k²/m, so IoU ≈ k / (2m − k)
                "chance": [kept / (2 * m - kept) for (_, kept), m in zip(cache.stages, candidates)],
            }
        report["depth_maps"][name] = {label: depth_map(caches[name][label], num_layers, grid).tolist()
                                      for label in model_labels}
        report["pattern_similarity"]["iou"][name] = pruning_similarity(caches[name], pruning)
        report["pattern_similarity"]["nmi"][name] = merging_similarity(caches[name], merging, options)
        report["cka"][name] = cka_section(arrays, ["none", *model_labels])
    maps = {f"{name} {label}": np.array(m) for name in names for label, m in report["depth_maps"][name].items()}
    report["pattern_similarity"]["depth_maps"] = {
        **map_similarity(maps), "dependence": setting_dependence(report["depth_maps"], methods, keep_rates)
    }
    report["correlations"] = correlation_section(report, names, methods, keep_rates)
    report["findings"] = findings(report, names, methods, keep_rates)
    return report


def _headline_rate(keep_rates: list[float]) -> float:
    """The keep rate the findings quote: 0.7 (the papers' main setting) when analysed, else the median."""
    return 0.7 if 0.7 in keep_rates else sorted(keep_rates)[len(keep_rates) // 2]


def _finding(text: str, holds: bool | None, numbers: str) -> dict:
    return {"finding": text, "holds": holds, "numbers": numbers}


def amplitude_findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """High-frequency amplitude falls with depth (unreduced model), and the frequency-aware method keeps more of it
    at the last block than the other methods."""
    falls, numbers = [], []
    for name in names:
        at_pi = report["log_amplitude"][name]["none"]["at_pi"]
        falls.append(at_pi[-1] < at_pi[0])
        numbers.append(f"{name}: {at_pi[0]:.2f} (block 1) -> {max(at_pi):.2f} (max) -> {at_pi[-1]:.2f} (block "
                       f"{len(at_pi)})")
    result = [_finding("High-frequency log amplitude (at π) of the unreduced model falls with depth", all(falls),
                       "; ".join(numbers))]
    rate = _headline_rate(keep_rates)
    last = {name: {m: report["log_amplitude"][name][f"{m}@{rate:g}"]["at_pi"][-1] for m in methods}
            for name in names}
    numbers = [f"{name}: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(values.items(), key=lambda kv: -kv[1]))
               + f" (unreduced {report['log_amplitude'][name]['none']['at_pi'][-1]:.2f})"
               for name, values in last.items()]
    holds = all(max(values, key=values.get) == "freq" for values in last.values()) if "freq" in methods else None
    result.append(_finding(f"Methods differ in it: freq keeps the most high-frequency amplitude at the last block "
                           f"(keep {rate:g})", holds, "; ".join(numbers)))
    return result


def noise_finding(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Noise on the high-frequency tokens costs more accuracy than the same noise on the low-frequency ones."""
    holds, numbers = [], []
    for name in names:
        scores = report["noise_test"][name]
        key = "top1" if scores["clean"]["top1"] is not None else "agreement"
        holds.append(scores["hf"][key] < scores["lf"][key])
        numbers.append(f"{name} {key}: clean {100 * scores['clean'][key]:.1f}, HF noise {100 * scores['hf'][key]:.1f},"
                       f" LF noise {100 * scores['lf'][key]:.1f}, random {100 * scores['random'][key]:.1f}")
    noise = report["run"]["noise"]
    text = (f"High-frequency tokens matter more than low-frequency ones under noise ({100 * noise['fraction']:g}% of "
            f"the tokens each, σ = {noise['scale']:g}× the token std, after blocks {noise['layers']})")
    return [_finding(text, all(holds), "; ".join(numbers))]


def overlap_finding(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """EViT's kept set and the high-frequency set converge with depth: their IoU grows from layer to layer."""
    if "freq" not in methods:
        return [_finding("EViT's and the HF sets converge with depth", None, "freq was not analysed")]
    holds, numbers = [], []
    for name in names:
        for rate, overlap in report["evit_hf_iou"][name].items():
            holds.append(all(b > a for a, b in zip(overlap["iou"], overlap["iou"][1:])))
            numbers.append(f"{name} keep {rate}: " + " -> ".join(f"{v:.2f}" for v in overlap["iou"])
                           + " (chance " + " -> ".join(f"{v:.2f}" for v in overlap["chance"]) + ")")
    return [_finding("EViT's kept set and the HF set converge with depth (IoU rises at every reduction layer)",
                     all(holds), "; ".join(numbers))]


def _ranking(report: dict, name: str, methods: list[str], rate: float) -> tuple[str, list[str]]:
    accuracy = report["accuracy"][name]
    key = "top1" if accuracy["none"]["top1"] is not None else "agreement"
    return key, sorted(methods, key=lambda m: -accuracy[f"{m}@{rate:g}"][key])


def accuracy_findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Top-K is in the top 3 in most settings; pruning beats (hard) merging."""
    result = []
    if "topk" in methods:
        places = {(name, rate): _ranking(report, name, methods, rate)[1].index("topk") + 1
                  for name in names for rate in keep_rates}
        share = sum(place <= 3 for place in places.values()) / len(places)
        result.append(_finding(
            f"Top-K is a strong baseline (in the top 3 of {len(methods)} methods in most settings)", share > 0.5,
            f"top 3 in {100 * share:.0f}% of {len(places)} settings; places: "
            + ", ".join(f"{name} {rate:g}: {place}" for (name, rate), place in places.items())))
    pruning = [m for m in methods if m in ("topk", "evit", "ats", "radial")]
    merging = [m for m in methods if m in MERGING_METHODS]
    if pruning and merging:
        gaps = []
        for name in names:
            for rate in keep_rates:
                key, _ = _ranking(report, name, methods, rate)
                best = {family: max(report["accuracy"][name][f"{m}@{rate:g}"][key] for m in family)
                        for family in (tuple(pruning), tuple(merging))}
                gaps.append((name, rate, 100 * (best[tuple(pruning)] - best[tuple(merging)])))
        wins = sum(gap > 0 for *_, gap in gaps)
        result.append(_finding(
            f"Pruning ({', '.join(pruning)}) beats merging ({', '.join(merging)}): best of each family",
            wins > len(gaps) / 2,
            f"pruning ahead in {wins} of {len(gaps)} settings; best pruning − best merging, points: "
            + ", ".join(f"{name} {rate:g}: {gap:+.1f}" for name, rate, gap in gaps)))
    return result


def pattern_findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Patterns depend on the keep rate more than on the data; similarity to Top-K / K-Medoids predicts accuracy."""
    dependence = report["pattern_similarity"]["depth_maps"]["dependence"]
    data, rates = dependence["across_data"], dependence["across_keep_rates"]
    result = []
    if data["pairs"] and rates["pairs"] and data["pearson"] is not None and rates["pearson"] is not None:
        result.append(_finding(
            "Reduction patterns depend on the keep rate more than on the data (depth maps)",
            data["pearson"] > rates["pearson"] and data["js_divergence"] < rates["js_divergence"],
            f"mean Pearson between data sets {data['pearson']:.3f} vs between keep rates {rates['pearson']:.3f}; "
            f"JS divergence {data['js_divergence']:.4f} vs {rates['js_divergence']:.4f}"))
    for reference, section in report["correlations"].items():
        measures = section["measures"]
        numbers = []
        for measure in ("pearson", "cka", "iou", "nmi"):
            value = measures[measure]["absolute"]
            if value["spearman"] is not None:
                numbers.append(f"{measure}: Spearman {value['spearman']:+.2f} (p {value['spearman_p']:.2g}), "
                               f"Kendall {value['kendall']:+.2f}, n {value['n']}")
        headline = measures["pearson"]["absolute"]["spearman"]
        result.append(_finding(
            f"Pattern similarity to {reference} predicts accuracy (more similar depth maps, smaller |top-1 "
            "difference|: Spearman ≤ −0.4)",
            None if headline is None else headline <= -0.4, "; ".join(numbers)))
    return result


FINDINGS = (amplitude_findings, noise_finding, overlap_finding, accuracy_findings, pattern_findings)


def findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Each finding of the two papers: whether it holds in this run, and the numbers that decide it."""
    return [item for check in FINDINGS for item in check(report, names, methods, keep_rates)]


def run_analysis(
    model: str,
    data: list[str],
    methods: list[str],
    keep_rates: list[float],
    output: str,
    every: int | list[int] = 1,
    synsets: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    options: AnalysisOptions | None = None,
    preset: str = "paper",
) -> dict:
    """Run the unreduced model, every method at every keep rate and the noise test over each data set once,
    then write `output/report.json`, the figures and `output/report.md`. Returns the report dict.

    `every`: take every N-th image (files sorted by path), one number for all data sets or one per data set.
    `preset`: `freq`'s options by name (`FREQ_PRESETS`: the paper's method, or `TRAINING_FREE_FREQ`).

    Each job's statistics are cached under `output/cache/` with a fingerprint; a re-run reuses matching caches,
    and an interrupted run resumes after its last checkpoint. A second run on an `output` in use is refused.
    """
    options = options or AnalysisOptions()
    every = [every] * len(data) if isinstance(every, int) else list(every)
    check_arguments(data, methods, keep_rates, every, batch_size)
    names = data_set_names(data)
    check_output_folder(output, "--output", ANALYSIS_FOLDER)  # before any work: a folder of ours, or empty
    with exclusive_use(output, "--output"):  # two runs on one folder would overwrite each other's caches
        check_output_folder(output, "--output", ANALYSIS_FOLDER)
        FreqViTConfig.from_pretrained(model)  # a clear error for a checkpoint that is not a ViT, before any data work
        target = resolve_device(device)
        print(f"freqtr-hf analyze: {len(methods)} methods x {len(keep_rates)} keep rates on {describe(target)}")
        jobs = analysis_jobs(methods, keep_rates)
        models = {"none": FreqViTForImageClassification.from_pretrained(model, reduction_method="none")}
        for job in jobs:
            if not job.noise and job.method != "none":
                options_of_method = FREQ_PRESETS[preset] if job.method == "freq" else {}
                models[job.label] = FreqViTForImageClassification.from_pretrained(
                    model, reduction_method=job.method, keep_rate=job.keep_rate, **options_of_method
                )
        for module in models.values():
            module.to(target).eval()
        Path(output).mkdir(parents=True, exist_ok=True)  # the models are built: the settings hold
        write_marker(Path(output), ANALYSIS_FOLDER)
        config = models["none"].config
        noise_layers = tuple(options.noise_layers if options.noise_layers is not None else config.reduction_layers)
        processor = AutoImageProcessor.from_pretrained(model)
        output_dir = Path(output)
        checkpoint = model_digest(model, getattr(config, "_commit_hash", None))
        caches, data_info = {}, {}
        for name, path, step in zip(names, data, every):
            dataset = load_images(path, every=step)
            label_of = label_mapping(label_names(dataset), config.id2label, synsets)
            base = {"version": STATS_VERSION, "model": checkpoint, "data": data_fingerprint(dataset),
                    "images": len(dataset), "every": step, "batch_size": batch_size, "labels": value_digest(label_of)}
            caches[name] = {}
            for job in jobs:
                settings = options.noise_settings(noise_layers) if job.noise else {
                    k: v for k, v in models[job.label].config.to_dict().items() if k != "transformers_version"
                }
                fingerprint = {**base, "job": job.label, "settings": value_digest(settings)}
                caches[name][job.label] = JobCache(output_dir / "cache" / slug(name), job, fingerprint)
            reused = sum(cache.complete for cache in caches[name].values())
            print(f"{name}: {len(dataset)} images, {reused}/{len(jobs)} models cached")
            for label, cache in caches[name].items():
                if cache.stale:
                    print(f"{name}: recomputing {label}: {cache.stale}")
            run_jobs(name, dataset, processor, label_of, models, jobs, caches[name], options, noise_layers, target,
                     batch_size)
            data_info[name] = {"path": path, "every": step, "images": len(dataset),
                               "labelled_classes": sum(1 for i in label_of if i >= 0)}
        run = {"model": model, "data": data_info, "synsets": synsets, "methods": methods, "freq_preset": preset,
               "keep_rates": keep_rates, "reduction_layers": list(config.reduction_layers),
               "noise": {**options.noise_settings(list(noise_layers)), "sets": list(NOISE_SETS)},
               "batch_size": batch_size, "device": describe(target)}
        report = build_report(names, caches, models, methods, keep_rates, options, run)
        write_atomically(output_dir / "report.json", json.dumps(report, indent=1))
        figures = write_figures(report, output_dir)
        write_markdown(report, figures, output_dir)
        return report
