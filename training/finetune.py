"""Fine-tune a token-reducing ViT by self-distillation from the unreduced model, with Accelerate.

    accelerate launch training/finetune.py --model_name_or_path facebook/deit-small-patch16-224 \
        --train_dir imagenet/train --validation_dir imagenet/val --output_dir out/freqvit-small

The command line follows transformers' `run_image_classification_no_trainer.py`, plus the reduction settings. The
recipe of the paper is the default: AdamW lr 1e-4, weight decay 2e-5, cosine schedule without warm-up, EMA 0.9998,
loss CE + 0.5·KL(T=1) to the frozen unreduced teacher (`--distill_only`: KL alone, no labels needed).
Multi-GPU, multi-node, DeepSpeed and FSDP come from `accelerate config`, as for any Accelerate script.
"""

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import evaluate
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, get_scheduler

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification, count_macs
from freqtr_hf.configuration_freqvit import REDUCTION_METHODS
from freqtr_hf.evaluation import METRIC_SCRIPT, label_mapping, load_images

from publish import publish_to_hub, write_model_card


CHECKPOINT_PREFIX = "step_"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="facebook/deit-tiny-patch16-224")
    parser.add_argument("--dataset_name", help="a Hub dataset id (or a folder saved with save_to_disk)")
    parser.add_argument("--train_dir", help="a folder of class sub-folders")
    parser.add_argument("--validation_dir", help="a folder of class sub-folders")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--validation_split", default="validation")
    parser.add_argument("--validation_every", type=int, default=1, help="evaluate on every N-th validation image")
    parser.add_argument("--max_train_samples", type=int)
    parser.add_argument("--synsets", help="class list mapping folder names (wnids) to the pretrained head's classes")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--per_device_train_batch_size", type=int, default=64)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=2e-5)
    parser.add_argument("--num_train_epochs", type=int, default=30)
    parser.add_argument("--max_train_steps", type=int, help="overrides --num_train_epochs")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_scheduler_type", default="cosine")
    parser.add_argument("--num_warmup_steps", type=int, default=0)
    parser.add_argument("--ema_decay", type=float, default=0.9998, help="0 disables the EMA")
    parser.add_argument("--distill_weight", type=float, default=0.5)
    parser.add_argument("--distill_only", action="store_true", help="loss: KL to the teacher alone, no labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, help="save a resumable checkpoint every N steps")
    parser.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' in --output_dir")
    parser.add_argument("--eval_steps", type=int, help="evaluate every N steps (and always at the end)")
    parser.add_argument("--with_tracking", action="store_true")
    parser.add_argument("--report_to", default="tensorboard")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: bf16 where supported")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id")
    parser.add_argument("--hub_token")
    parser.add_argument("--reduction_method", default="freq", choices=[m for m in REDUCTION_METHODS if m != "none"])
    parser.add_argument("--keep_rate", type=float, nargs="+", default=[0.7])
    parser.add_argument("--reduction_layers", type=int, nargs="+", default=[3, 6, 9])
    parser.add_argument("--dc_window_sizes", type=int, nargs="+", default=[2, 1, 1])
    args = parser.parse_args(argv)
    if not (args.dataset_name or args.train_dir):
        parser.error("give --dataset_name or --train_dir")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    return args


def random_resized_crop_and_flip(
    pixels: torch.Tensor, size: tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """The standard training augmentation on a batch (B, C, H, W): per image, a random crop of 8-100% of the area
    at an aspect ratio of 3/4-4/3, resized to `size`, flipped left-right half of the time.

    It runs in the training step on torch's RNG (torchvision has no CPU wheel here): the data loader reads a batch
    ahead, so randomness drawn there would escape the RNG state that a checkpoint saves."""
    height, width = pixels.shape[-2:]
    crops = []
    for image in pixels:
        crop_h, crop_w, top, left = height, width, 0, 0
        for _ in range(10):
            area = height * width * torch.empty(1).uniform_(*scale).item()
            aspect = math.exp(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1])).item())
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                crop_h, crop_w = h, w
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                break
        crop = image[None, :, top : top + crop_h, left : left + crop_w]
        crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)
        crops.append(crop.flip(-1) if torch.rand(1).item() < 0.5 else crop)
    return torch.cat(crops)


def make_collate(processor, label_of: list[int], train: bool):
    """Preprocess a batch of rows: the processor's resize (and, for evaluation, centre crop) and normalisation.
    Training batches keep the resized image uncropped, for `random_resized_crop_and_flip`."""
    resize_only = {}
    if train and getattr(processor, "do_center_crop", False):
        edge = processor.size.get("shortest_edge", processor.crop_size["height"])
        resize_only = {"size": {"height": edge, "width": edge}, "do_center_crop": False}

    def collate(rows):
        images = [row["image"].convert("RGB") for row in rows]
        pixels = processor(images, return_tensors="pt", **resize_only)["pixel_values"]
        labels = torch.tensor([label_of[row["label"]] if "label" in row else -1 for row in rows])
        return {"pixel_values": pixels, "labels": labels}

    return collate


def model_input_size(processor) -> tuple[int, int]:
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    return size["height"], size["width"]


def load_split(args, train: bool):
    if args.dataset_name:
        split = args.train_split if train else args.validation_split
        return load_images(args.dataset_name, split=split, every=1 if train else args.validation_every)
    folder = args.train_dir if train else args.validation_dir
    return load_images(folder, every=1 if train else args.validation_every) if folder else None


def build_student(args, label_names: list[str]):
    """The reduced student and the frozen unreduced teacher. Class folders that are ImageNet classes of the
    pretrained head keep the head (and its labels); otherwise a new head is made and distillation is off."""
    reduction = dict(
        reduction_method=args.reduction_method,
        keep_rate=args.keep_rate[0] if len(args.keep_rate) == 1 else tuple(args.keep_rate),
        reduction_layers=tuple(args.reduction_layers),
        dc_window_sizes=tuple(args.dc_window_sizes),
    )
    pretrained = FreqViTConfig.from_pretrained(args.model_name_or_path)
    label_of = label_mapping(label_names, pretrained.id2label, args.synsets) if label_names else []
    keep_head = bool(label_names) and all(index >= 0 for index in label_of)
    head = {}
    if label_names and not keep_head:
        label_of = list(range(len(label_names)))
        head = dict(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            ignore_mismatched_sizes=True,
        )
    student = FreqViTForImageClassification.from_pretrained(args.model_name_or_path, **reduction, **head)
    teacher = None
    if keep_head or not label_names:
        teacher = FreqViTForImageClassification.from_pretrained(args.model_name_or_path, reduction_method="none")
        teacher.requires_grad_(False).eval()
    return student, teacher, label_of


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature 1, per image."""
    return F.kl_div(
        student_logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1), log_target=True,
        reduction="batchmean",
    )


def training_loss(args, outputs, labels: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
    logits = outputs.logits
    if args.distill_only:
        loss = distillation_loss(logits, teacher_logits)
    else:
        loss = F.cross_entropy(logits.float(), labels)
        if teacher_logits is not None:
            loss = loss + args.distill_weight * distillation_loss(logits, teacher_logits)
    if outputs.auxiliary_loss is not None:  # DynamicViT's keep-ratio loss
        loss = loss + outputs.auxiliary_loss
    return loss


@torch.no_grad()
def evaluate_top1(model, loader, accelerator, reference=None) -> dict:
    """Top-1 (against known labels) and images/s on the evaluation loader; agreement with `reference` if given."""
    metric = evaluate.load(METRIC_SCRIPT)
    model.eval()
    seconds = 0.0
    for batch in tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        start = time.perf_counter()
        logits = model(batch["pixel_values"]).logits
        seconds += time.perf_counter() - start
        reference_predictions = reference(batch["pixel_values"]).logits.argmax(-1) if reference else logits.argmax(-1)
        predictions, labels, reference_predictions = accelerator.gather_for_metrics(
            (logits.argmax(-1), batch["labels"], reference_predictions)
        )
        metric.add_batch(predictions=predictions, references=labels, reference_predictions=reference_predictions)
    result = metric.compute()
    result["images_per_second"] = result["num_labelled"] / seconds if seconds else 0.0
    return result


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints in a run folder, oldest first (a save writes `step_N.tmp`, then renames it)."""
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int) -> None:
    """Save the full training state; a save cut short leaves only a `.tmp` folder, never a broken checkpoint."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    temporary = output_dir / f"{final.name}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(temporary, final)


def resolve_checkpoint(args) -> Path | None:
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = checkpoints(Path(args.output_dir))
        return found[-1] if found else None
    path = Path(args.resume_from_checkpoint)
    if not path.is_dir():
        raise SystemExit(f"--resume_from_checkpoint: {path} is not a checkpoint folder")
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    mixed_precision = args.mixed_precision or ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    train_data = load_split(args, train=True)
    if args.max_train_samples:
        train_data = train_data.select(range(min(args.max_train_samples, len(train_data))))
    eval_data = load_split(args, train=False)
    label_names = train_data.features["label"].names if "label" in train_data.features else []
    if not label_names and not args.distill_only:
        raise SystemExit("the training data has no labels: pass --distill_only to train by distillation alone")
    student, teacher, label_of = build_student(args, label_names)
    if teacher is None and args.distill_only:
        raise SystemExit("--distill_only needs the pretrained head: the class folders are not its classes")
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    input_size = model_input_size(processor)

    # its own generator: a new iterator (e.g. the one that skips batches on resume) then draws nothing from the
    # global RNG, which the augmentation uses and the checkpoints save
    train_loader = torch.utils.data.DataLoader(
        train_data, shuffle=True, batch_size=args.per_device_train_batch_size,
        collate_fn=make_collate(processor, label_of, train=True), generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = None
    if eval_data is not None:
        eval_label_names = eval_data.features["label"].names if "label" in eval_data.features else []
        eval_label_of = [label_of[label_names.index(n)] if n in label_names else -1 for n in eval_label_names]
        eval_loader = torch.utils.data.DataLoader(
            eval_data, batch_size=args.per_device_eval_batch_size,
            collate_fn=make_collate(processor, eval_label_of, train=False),
        )

    updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    epochs = math.ceil(max_steps / updates_per_epoch)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    student, optimizer, train_loader, scheduler = accelerator.prepare(student, optimizer, train_loader, scheduler)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    if teacher is not None:
        teacher = teacher.to(accelerator.device)
    ema = None
    if args.ema_decay > 0:
        ema = AveragedModel(accelerator.unwrap_model(student), multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay))
        accelerator.register_for_checkpointing(ema)

    run_config = {k: v for k, v in vars(args).items() if k != "hub_token"}
    if args.with_tracking:
        accelerator.init_trackers("freqtr_finetune", config={k: str(v) for k, v in run_config.items()})

    history = {"step": [], "loss": [], "eval_step": [], "eval_top1": []}
    before = None
    if eval_loader is not None and not args.resume_from_checkpoint:
        before = evaluate_top1(student, eval_loader, accelerator, reference=teacher)
        history["eval_step"].append(0)
        history["eval_top1"].append(before.get("top1"))

    step, resume_batches = 0, 0
    checkpoint = resolve_checkpoint(args)
    if checkpoint is not None:
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # a missing or broken file: say which checkpoint, keep the cause
            raise SystemExit(f"cannot resume from {checkpoint}: {type(error).__name__}: {error}") from error
        step = int(checkpoint.name[len(CHECKPOINT_PREFIX) :])
        history_file = checkpoint / "history.json"
        if history_file.exists():
            history = json.loads(history_file.read_text())
        resume_batches = (step % updates_per_epoch) * args.gradient_accumulation_steps

    progress = tqdm(total=max_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    for epoch in range(step // updates_per_epoch, epochs):
        student.train()
        train_loader.set_epoch(epoch)
        loader = train_loader
        if resume_batches:
            loader, resume_batches = accelerator.skip_first_batches(train_loader, resume_batches), 0
        for batch in loader:
            with accelerator.accumulate(student):
                pixels = random_resized_crop_and_flip(batch["pixel_values"], input_size)
                teacher_logits = None
                if teacher is not None and (args.distill_weight > 0 or args.distill_only):
                    with torch.no_grad():
                        teacher_logits = teacher(pixels).logits
                outputs = student(pixels)
                loss = training_loss(args, outputs, batch["labels"], teacher_logits)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if ema is not None:
                ema.update_parameters(accelerator.unwrap_model(student))
            loss_value = accelerator.gather(loss.detach()).mean().item()
            history["step"].append(step)
            history["loss"].append(loss_value)
            progress.set_postfix(loss=f"{loss_value:.4f}")
            if args.with_tracking:
                accelerator.log({"train_loss": loss_value, "lr": scheduler.get_last_lr()[0]}, step=step)
            if eval_loader is not None and args.eval_steps and step % args.eval_steps == 0 and step < max_steps:
                result = evaluate_top1(ema.module if ema else student, eval_loader, accelerator)
                history["eval_step"].append(step)
                history["eval_top1"].append(result.get("top1"))
                if args.with_tracking:
                    accelerator.log({"eval_top1": result.get("top1")}, step=step)
                student.train()
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, step)
                if accelerator.is_main_process:
                    (output_dir / f"{CHECKPOINT_PREFIX}{step}" / "history.json").write_text(json.dumps(history))
            if step >= max_steps:
                break
        if step >= max_steps:
            break
    progress.close()

    final_model = ema.module if ema is not None else accelerator.unwrap_model(student)
    results = {"steps": step, "config": run_config}
    if eval_loader is not None:
        after = evaluate_top1(final_model, eval_loader, accelerator, reference=teacher)
        history["eval_step"].append(step)
        history["eval_top1"].append(after.get("top1"))
        results["after"] = after
        if before is not None:
            results["before"] = before
        if teacher is not None:
            results["unreduced"] = evaluate_top1(teacher, eval_loader, accelerator)
        if args.with_tracking:
            accelerator.log({"eval_top1": after.get("top1")}, step=step)
    config = accelerator.unwrap_model(student).config
    unreduced = FreqViTConfig(**{**config.to_dict(), "reduction_method": "none"})
    results["gmacs"] = {"unreduced": count_macs(unreduced) / 1e9, "reduced": count_macs(config) / 1e9}
    results["history"] = history
    if args.with_tracking:
        accelerator.end_training()

    if accelerator.is_main_process:
        model_dir = output_dir / "model"
        final_model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        write_model_card(model_dir, args, results)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        plot_learning_curve(history, output_dir / "learning_curve.png")
        if args.push_to_hub:
            publish_to_hub(model_dir, args.hub_model_id, token=args.hub_token)
    accelerator.wait_for_everyone()
    return results


def plot_learning_curve(history: dict, path: Path) -> None:
    """Training loss and evaluation top-1 against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(history["step"], history["loss"], color="tab:blue", alpha=0.6, label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if any(v is not None for v in history["eval_top1"]):
        top1_axis = loss_axis.twinx()
        top1 = [100 * v if v is not None else float("nan") for v in history["eval_top1"]]
        top1_axis.plot(history["eval_step"], top1, "o-", color="tab:red", label="eval top-1")
        top1_axis.set_ylabel("eval top-1 (%)", color="tab:red")
    figure.suptitle("FreqViT fine-tuning")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
