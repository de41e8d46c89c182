"""Ready-to-push model folders and their model cards, for fine-tuning runs and training-free exports alike.

A model folder holds the weights, the config with its `auto_map`, the modeling code, the image processor and a model
card (`README.md`) whose metadata the Hub reads: license, library, pipeline tag, base model, datasets, tags, and a
model-index with the measured top-1 and GMACs. Where the folder is written, and what it may replace, is `runs`'s.
"""

from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .models.freqvit.configuration_reduction import ReductionConfigMixin
from .macs import count_macs
from .runs import MARKER
from .sources import is_hub_id
from .models.freqvit.token_schedule import configured_sequence_lengths


DEFAULT_LICENSE = "apache-2.0"
# freq's options beyond its token budget: the card lists those a model sets away from the paper's method
FREQ_OPTIONS = (
    "attention_reweighting", "dc_position_embedding", "dc_update", "dc_empty_fill", "score_source",
    "low_frequency_merge", "merge_features", "proportional_attention", "dc_key_weight_exponent", "low_frequency_pool",
)
INSTALL = 'pip install "transformers>=5" torch pillow'
CITATION = """@inproceedings{lee2025frequency,
  title     = {Frequency-Aware Token Reduction for Efficient Vision Transformer},
  author    = {Lee, Dong-Jae and Hur, Jiwan and Choi, Jaehyun and Yu, Jaemyung and Kim, Junmo},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2025},
  eprint    = {2511.21477},
}"""
# the rows of a card's results table: key in the results dict, label
RESULT_ROWS = {
    "unreduced": "unreduced",
    "before": "reduced, without fine-tuning",
    "after": "reduced, fine-tuned",
}
METHOD_SUMMARIES = {
    "freq": "frequency-aware token reduction: the high-frequency tokens are kept, the low-frequency ones are "
    "averaged into DC tokens, and attention is reweighted",
}


def method_summary(config: ReductionConfigMixin) -> str:
    """What the card says the reduction does, in a phrase."""
    if config.reduction_method == "freq" and config.low_frequency_merge == "nearest":
        weights = ", and every token weighs as many attention keys as the patches it holds"
        if config.dc_key_weight_exponent != 1.0:
            weights += f" (a DC token that count to the power {config.dc_key_weight_exponent:g})"
        pool = ""
        if config.low_frequency_pool:
            share = f"{config.low_frequency_pool:.0%}"
            pool = (f"; where a stage gives up under {share} of its tokens, it gives up those of its lowest-scoring "
                    f"{share} with the closest twin among the tokens that stay")
        return (
            "frequency-aware token reduction with training-free options (freqtr_hf.TRAINING_FREE_FREQ): the "
            "high-frequency tokens are kept, and each low-frequency one joins the most similar kept token or its "
            f"window's DC token{weights if config.proportional_attention else ''}{pool}"
        )
    return METHOD_SUMMARIES.get(config.reduction_method, "a baseline token-reduction method")


def public_name(source: str, parts: int = 1) -> str:
    """How a model or data source appears in a card: a Hub id as it is, a local path by its last `parts` folder
    names (`imagenette/val`), so that no path of the machine that built the model leaks."""
    if is_hub_id(source):
        return source
    return "/".join(Path(source).resolve().parts[-parts:])


def base_model_license(model: str) -> str | None:
    """The license in the model card of a local folder or Hub repository, None where there is no card or the Hub
    cannot be reached."""
    card = Path(model) / "README.md"
    try:
        if Path(model).is_dir():
            return ModelCard.load(card).data.license if card.exists() else None
        return ModelCard.load(model).data.license if is_hub_id(model) else None
    except (OSError, ValueError):  # no card on the Hub, no network, a card without metadata
        return None


def gmacs(config: ReductionConfigMixin) -> dict[str, float]:
    """GMACs per image of the model and of its unreduced counterpart (same weights, reduction off)."""
    unreduced = type(config)(**{**config.to_dict(), "reduction_method": "none", "tome_r": None})
    return {"unreduced": count_macs(unreduced) / 1e9, "reduced": count_macs(config) / 1e9}


def token_counts(config: ReductionConfigMixin) -> list[int]:
    """The sequence lengths the model goes through at its configured image size, e.g. [197, 142, 97, 68]."""
    lengths = []
    for attention_length, mlp_length in configured_sequence_lengths(config):
        for length in (attention_length, mlp_length):
            if not lengths or lengths[-1] != length:
                lengths.append(length)
    return lengths


def model_card(
    config: ReductionConfigMixin,
    base_model: str,
    results: dict[str, dict] | None = None,
    eval_data: str | None = None,
    eval_every: int = 1,
    eval_split: str | None = None,
    train_data: str | None = None,
    training: str | None = None,
    name: str = "freqvit",
    repo_id: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of a FreqViT folder.

    `results` maps `"unreduced"`, `"before"` (reduced, not fine-tuned) and `"after"` (fine-tuned) to measurements
    with `top1` (None without labels) and `agreement` (with the unreduced model). `training`
    is a Markdown paragraph on how the model was fine-tuned (None: it was not). `name` is the folder's name, used
    where there is no `repo_id`. `license` defaults to the base model's, else Apache-2.0."""
    results = results or {}
    repo = repo_id or name
    macs = gmacs(config)
    datasets = [source for source in (train_data, eval_data) if source and is_hub_id(source)]
    eval_results = _eval_results(results, macs, eval_data, eval_split) if eval_data else None
    # an encoder (a vision tower, DINOv2 without a head) gives features; the saved model's class says which it is
    architectures = config.architectures or []
    classifies = not architectures or any(name.endswith("ForImageClassification") for name in architectures)
    task = "image-classification" if classifies else "image-feature-extraction"
    card_data = ModelCardData(
        license=license or base_model_license(base_model) or DEFAULT_LICENSE,
        library_name="transformers",
        pipeline_tag=task,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=list(dict.fromkeys(datasets)) or None,
        tags=["vision", task, "token-reduction", "freqvit", config.reduction_method],
        model_name=repo if eval_results else None,
        eval_results=eval_results,
    )
    method = config.reduction_method
    how = "fine-tuned by self-distillation from the unreduced model" if training else "used as it is, without fine-tuning"
    sections = [
        f"# {repo}",
        f"`{public_name(base_model)}` with **{method}** token reduction ({method_summary(config)}), {how}. "
        f"{'The method' if method == 'freq' else 'Compared as a baseline in'}: Lee et al., *Frequency-Aware Token "
        "Reduction for Efficient Vision Transformer*, NeurIPS 2025 ([arXiv:2511.21477](https://arxiv.org/abs/2511.21477)); "
        "the model was made with freqtr-hf.",
        _reduction_table(config),
        _results_section(results, macs, eval_data, eval_every, eval_split),
    ]
    if training:
        sections.append(f"## Training\n\n{training}")
    sections += [_usage(repo, classifies), f"## Citation\n\n```bibtex\n{CITATION}\n```"]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _eval_results(results: dict, macs: dict, data: str, split: str | None) -> list[EvalResult]:
    """model-index entries: top-1 (%) and agreement (%) per measured row, GMACs of both models."""
    dataset = dict(
        task_type="image-classification",
        dataset_type=data if is_hub_id(data) else "imagefolder",
        dataset_name=public_name(data, parts=2),
        dataset_split=split if is_hub_id(data) else None,
    )
    entries = []
    for key, label in RESULT_ROWS.items():
        result = results.get(key) or {}
        if result.get("top1") is not None:
            entries.append(EvalResult(**dataset, metric_type="accuracy", metric_name=f"top-1 % ({label})",
                                      metric_value=round(100 * result["top1"], 2)))
        if key != "unreduced" and result.get("agreement") is not None:
            entries.append(EvalResult(**dataset, metric_type="agreement",
                                      metric_name=f"agreement with unreduced % ({label})",
                                      metric_value=round(100 * result["agreement"], 2)))
    for key in ("unreduced", "reduced"):
        entries.append(EvalResult(**dataset, metric_type="gmacs", metric_name=f"GMACs per image ({key})",
                                  metric_value=round(macs[key], 3)))
    return entries


def _reduction_table(config: ReductionConfigMixin) -> str:
    rows = [("reduction_method", config.reduction_method)]
    if config.tome_r is not None:
        rows.append(("tome_r", f"{config.tome_r} tokens merged in every block"))
    else:
        rows += [("reduction_layers", f"{list(config.reduction_layers)} (0-based blocks)"),
                 ("keep_rate", config.keep_rate)]
        if config.reduction_method == "freq":
            rows.append(("dc_window_sizes", list(config.dc_window_sizes)))
            default = type(config)()  # freq's options that differ from the paper's method (e.g. TRAINING_FREE_FREQ)
            rows += [(field, getattr(config, field)) for field in FREQ_OPTIONS
                     if getattr(config, field) != getattr(default, field)]
    rows.append(("tokens", " → ".join(str(n) for n in token_counts(config))))
    lines = ["## Reduction", "", "| setting | value |", "|---|---|"]
    return "\n".join(lines + [f"| `{field}` | {value} |" for field, value in rows])


def _results_section(results: dict, macs: dict, data: str | None, every: int, split: str | None) -> str:
    header = ["## Results", "", "| model | top-1 % | agreement with unreduced % | GMACs |", "|---|---|---|---|"]
    rows = []
    for key, label in RESULT_ROWS.items():
        result = results.get(key)
        if key == "after" and result is None:  # not fine-tuned; the reduced model's cost is always shown
            continue
        result = result or {}
        rows.append(
            f"| {label} | {_percent(result.get('top1'))} | {_percent(result.get('agreement'))} "
            f"| {macs['unreduced' if key == 'unreduced' else 'reduced']:.2f} |"
        )
    speed = (" Speed is given as the GMACs, counted analytically: images/s depend on the machine, the batch and the "
             "load, and one measurement is too noisy for a card (`freqtr-hf evaluate` measures them side by side).")
    if data is None:
        note = "Accuracy was not measured (no evaluation data was given)." + speed
    else:
        source = f"the Hub dataset `{data}`" + (f" (split `{split}`)" if split else "") if is_hub_id(data) else (
            f"the local image folder `{public_name(data, parts=2)}`")
        suffix = "th" if every % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(every % 10, "th")
        step = "every image" if every == 1 else f"every {every}{suffix} image (files sorted by path)"
        count = next((results[key]["images"] for key in RESULT_ROWS if (results.get(key) or {}).get("images")), None)
        step += f", {count} images" if count else ""
        note = f"Measured on {source}, {step}." + speed
    return "\n".join(header + rows + ["", note])


TOWER_NOTE = """

`pooler_output` is the encoder's pooled token (DINOv2: the normed CLS token; CLIP: the post-normed CLS token;
SigLIP: the attention-pooling head's output). CLIP's and SigLIP's come before their vision-language model's projection:
for zero-shot classification put the model in `CLIPModel.vision_model` (or `SiglipModel.vision_model`), which
projects it."""


def _usage(repo: str, classifies: bool) -> str:
    """How to use the folder: an image classifier, or a vision tower's features."""
    if classifies:
        auto_class, result = "AutoModelForImageClassification", "logits"
        last = "print(model.config.id2label[logits.argmax(-1).item()])\n"
        pipeline = f"""

Or as a pipeline:

```python
from transformers import pipeline

print(pipeline("image-classification", model="{repo}", trust_remote_code=True)("image.jpg"))
```"""
    else:
        auto_class, result, last, pipeline = "AutoModel", "pooler_output", "", ""
    name = "logits" if classifies else "features"
    return f"""## How to use

The modeling code comes with the weights, so only transformers and torch are needed:

```bash
{INSTALL}
```

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, {auto_class}

model = {auto_class}.from_pretrained("{repo}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{repo}")
image = Image.open("image.jpg").convert("RGB")
with torch.no_grad():
    {name} = model(**processor(image, return_tensors="pt")).{result}
{last}```{pipeline if classifies else TOWER_NOTE}"""


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "–"


def write_model_files(folder: Path, model, processor) -> None:
    """The files of a model folder but its card: weights, config with `auto_map` and modeling code (`save_pretrained`
    of a FreqViT writes all three), and the image processor. The card (`model_card(...)`) goes to `README.md`."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


class PublishError(RuntimeError):
    """The upload of a complete model folder failed; the folder stays on disk, ready to upload later."""


def publish_to_hub(folder: Path, repo_id: str, token: str | None = None, api: HfApi | None = None) -> str:
    """Create the model repository if needed and upload the folder. Returns the commit URL. Any failure (the Hub
    unreachable, no or a wrong token, no write access) raises `PublishError`, which names the folder and how to
    upload it later, with the cause chained."""
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload FreqViT",
                                   ignore_patterns=[MARKER])
    except Exception as error:  # the network boundary: every cause gets the same advice, and stays chained
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PublishError(
            f"uploading {folder} to {repo_id} failed ({type(error).__name__}: {reason}); the folder is complete: "
            f"upload it later with `hf upload {repo_id} {folder}`"
        ) from error
    return str(commit)
