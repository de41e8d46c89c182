"""A training-free reducing model, ready to push: a ViT/DeiT (or DINOv2, CLIP, SigLIP) checkpoint with a reduction
schedule, measured (classifiers) and carded.

    export_model("facebook/deit-small-patch16-224", "freqvit-small", {"keep_rate": 0.7}, data="imagenet/val")

writes a folder that loads anywhere with `AutoModelForImageClassification.from_pretrained(folder,
trust_remote_code=True)`: weights, config with `auto_map`, modeling code, image processor and a model card whose
model-index holds the top-1 and GMACs measured here, reduced against unreduced.
"""

from dataclasses import asdict
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoImageProcessor

from .models.freqvit import family_classes
from .models.freqvit.configuration_reduction import REDUCTION_FIELDS, TRAINING_FREE_METHODS, ReductionConfigMixin
from .devices import resolve_device
from .evaluation import run_evaluation
from .publishing import model_card, publish_to_hub, write_model_files
from .runs import MODEL_FOLDER, check_output_folder, exclusive_use, staged_folder


def export_model(
    model: str,
    output: str,
    reduction: dict,
    data: str | None = None,
    every: int = 1,
    synsets: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    push_to_hub: str | None = None,
    token: str | None = None,
    license: str | None = None,
    api: HfApi | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (a ViT, DeiT or FreqViT Hub id or folder) with the `reduction` overrides (FreqViTConfig fields:
    `reduction_method`, `keep_rate`, `reduction_layers`, `dc_window_sizes`, ...) to the folder `output`, with a model
    card. With `data` (a folder of class sub-folders, a saved dataset or a Hub dataset id), top-1, agreement and
    images/s are measured, unreduced against reduced, on every `every`-th image, and go into the card. With
    `push_to_hub` (a repo id), the folder is uploaded there. Returns the folder.

    Raises `ValueError` naming the problem: an `output` that holds files this project did not write as a model
    folder (they are named; nothing is removed), an earlier model folder (unless `overwrite`), one another export is
    writing, an unknown reduction field, a bad value, a method whose learned parameters this checkpoint lacks; and
    `PublishError` when the upload fails (the folder is then complete on disk)."""
    output = Path(output)
    unknown = sorted(set(reduction) - set(REDUCTION_FIELDS))
    if unknown:
        raise ValueError(f"reduction: unknown field(s) {unknown}; the fields are {list(REDUCTION_FIELDS)}")
    if every < 1:
        raise ValueError(f"every: must be >= 1, got {every}")
    if push_to_hub is not None:
        try:
            validate_repo_id(push_to_hub)
        except HFValidationError as error:
            raise ValueError(f"push_to_hub: {push_to_hub!r} is not a Hub repository id ({error})") from error
    target = resolve_device(device)

    check_output_folder(output, "--output", MODEL_FOLDER, "--overwrite", overwrite)
    with exclusive_use(output, "--output"):  # a second export there would replace this one's folder
        check_output_folder(output, "--output", MODEL_FOLDER, "--overwrite", overwrite)  # as it is under the lock
        model_class = export_class(model)
        if data and not model_class.__name__.endswith("ForImageClassification"):
            raise ValueError(f"--data: {model} has no image classifier, so no accuracy can be measured; leave out "
                             "--data (the folder is written as an encoder)")
        reduced, info = model_class.from_pretrained(model, output_loading_info=True, **reduction)
        check_trained(reduced.config, info["missing_keys"])
        processor = AutoImageProcessor.from_pretrained(model)
        results = measure(model, reduction, reduced.config, data, every, synsets, batch_size, target) if data else None
        with staged_folder(output) as staging:
            write_model_files(staging, reduced, processor)
            model_card(
                reduced.config, base_model=model, results=results, eval_data=data, eval_every=every,
                name=output.name, repo_id=push_to_hub, license=license,
            ).save(staging / "README.md")
        if push_to_hub is not None:  # under the lock: no other export replaces the folder while it uploads
            publish_to_hub(output, push_to_hub, token=token, api=api)
    return output


def export_class(model: str) -> type:
    """The reducing class an export writes for the checkpoint `model`: its family's image classifier, or the encoder
    where the checkpoint has none (CLIP's and SigLIP's vision towers, DINOv2 without a head)."""
    try:
        return family_classes(model)[1]
    except ValueError:  # no classifier in the family; a checkpoint of no family raises again, naming its type
        return family_classes(model, "AutoModel")[1]


def check_trained(config: ReductionConfigMixin, missing_keys: list[str]) -> None:
    """Refuse the unreduced model (nothing to export), and a learned method whose parameters the checkpoint does
    not hold: untrained, it computes nonsense (SiT and Sinkhorn reach 0% top-1). The training-free methods' own
    parameters start at zero, which computes the method exactly."""
    if config.reduction_method == "none":
        raise ValueError("reduction_method: 'none' is the unreduced model; export a reduction method, such as 'freq'")
    if config.reduction_method not in TRAINING_FREE_METHODS and missing_keys:
        raise ValueError(
            f"reduction_method: {config.reduction_method!r} learns parameters that this checkpoint lacks "
            f"({', '.join(sorted(missing_keys)[:3])}, ...); fine-tune it first (training/finetune.py), or export a "
            f"training-free method: {', '.join(TRAINING_FREE_METHODS)}"
        )


def measure(
    model: str, reduction: dict, config: ReductionConfigMixin, data: str, every: int, synsets: str | None, batch_size: int,
    device,
) -> dict[str, dict]:
    """Top-1, agreement and images/s of the model as exported (the checkpoint with the reduction overrides, whose
    resolved method and keep rate `config` holds) and of the unreduced checkpoint, as the model card wants them."""
    overrides = {key: value for key, value in reduction.items() if key not in ("reduction_method", "keep_rate")}
    rows, _ = run_evaluation(
        model, data, [config.reduction_method], keep_rate=config.keep_rate, batch_size=batch_size, every=every,
        synsets=synsets, device=device, overrides=overrides,
    )
    by_method = {row.method: asdict(row) for row in rows}
    return {"unreduced": by_method["none"], "before": by_method[config.reduction_method]}
