"""Side-by-side evaluation of reduction methods on one checkpoint: top-1, agreement, GMACs, images/s.

Every batch is preprocessed once and run through each model in turn, so timings are measured side by side.
Progress is saved after every batch when a state file is given, and an interrupted run resumes from it. Under
`accelerate launch` the processes share out the batches and gather the predictions (`predict_in_turns`).
"""

import json
import math
import sys
import warnings
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import datasets
import evaluate
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, BaseImageProcessor

from .devices import take_turns
from .fingerprint import (
    file_digest, mismatch, model_digest, resolved_source, value_digest,
)
from .data import data_fingerprint, label_mapping, label_names, load_images, read_batch
from .macs import count_macs
from .models.freqvit import family_classes
from .parallel import from_main_process, process_state
from .runs import PRODUCER, check_output_file, exclusive_use, stamp, write_atomically

RESULTS_KIND, STATE_KIND = "evaluation results", "evaluation state"  # what evaluate's files hold (see runs)


METRIC_SCRIPT = str(Path(__file__).parent / "metrics" / "top1_agreement.py")


@dataclass
class MethodResult:
    """One row of the comparison table."""

    method: str
    keep_rate: float | tuple[float, ...] | None  # per reduction layer when they differ; None for per-layer ToMe
    top1: float | None
    agreement: float
    gmacs: float
    images_per_second: float
    speedup: float
    images: int  # the images evaluated (unreadable ones skipped aside)
    labelled: int  # of those, the images whose label is a class of the model: top-1 is over these
    tome_r: int | None = None

    @property
    def keep(self) -> str:
        """The reduction's size for a table: the keep rate(s), or ToMe's r per layer."""
        if self.tome_r is not None:
            return f"r={self.tome_r}"
        if isinstance(self.keep_rate, (tuple, list)):
            return "/".join(f"{rate:g}" for rate in self.keep_rate)
        return f"{self.keep_rate:g}"


# methods whose parameters must be trained: off the shelf they compute nothing meaningful
UNTRAINED_WARNING = (
    "{method}: its parameters ({names}) are not in {model} and start at random values; its accuracy means nothing "
    "until it is fine-tuned (training/finetune.py)"
)


def build_models(
    model: str,
    methods: list[str],
    keep_rate: float | tuple[float, ...] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    overrides: dict | None = None,
) -> dict[str, torch.nn.Module]:
    """One model per method from the same checkpoint; `"none"` (the unreduced reference) always comes first.
    `keep_rate` (one, or one per reduction layer) and `overrides` (config fields) set the reduced models; what they
    leave out keeps the checkpoint's value, else the default. `tome_r` goes to `tome` only. Warns about methods whose
    parameters are untrained."""
    models, (_, model_class) = {}, family_classes(model)
    for method in ["none", *[m for m in methods if m != "none"]]:
        # the unreduced reference drops every reduction setting a FreqViT checkpoint may carry
        fields = {"tome_r": None}
        if method != "none":
            fields = {key: value for key, value in (overrides or {}).items() if key != "tome_r" or method == "tome"}
            if keep_rate is not None:
                fields["keep_rate"] = keep_rate
        loaded, info = model_class.from_pretrained(
            model, reduction_method=method, dtype=dtype, output_loading_info=True, **fields
        )
        untrained = sorted({key.split(".token_reducer.")[-1] for key in info["missing_keys"] if ".token_reducer." in key})
        if untrained:
            warnings.warn(UNTRAINED_WARNING.format(method=method, names=", ".join(untrained), model=model), stacklevel=2)
        models[method] = loaded.to(device).eval()
    return models


@dataclass
class EvaluationState:
    """Progress of an evaluation, saved after every batch: predictions per method, labels, seconds per method,
    the images skipped as unreadable, and the fingerprint of the run they belong to."""

    fingerprint: dict
    done: int = 0
    predictions: dict[str, list[int]] = field(default_factory=dict)
    labels: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    written_by: str = PRODUCER
    kind: str = STATE_KIND

    @classmethod
    def start(cls, fingerprint: dict, methods: list[str]) -> "EvaluationState":
        return cls(fingerprint, predictions={m: [] for m in methods}, seconds={m: 0.0 for m in methods})

    @classmethod
    def load(cls, path: str, fingerprint: dict, methods: list[str], total: int) -> "EvaluationState":
        """The saved state of the same run. A damaged file, or one of another run, raises `ValueError` naming the
        file (and, for another run, the field that differs)."""
        try:
            saved = json.loads(Path(path).read_text())
            state = cls(**saved)
            consistent = (
                state.written_by == PRODUCER
                and state.kind == STATE_KIND
                and isinstance(state.done, int)
                and 0 <= state.done <= total
                and set(state.predictions) == set(state.seconds) == set(methods)
                and len(state.labels) == state.done - len(state.skipped)
                and all(len(p) == len(state.labels) for p in state.predictions.values())
                and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in state.seconds.values())
            )
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"state file {path}: damaged ({type(error).__name__}: {error}); {RESTART_HINT}") from error
        difference = mismatch(state.fingerprint, fingerprint)
        if difference:
            raise ValueError(f"state file {path} holds another run: {difference}; {RESTART_HINT}")
        if not consistent:
            raise ValueError(f"state file {path}: damaged (its counts do not agree with each other); {RESTART_HINT}")
        return state

    def save(self, path: str) -> None:
        write_atomically(path, json.dumps(asdict(self)))

    def extend(self, part: "EvaluationState") -> None:
        """Add the progress over the next images (one batch's)."""
        self.done += part.done
        self.labels += part.labels
        self.skipped += part.skipped
        for method in self.predictions:
            self.predictions[method] += part.predictions[method]
            self.seconds[method] += part.seconds[method]


RESTART_HINT = "pass --restart to start afresh, or keep the progress in another state file"


def compare_methods(
    models: dict[str, torch.nn.Module],
    dataset: datasets.Dataset,
    processor: BaseImageProcessor,
    label_of: list[int],
    batch_size: int = 32,
    state_file: str | None = None,
    fingerprint: dict | None = None,
    restart: bool = False,
    skip_bad_images: bool = False,
) -> tuple[list[MethodResult], list[str]]:
    """Run every model on every batch; top-1 against labels (when known), agreement with the `"none"` model.

    With `state_file`, progress is saved after every batch and a rerun of the same run (same `fingerprint`)
    resumes; a finished run re-reports its results; a second run on a state file in use is refused. Under
    `accelerate launch` the processes share out the batches (`predict_in_turns`), only the main process reads, locks
    and writes the state file (after every round of batches), and every process returns the results of all the
    images. Returns the rows and the images skipped as unreadable."""
    parallel = process_state(next(iter(models.values())).device)
    with ExitStack() as held:
        opened = partial(open_state, state_file, fingerprint or {}, list(models), len(dataset), restart, held)
        state = from_main_process(parallel, opened)
        state = predict_in_turns(
            models, dataset, processor, label_of, batch_size, state,
            state_file if parallel.is_main_process else None, skip_bad_images, parallel,
        )
    if not state.labels:
        raise ValueError("data: no image could be read" if state.skipped else "data: no images")

    metric = evaluate.load(METRIC_SCRIPT)
    reference = state.predictions["none"]
    base_speed = len(state.labels) / max(state.seconds["none"], 1e-12)
    results = []
    for method, model in models.items():
        scores = metric.compute(
            predictions=state.predictions[method], references=state.labels, reference_predictions=reference
        )
        speed = len(state.labels) / max(state.seconds[method], 1e-12)
        config = model.config
        per_layer_tome = method != "none" and config.tome_r is not None
        results.append(
            MethodResult(
                method=method,
                keep_rate=1.0 if method == "none" else None if per_layer_tome else config.keep_rate,
                top1=scores.get("top1"),
                agreement=scores["agreement"],
                gmacs=count_macs(config) / 1e9,
                images_per_second=speed,
                speedup=speed / base_speed,
                images=len(state.labels),
                labelled=scores["num_labelled"],
                tome_r=config.tome_r if per_layer_tome else None,
            )
        )
    return results, state.skipped


def open_state(
    state_file: str | None, fingerprint: dict, methods: list[str], total: int, restart: bool, held: ExitStack
) -> EvaluationState:
    """The progress a run starts from: the saved state of the same run, unless `restart`, else none. The state file
    is checked and its lock taken in `held`, for the rest of the run."""
    state = EvaluationState.start(fingerprint, methods)
    if not state_file:
        return state
    check_output_file(state_file, "--state-file", STATE_KIND)
    held.enter_context(exclusive_use(state_file, "--state-file"))
    if Path(state_file).exists() and not restart:
        state = EvaluationState.load(state_file, fingerprint, methods, total)
        if state.done == total:
            print(f"{state_file} holds this run, finished: its results again", file=sys.stderr)
        elif state.done:
            print(f"resuming from {state_file}: {state.done} of {total} images done", file=sys.stderr)
    return state


def rounds(start: int, total: int, batch_size: int, processes: int) -> list[list[range]]:
    """The batches of images `start` to `total`, `processes` at a time: a round of a data-parallel run gives each
    process one. They are the batches of a run in one process, resumed at `start` (a whole number of batches), so
    that the predictions do not depend on the number of processes."""
    batches = [range(first, min(first + batch_size, total)) for first in range(start, total, batch_size)]
    return [batches[first:first + processes] for first in range(0, len(batches), processes)]


def predict_in_turns(
    models: dict[str, torch.nn.Module],
    dataset: datasets.Dataset,
    processor: BaseImageProcessor,
    label_of: list[int],
    batch_size: int,
    state: EvaluationState,
    state_file: str | None,
    skip_bad_images: bool,
    parallel: PartialState,
) -> EvaluationState:
    """Every model's predictions on the images `state` has not done, timed in turns, added to `state` and saved to
    `state_file` after every round. Each process of the run (`parallel`) takes one batch of a round (the last round
    may leave a process none) and every process adds every batch, in data order: the seconds are summed over the
    processes."""
    methods = list(models)
    reference_model = next(iter(models.values()))
    dtype, device = reference_model.dtype, reference_model.device
    warm = False
    # the context closes the bar before an error is printed, so the message starts on a line of its own
    with torch.inference_mode(), tqdm(total=len(dataset), initial=state.done, desc="evaluate", unit="img",
                                      disable=not parallel.is_main_process) as progress:
        for round_index, batches in enumerate(rounds(state.done, len(dataset), batch_size, parallel.num_processes)):
            with parallel.split_between_processes(batches) as own:
                rows = [dataset[index] for batch in own for index in batch]
            try:
                pixel_values, labels, skipped, count = read_batch(rows, processor, label_of, skip_bad_images)
                part = EvaluationState.start({}, methods)
                part.labels, part.skipped, part.done = labels, skipped, count
                if len(labels):
                    pixel_values = pixel_values.to(device=device, dtype=dtype)
                    if not warm:  # untimed: first calls pay for allocation, kernel selection and cached constants
                        for model in models.values():
                            model(pixel_values)
                        warm = True
                    # the models take turns, the first one rotating between rounds
                    seconds, predictions = take_turns(
                        [partial(predict, models[method], pixel_values) for method in methods], round_index, device
                    )
                    part.seconds, part.predictions = dict(zip(methods, seconds)), dict(zip(methods, predictions))
            except Exception as error:  # raised below, in every process: none may wait in the gather for this one
                part = error
            shares = gather_object([part])  # every process's, in process order: the order of the images
            # a process raises its own error first: its traceback is the one that shows where it happened
            failures = [share for share in (part, *shares) if isinstance(share, Exception)]
            if failures:
                raise failures[0]
            for share in shares:
                state.extend(share)
                progress.update(share.done)
            if state_file:
                state.save(state_file)
    return state


def predict(model: torch.nn.Module, pixel_values: torch.Tensor) -> list[int]:
    """The model's top-1 class of every image."""
    return model(pixel_values).logits.argmax(-1).tolist()


def format_table(results: list[MethodResult]) -> str:
    width = max(5, *(len(r.keep) for r in results))  # per-layer rates read 0.7/0.7/0.5
    header = (f"{'method':<10} {'keep':>{width}} {'top-1 %':>8} {'agree %':>8} {'GMACs':>7} {'img/s':>8} "
              f"{'speed-up':>8}")
    lines = [header, "-" * len(header)]
    for r in results:
        top1 = f"{100 * r.top1:.1f}" if r.top1 is not None else "-"
        lines.append(
            f"{r.method:<10} {r.keep:>{width}} {top1:>8} {100 * r.agreement:>8.1f} {r.gmacs:>7.2f} "
            f"{r.images_per_second:>8.1f} {r.speedup:>7.2f}x"
        )
    return "\n".join(lines)


def results_json(results: list[MethodResult], **run) -> str:
    return json.dumps(stamp({**run, "results": [asdict(r) for r in results]}, RESULTS_KIND), indent=2)



def run_fingerprint(
    model: str, models: dict[str, torch.nn.Module], dataset: datasets.Dataset, data: str, **settings
) -> dict:
    """Everything that changes an evaluation's result: the checkpoint's files, the configs the models were built
    with (by name), the images, and the settings given (reduction flags, dtype, device, every, split, dataset
    config, synsets, ...), as JSON values."""
    synsets = settings.get("synsets")
    commit = getattr(next(iter(models.values())).config, "_commit_hash", None)
    fingerprint = {
        "model": resolved_source(model),
        "model_files": model_digest(model, commit),
        "model_configs": value_digest({name: module.config.to_diff_dict() for name, module in models.items()}),
        "methods": list(models),
        "data": resolved_source(data),
        "data_files": data_fingerprint(dataset),
        "images": len(dataset),
        **settings,
        "synsets": resolved_source(synsets),
        "synsets_content": file_digest(synsets) if synsets else None,
    }
    return json.loads(json.dumps(fingerprint))  # as it reads back from a state file (tuples become lists)


def run_evaluation(
    model: str,
    data: str,
    methods: list[str],
    keep_rate: float | tuple[float, ...] | None = None,
    batch_size: int = 32,
    every: int = 1,
    split: str = "validation",
    dataset_config: str | None = None,
    synsets: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    state_file: str | None = None,
    restart: bool = False,
    skip_bad_images: bool = False,
    overrides: dict | None = None,
) -> tuple[list[MethodResult], list[str]]:
    """Load the checkpoint once per method and the data once, and compare the methods side by side (`keep_rate`
    and `overrides` as in `build_models`). Returns the rows and the images skipped as unreadable."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    # a clear error for a checkpoint that is not an image classifier of a family this project reduces, before any data
    # work (the schedule is checked with the models)
    family_classes(model)[0].from_pretrained(model, reduction_method="none")
    dataset = load_images(data, split=split, every=every, dataset_config=dataset_config)
    models = build_models(model, methods, keep_rate, dtype, device, overrides)
    processor = AutoImageProcessor.from_pretrained(model)
    label_of = label_mapping(label_names(dataset), models["none"].config.id2label, synsets)
    reduction = {**(overrides or {}), **({"keep_rate": keep_rate} if keep_rate is not None else {})}
    fingerprint = run_fingerprint(  # the reduction flags by name, so that a refusal names the one that differs
        model, models, dataset, data, **reduction, dtype=str(dtype), device=torch.device(device).type,
        batch_size=batch_size, every=every, split=split, dataset_config=dataset_config, synsets=synsets,
    )
    return compare_methods(
        models, dataset, processor, label_of, batch_size=batch_size, state_file=state_file, fingerprint=fingerprint,
        restart=restart, skip_bad_images=skip_bad_images,
    )
