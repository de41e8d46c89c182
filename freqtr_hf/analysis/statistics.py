"""The report's numbers, from the jobs' caches: accuracy, the similarity of reduction patterns across methods and
settings, CKA, and the correlations between them (`build_report`)."""


import evaluate
import numpy as np
import torch

from ..evaluation import METRIC_SCRIPT
from .frequency import (
    NOISE_SETS,
    diagonal_frequencies,
    relative_log_amplitude,
)
from ..macs import count_macs
from .patterns import (
    assignment_nmi,
    compare_maps,
    departure_depth,
    linear_cka,
    rank_correlations,
    set_iou,
)
from .findings import findings
from .jobs import AnalysisOptions, JobCache
from ..models.freqvit.token_schedule import MERGING_METHODS, patch_grid




MAP_METRICS = ("pearson", "spearman", "js_divergence", "histogram_intersection")


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
