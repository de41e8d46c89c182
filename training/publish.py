"""The model card of a fine-tuning run, and the upload of its model folder to the Hub."""

from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData


CITATION = """@inproceedings{lee2025frequency,
  title     = {Frequency-Aware Token Reduction for Efficient Vision Transformer},
  author    = {Lee, Dong-Jae and Hur, Jiwan and Choi, Jaehyun and Yu, Jaemyung and Kim, Junmo},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2025},
  eprint    = {2511.21477},
}"""


def _percent(result: dict | None, key: str = "top1") -> str:
    value = (result or {}).get(key)
    return f"{100 * value:.1f}" if value is not None else "–"


def write_model_card(model_dir: Path, args, results: dict) -> None:
    """README.md for the Hub, written from the run: base model, method and schedule, data, metrics, GMACs,
    throughput, how to load it, the citation."""
    data = args.dataset_name or args.train_dir
    card_data = ModelCardData(
        base_model=args.model_name_or_path if "/" in str(args.model_name_or_path) and not Path(
            args.model_name_or_path).exists() else None,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["vision", "token-reduction", "freqvit", args.reduction_method],
        datasets=[args.dataset_name] if args.dataset_name else None,
    )
    gmacs = results["gmacs"]
    after, before, unreduced = results.get("after"), results.get("before"), results.get("unreduced")
    loss = "KL to the unreduced teacher only" if args.distill_only else f"CE + {args.distill_weight}·KL to the unreduced teacher"
    content = f"""---
{card_data.to_yaml()}
---

# {args.hub_model_id or Path(args.output_dir).name}

`{args.model_name_or_path}` with **{args.reduction_method}** token reduction (freqtr-hf), fine-tuned by
self-distillation from the unreduced model.

- Reduction: method `{args.reduction_method}`, layers {args.reduction_layers} (0-based), keep rate {args.keep_rate},
  DC windows {args.dc_window_sizes}
- Training: {results['steps']} steps on `{data}`, batch {args.per_device_train_batch_size} x
  {args.gradient_accumulation_steps} accumulation, AdamW lr {args.learning_rate}, weight decay {args.weight_decay},
  {args.lr_scheduler_type} schedule, {args.num_warmup_steps} warm-up steps, EMA {args.ema_decay}; loss: {loss}

| model | top-1 % | GMACs | images/s (eval) |
|---|---|---|---|
| unreduced | {_percent(unreduced)} | {gmacs['unreduced']:.2f} | {(unreduced or {}).get('images_per_second', 0):.1f} |
| reduced, before fine-tuning | {_percent(before)} | {gmacs['reduced']:.2f} | {(before or {}).get('images_per_second', 0):.1f} |
| reduced, fine-tuned | {_percent(after)} | {gmacs['reduced']:.2f} | {(after or {}).get('images_per_second', 0):.1f} |

Top-1 on `{args.validation_dir or args.dataset_name}` (every {args.validation_every}th image).

## How to use

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("{args.hub_model_id or 'path/to/this/folder'}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{args.hub_model_id or 'path/to/this/folder'}")
```

With `pip install freqtr-hf` and `import freqtr_hf`, `trust_remote_code` is not needed.

## Citation

```bibtex
{CITATION}
```
"""
    ModelCard(content).save(model_dir / "README.md")


def publish_to_hub(model_dir: Path, repo_id: str, token: str | None = None, api: HfApi | None = None) -> str:
    """Create the repository if needed and upload the model folder (weights, config, modeling code, image
    processor, model card). Returns the commit URL."""
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), commit_message="Upload FreqViT")
    return str(commit)
