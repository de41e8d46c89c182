"""`freqtr-hf analyze`: run every model once over the data, collect the statistics of both papers' analyses, and
write `report.json`, one PNG figure per analysis and `report.md` (`run_analysis`)."""

import json
from pathlib import Path

from transformers import AutoImageProcessor

from .figures import write_figures, write_markdown
from ..models.freqvit import family_classes
from ..models.freqvit.configuration_freqvit import FREQ_PRESETS
from ..devices import describe, resolve_device
from ..data import data_fingerprint, label_mapping, label_names, load_images
from ..fingerprint import model_digest, slug, value_digest
from .frequency import (
    NOISE_SETS,
)
from ..runs import check_output_folder, exclusive_use, write_atomically, write_marker
from .jobs import AnalysisOptions, JobCache, STATS_VERSION, analysis_jobs, check_arguments, data_set_names, run_jobs
from .statistics import build_report




ANALYSIS_FOLDER = "report"  # the kind of folder `run_analysis` writes (see `runs`)


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
        # a clear error for a checkpoint that is not an image classifier of a family this project reduces, before any
        # data work
        config_class, model_class = family_classes(model)
        config_class.from_pretrained(model)
        target = resolve_device(device)
        print(f"freqtr-hf analyze: {len(methods)} methods x {len(keep_rates)} keep rates on {describe(target)}")
        jobs = analysis_jobs(methods, keep_rates)
        models = {"none": model_class.from_pretrained(model, reduction_method="none")}
        for job in jobs:
            if not job.noise and job.method != "none":
                options_of_method = FREQ_PRESETS[preset] if job.method == "freq" else {}
                models[job.label] = model_class.from_pretrained(
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
