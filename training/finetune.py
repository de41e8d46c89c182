"""Fine-tune a token-reducing ViT by self-distillation from the unreduced model, with Accelerate.

    accelerate launch --mixed_precision bf16 training/finetune.py --model_name_or_path facebook/deit-small-patch16-224 \
        --train_dir imagenet/train --validation_dir imagenet/val --output_dir out/freqvit-small

The command line follows transformers' `run_image_classification_no_trainer.py`, plus the reduction settings. The
recipe of the paper is the default: AdamW lr 1e-4, weight decay 2e-5, cosine schedule without warm-up, EMA 0.9998,
loss CE + 0.5·KL(T=1) to the frozen unreduced teacher (`--distill_only`: KL alone, no labels needed).
`--calibrate` trains only the reduction's own parameters (freq: ω1, ω2, the DC position embeddings; about a thousand
numbers for DeiT-Tiny) by KL alone, on a few hundred unlabeled images: the ViT's weights stay as they were.
Multi-GPU, multi-node, DeepSpeed and FSDP come from `accelerate config`, as for any Accelerate script.

Interrupted anywhere, the same command with `--resume_from_checkpoint latest` continues from the last checkpoint and
ends exactly as the uninterrupted run would have; a resume with other settings, model or data is refused.
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import datasets
import evaluate
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, parse_flag_from_env, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, get_scheduler

from freqtr_hf.models.freqvit import family_classes
from freqtr_hf.models.freqvit.configuration_freqvit import FREQ_PRESETS, REDUCTION_FIELDS, REDUCTION_METHODS
from freqtr_hf.commands import reduction_overrides
from freqtr_hf.devices import synchronize
from freqtr_hf.evaluation import METRIC_SCRIPT
from freqtr_hf.data import class_names, data_fingerprint, label_mapping, label_names, load_images
from freqtr_hf.fingerprint import file_digest, model_digest, resolved_source
from freqtr_hf.finetuning import (
    CHECKPOINT, check_same_job, checkpoints, distillation_loss, loading, make_collate, model_input_size,
    plot_learning_curve, random_resized_crop_and_flip, read_fingerprint, read_run_state, save_checkpoint,
)
from freqtr_hf.images import ImageReadError
from freqtr_hf.publishing import (
    PublishError, gmacs, is_hub_id, model_card, public_name, publish_to_hub, write_model_files,
)
from freqtr_hf.runs import (
    OutputRefused, RunInUseError, check_output_folder, exclusive_use, remove_stale_temporaries, staged_folder,
    write_atomically, write_marker,
)
from freqtr_hf.cli import (
    HelpFormatter, decay, non_negative_float, non_negative_int, positive_float, positive_int,
)


RUN_FILE = "run.json"  # in --output_dir: the job's fingerprint, written before the first step
TRACKER_PROJECT = "freqtr_finetune"
RUN_FOLDER = "fine-tuning run"  # the kind of folder --output_dir is (see freqtr_hf.runs)
# the settings that make a job: a resume must have the same (output, logging and checkpoint timing may change)
JOB_SETTINGS = (
    "dataset_name", "train_split", "validation_split", "validation_every", "max_train_samples",
    "per_device_train_batch_size", "learning_rate", "weight_decay", "num_train_epochs", "max_train_steps",
    "gradient_accumulation_steps", "lr_scheduler_type", "num_warmup_steps", "ema_decay", "distill_weight",
    "distill_only", "seed", "eval_steps", "calibrate", "skip_bad_images",
)  # and the reduction the flags, the preset and the checkpoint made: the student's REDUCTION_FIELDS, by name
# transformers' schedulers that need nothing but warm-up and training steps (the others take extra arguments)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
# --calibrate trains a thousand zero-initialised numbers in a few hundred steps: a larger rate and no EMA
CALIBRATION_DEFAULTS = {"learning_rate": 3e-2, "ema_decay": 0.0}
FINE_TUNING_DEFAULTS = {"learning_rate": 1e-4, "ema_decay": 0.9998}
INSTALL_TRAIN = 'pip install -e ".[train]" (in the freqtr-hf checkout), or pip install matplotlib tensorboard'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--model_name_or_path", default="facebook/deit-tiny-patch16-224",
                        help="Hub id or folder of an image classification checkpoint: ViT, DeiT, DINOv2 (with or without "
                        "registers), or one of these saved reduced")
    parser.add_argument("--dataset_name", help="a Hub dataset id (or a folder saved with save_to_disk)")
    parser.add_argument("--train_dir", help="a folder of class sub-folders")
    parser.add_argument("--validation_dir", help="a folder of class sub-folders")
    parser.add_argument("--train_split", default="train", help="split of --dataset_name to train on")
    parser.add_argument("--validation_split", default="validation", help="split of --dataset_name to evaluate on")
    parser.add_argument("--validation_every", type=positive_int, default=1, help="evaluate on every N-th validation image")
    parser.add_argument("--max_train_samples", type=positive_int,
                        help="train on N images only, drawn at random (--seed) from the training data")
    parser.add_argument("--synsets", help="class list mapping folder names (wnids) to the pretrained head's classes")
    parser.add_argument("--skip_bad_images", action="store_true",
                        help="skip unreadable images (each named on stderr) instead of stopping at the first")
    parser.add_argument("--output_dir", required=True, help="checkpoints, model/, results.json, learning_curve.png")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="start afresh in a non-empty --output_dir, removing the previous run's checkpoints and outputs")
    parser.add_argument("--per_device_train_batch_size", type=positive_int, default=64, help="images per step and process")
    parser.add_argument("--per_device_eval_batch_size", type=positive_int, default=64, help="images per evaluation batch")
    parser.add_argument("--learning_rate", type=positive_float,
                        help="AdamW learning rate (default: 1e-4, or 3e-2 with --calibrate)")
    parser.add_argument("--weight_decay", type=non_negative_float, default=2e-5, help="AdamW weight decay")
    parser.add_argument("--num_train_epochs", type=positive_int, default=30, help="epochs, unless --max_train_steps is given")
    parser.add_argument("--max_train_steps", type=positive_int, help="optimizer steps in all; overrides --num_train_epochs")
    parser.add_argument("--gradient_accumulation_steps", type=positive_int, default=1, help="batches per optimizer step")
    parser.add_argument("--lr_scheduler_type", default="cosine", choices=SCHEDULERS, metavar="NAME",
                        help="a transformers scheduler: " + ", ".join(SCHEDULERS))
    parser.add_argument("--num_warmup_steps", type=non_negative_int, default=0, help="learning-rate warm-up steps")
    parser.add_argument("--ema_decay", type=decay,
                        help="EMA of the weights; 0 disables it (default: 0.9998, or 0 with --calibrate)")
    parser.add_argument("--distill_weight", type=non_negative_float, default=0.5, help="weight of the KL term next to CE")
    parser.add_argument("--distill_only", action="store_true", help="loss: KL to the teacher alone, no labels")
    parser.add_argument("--calibrate", action="store_true",
                        help="train only the reduction's own parameters (freq: ω1, ω2, DC position embeddings), by KL "
                        "to the teacher alone (implies --distill_only); the ViT's weights stay unchanged")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler, the augmentation and new weights")
    parser.add_argument("--checkpointing_steps", type=positive_int, help="save a resumable checkpoint every N steps")
    parser.add_argument("--resume_from_checkpoint",
                        help="a checkpoint folder (step_N), or 'latest': the newest in --output_dir")
    parser.add_argument("--eval_steps", type=positive_int, help="evaluate every N steps (and always before and at the end)")
    parser.add_argument("--with_tracking", action="store_true", help="log metrics to --report_to")
    parser.add_argument("--report_to", default="tensorboard", help="accelerate tracker for --with_tracking")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"],
                        help="default: accelerate launch's --mixed_precision or accelerate config (fp32 when neither "
                        "says); run with python, bf16 where the GPU has it")
    parser.add_argument("--push_to_hub", action="store_true", help="upload output_dir/model to --hub_model_id")
    parser.add_argument("--hub_model_id", help="the Hub repository (user/name) the model is published as")
    parser.add_argument("--hub_token", help="Hub token (default: the one `hf auth login` stored)")
    parser.add_argument("--license", help="license of the model card (default: the base model's, else apache-2.0)")
    # left out, a reduction flag keeps the checkpoint's value: a FreqViT's own, else the defaults shown
    parser.add_argument("--reduction_method", choices=[m for m in REDUCTION_METHODS if m != "none"],
                        help="token reduction method of the student (default: the checkpoint's, else freq)")
    parser.add_argument("--keep_rate", type=float, nargs="+",
                        help="one keep rate, or one per reduction layer (default: the checkpoint's, else 0.7)")
    parser.add_argument("--reduction_layers", type=int, nargs="+",
                        help="0-based blocks that reduce (default: the checkpoint's, else 3 6 9)")
    parser.add_argument("--dc_window_sizes", type=int, nargs="+",
                        help="per reduction layer, w: w x w DC windows (freq; default: the checkpoint's, else 2 1 1)")
    parser.add_argument("--preset", choices=list(FREQ_PRESETS),
                        help="freq's options: the paper's method, or freqtr_hf.TRAINING_FREE_FREQ (the best model "
                        "without training: nearest merge, proportional attention, tempered DC weight); default: the "
                        "checkpoint's options, else the paper's")
    args = parser.parse_args(argv)
    if not (args.dataset_name or args.train_dir):
        parser.error("give --dataset_name or --train_dir")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.mixed_precision == "fp16" and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        parser.error("--mixed_precision fp16 needs a GPU; on the CPU use bf16 or no")
    if args.resume_from_checkpoint and args.overwrite_output_dir:
        parser.error("--resume_from_checkpoint continues a run and --overwrite_output_dir starts afresh: pick one")
    # a missing local path is named before anything mistakes it for a Hub id or fails later
    if args.synsets and not Path(args.synsets).is_file():
        parser.error(f"--synsets: no file {args.synsets}")
    for flag in ("train_dir", "validation_dir"):
        if getattr(args, flag) and not Path(getattr(args, flag)).exists():
            parser.error(f"--{flag}: no folder {getattr(args, flag)}")
    if not is_hub_id(args.model_name_or_path) and not Path(args.model_name_or_path).exists():
        parser.error(f"--model_name_or_path: no folder {args.model_name_or_path}")
    if Path(args.model_name_or_path).is_file():
        parser.error(f"--model_name_or_path: {args.model_name_or_path} is a file; give the checkpoint folder")
    for name, value in (CALIBRATION_DEFAULTS if args.calibrate else FINE_TUNING_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.distill_only = args.distill_only or args.calibrate
    return args


def check_output_dir(args) -> None:
    """Before any work: refuse a folder that holds files this script did not write (named), and a new run over an
    existing one."""
    output_dir = Path(args.output_dir)
    try:
        check_output_folder(output_dir, "--output_dir", RUN_FOLDER)
    except OutputRefused as error:
        raise SystemExit(str(error)) from None
    if args.resume_from_checkpoint or args.overwrite_output_dir:
        return
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise SystemExit(
            f"--output_dir {output_dir} is not empty; continue its run with --resume_from_checkpoint latest, or pass "
            "--overwrite_output_dir to start afresh"
        )


def missing_dependencies(args) -> list[str]:
    """The optional packages this run needs but cannot import: matplotlib for the learning curve, tensorboard for
    --with_tracking (its default tracker)."""
    needed = {"matplotlib": "learning_curve.png"}
    if args.with_tracking and args.report_to in ("tensorboard", "all"):
        needed["tensorboard"] = "--with_tracking"
    return [f"{module} (for {use})" for module, use in needed.items() if importlib.util.find_spec(module) is None]


def remove_previous_run(output_dir: Path) -> None:
    """--overwrite_output_dir: remove what an earlier run wrote, by the exact names it writes (checkpoints and their
    staging folders, model, results, logs), so that no stale checkpoint is resumed later. Other files are left
    alone; an entry of such a name that is not what the run writes (a file where a folder belongs, a symlink) is
    refused before anything is removed."""
    folders, files = [], []
    for path in output_dir.iterdir():
        staged_checkpoint = CHECKPOINT.fullmatch(path.name.removesuffix(".tmp"))
        if staged_checkpoint or path.name in ("model", TRACKER_PROJECT):
            folders.append(path)
        elif path.name in (RUN_FILE, "results.json", "learning_curve.png"):
            files.append(path)
    odd = [p.name for p in folders if p.is_symlink() or not p.is_dir()] + [
        p.name for p in files if p.is_symlink() or not p.is_file()]
    if odd:
        raise SystemExit(f"--output_dir: {output_dir} holds {', '.join(sorted(odd))}, not as this script writes them; "
                         "nothing was removed: move them away, or give another --output_dir")
    for path in folders:
        shutil.rmtree(path)
    for path in files:
        path.unlink()


def load_split(args, train: bool) -> datasets.Dataset | None:
    """The training or validation images, undecoded (`read_image` decodes them in the collate function); with
    --max_train_samples a random subset of the training images, drawn as transformers' example scripts draw it."""
    every = 1 if train else args.validation_every
    if args.dataset_name:
        data = load_images(args.dataset_name, args.train_split if train else args.validation_split, every)
    else:
        folder = args.train_dir if train else args.validation_dir
        data = load_images(folder, every=every) if folder else None
    if train and args.max_train_samples:
        data = data.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(data))))
    return data


def student_reduction(args) -> dict:
    """The reduction fields the flags give, with the checkpoint's method when none is given (a ViT's, or an
    unreduced FreqViT's: freq). Refuses a `--preset` of freq's options for another method, before any data work."""
    reduction = reduction_overrides(args)
    # read from the config file alone: the checkpoint's schedule may not fit it before the flags change it
    config_class, _ = family_classes(args.model_name_or_path, head_required=False)  # refuses a checkpoint of no family
    saved_method = config_class.get_config_dict(args.model_name_or_path)[0].get("reduction_method", "freq")
    method = reduction.setdefault("reduction_method", saved_method)
    if method == "none":
        method = reduction["reduction_method"] = "freq"
    if args.preset not in (None, "paper") and method != "freq":
        raise SystemExit(f"--preset {args.preset} sets options of freq; the student's method is {method}")
    return reduction


def build_student(args, reduction: dict, train_label_names: list[str]):
    """The reduced student and the frozen unreduced teacher. Class folders that are ImageNet classes of the
    pretrained head keep the head (and its labels), and so does --distill_only (which reads no labels: a folder of
    any images will do); otherwise a new head is made, with readable class names, and distillation is off."""
    # an encoder checkpoint (no classifier) is fine-tuned with a new head
    config_class, model_class = family_classes(args.model_name_or_path, head_required=False)
    pretrained = config_class.from_pretrained(args.model_name_or_path, reduction_method="none")  # for its labels
    label_of = label_mapping(train_label_names, pretrained.id2label, args.synsets) if train_label_names else []
    keep_head = args.distill_only or (bool(train_label_names) and all(index >= 0 for index in label_of))
    head = {}
    if train_label_names and not keep_head:
        label_of = list(range(len(train_label_names)))
        names = class_names(train_label_names, args.synsets)
        head = dict(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            ignore_mismatched_sizes=True,
        )
    student = model_class.from_pretrained(args.model_name_or_path, **reduction, **head)
    teacher = None
    if keep_head or not train_label_names:
        teacher = model_class.from_pretrained(args.model_name_or_path, reduction_method="none")
        teacher.requires_grad_(False).eval()
    return student, teacher, label_of


def trained_parameters(student, args) -> list[torch.nn.Parameter]:
    """What the optimizer updates: every weight, or with --calibrate only the reduction's own parameters (the rest
    frozen, so the backward pass stops at the first of them)."""
    if not args.calibrate:
        return list(student.parameters())
    calibrated = student.reduction_parameters()
    if not calibrated:
        raise SystemExit(
            f"--calibrate: {student.config.reduction_method} with these settings has no parameters of its own to "
            "calibrate (freq has ω1, ω2 and DC position embeddings unless attention_reweighting and dc_position_embedding "
            "are off; topk, evit, tome, kmedoids, ats and radial have none)"
        )
    student.requires_grad_(False)
    for parameter in calibrated.values():
        parameter.requires_grad_(True)
    return list(calibrated.values())


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
    """Top-1 (against known labels), images/s and the number of images on the evaluation loader; agreement with
    `reference` if given."""
    metric = evaluate.load(METRIC_SCRIPT)
    model.eval()
    seconds, images, evaluated = 0.0, 0, 0
    for batch in tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        # under the run's mixed precision, so the unreduced teacher is timed as the student is
        with accelerator.autocast():
            start = time.perf_counter()
            logits = model(batch["pixel_values"]).logits
            synchronize(accelerator.device)
            seconds += time.perf_counter() - start
            reference_logits = reference(batch["pixel_values"]).logits if reference else logits
        images += len(logits)
        reference_predictions = reference_logits.argmax(-1)
        predictions, labels, reference_predictions = accelerator.gather_for_metrics(
            (logits.argmax(-1), batch["labels"], reference_predictions)
        )
        metric.add_batch(predictions=predictions, references=labels, reference_predictions=reference_predictions)
        evaluated += len(predictions)  # every process's, without the padding of an uneven last batch
    result = metric.compute()
    result["images_per_second"] = images / seconds if seconds else 0.0  # this process's images and time
    result["images"] = evaluated
    return result


def resolve_checkpoint(args) -> Path | None:
    """The checkpoint to resume from: the given folder, or with 'latest' the newest in --output_dir (None where
    there is none yet: the run starts at step 0)."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = checkpoints(Path(args.output_dir))
        return found[-1] if found else None
    path = Path(args.resume_from_checkpoint)
    if not path.is_dir():
        raise SystemExit(f"--resume_from_checkpoint: {path} is not a checkpoint folder")
    return path


def job_fingerprint(args, student, train_data, eval_data, accelerator: Accelerator) -> dict:
    """Everything that changes what the run computes: the settings, the model's weights, the data's files."""
    fingerprint = {name: getattr(args, name) for name in JOB_SETTINGS}
    fingerprint |= {
        "dataset_name": resolved_source(args.dataset_name),
        "model": model_digest(args.model_name_or_path, getattr(student.config, "_commit_hash", None)),
        # what the flags, the preset and the checkpoint made of the student (a preset may change between versions)
        **{field: getattr(student.config, field) for field in REDUCTION_FIELDS},
        "train_files": data_fingerprint(train_data),
        "validation_files": data_fingerprint(eval_data) if eval_data is not None else None,
        "synsets": file_digest(args.synsets) if args.synsets else None,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
    return json.loads(json.dumps(fingerprint))  # as it reads back from a file (tuples become lists)


def mixed_precision(args: argparse.Namespace) -> str | None:
    """`--mixed_precision`; else what `accelerate launch` chose (its flag or `accelerate config`), which `Accelerator`
    reads from the environment when given None; else bf16 where the GPU the run uses computes it."""
    if args.mixed_precision:
        return args.mixed_precision
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    on_gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision(args),
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    check_output_dir(args)
    # the main process holds the output folder for the whole run: a second run there would mix their checkpoints
    try:
        with exclusive_use(args.output_dir, "--output_dir") if accelerator.is_main_process else nullcontext():
            return train(args, accelerator)
    except (RunInUseError, OutputRefused, ImageReadError) as error:
        raise SystemExit(str(error)) from None


def train(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    """The run of `main`, in its output folder."""
    output_dir = Path(args.output_dir)
    missing = missing_dependencies(args)
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install with {INSTALL_TRAIN}")
    checkpoint = resolve_checkpoint(args)
    run_state = read_run_state(checkpoint) if checkpoint is not None else None
    run_file = output_dir / RUN_FILE
    if args.resume_from_checkpoint and checkpoint is None and output_dir.is_dir() and any(output_dir.iterdir()) \
            and not run_file.exists():
        raise SystemExit(f"--resume_from_checkpoint latest: {output_dir} holds no run of this script to resume")

    set_seed(args.seed)

    with loading(args.model_name_or_path, args.dataset_name or args.train_dir):
        reduction = student_reduction(args)
        train_data = load_split(args, train=True)
        eval_data = load_split(args, train=False)
        train_label_names = label_names(train_data)
        if not train_label_names and not args.distill_only:
            raise SystemExit("the training data has no labels: pass --distill_only to train by distillation alone")
        student, teacher, label_of = build_student(args, reduction, train_label_names)
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    trained = trained_parameters(student, args)
    input_size = model_input_size(processor)

    # the job's identity, checked against the checkpoint's and the output folder's before any training
    fingerprint = job_fingerprint(args, student, train_data, eval_data, accelerator)
    check_same_job(fingerprint, run_state and run_state["fingerprint"], checkpoint)
    if args.resume_from_checkpoint and run_file.exists():
        check_same_job(fingerprint, read_fingerprint(run_file), output_dir)
    if accelerator.is_main_process:
        if args.overwrite_output_dir and output_dir.is_dir():
            remove_previous_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_marker(output_dir, RUN_FOLDER)
        remove_stale_temporaries(output_dir / "model")  # what a killed run left while writing the model folder
        write_atomically(run_file, json.dumps(fingerprint, indent=2))
    accelerator.wait_for_everyone()

    # its own generator: a new iterator (e.g. the one that skips batches on resume) then draws nothing from the
    # global RNG, which the augmentation uses and the checkpoints save
    train_loader = torch.utils.data.DataLoader(
        train_data, shuffle=True, batch_size=args.per_device_train_batch_size,
        collate_fn=make_collate(processor, label_of, train=True, skip_bad_images=args.skip_bad_images), generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = None
    if eval_data is not None:
        eval_label_names = label_names(eval_data)
        if teacher is not None:  # the pretrained head: validation classes map to it as the training classes do
            eval_label_of = label_mapping(eval_label_names, student.config.id2label, args.synsets)
        else:  # a new head, one class per training folder
            eval_label_of = [label_of[train_label_names.index(n)] if n in train_label_names else -1
                             for n in eval_label_names]
        if accelerator.is_main_process and all(index < 0 for index in eval_label_of):
            print("validation top-1 is not reported: no validation class is one of the model's classes (with the "
                  "pretrained head, wnid folders and --synsets map them); only agreement with the unreduced model is reported",
                  file=sys.stderr)
        eval_loader = torch.utils.data.DataLoader(
            eval_data, batch_size=args.per_device_eval_batch_size,
            collate_fn=make_collate(processor, eval_label_of, train=False, skip_bad_images=args.skip_bad_images),
        )

    # an epoch counts the batches of one process: prepared, the loader is split between the processes
    train_loader = accelerator.prepare(train_loader)
    updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
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
        accelerator.init_trackers(TRACKER_PROJECT, config={k: str(v) for k, v in run_config.items()})

    if run_state is not None:
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # a missing or broken file: say which checkpoint, keep the cause
            raise SystemExit(f"cannot resume from {checkpoint}: {type(error).__name__}: {error}") from error
        step, history, before = run_state["step"], run_state["history"], run_state.get("before")
        accelerator.print(f"resuming from {checkpoint} at step {step} of {max_steps}")
    else:
        step, history, before = 0, {"step": [], "loss": [], "eval_step": [], "eval_top1": []}, None
        if eval_loader is not None:
            before = evaluate_top1(student, eval_loader, accelerator, reference=teacher)
            history["eval_step"].append(0)
            history["eval_top1"].append(before.get("top1"))

    epoch, resume_batches = divmod(step, updates_per_epoch)
    resume_batches *= args.gradient_accumulation_steps
    progress = tqdm(total=max_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    while step < max_steps:
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
                    with torch.no_grad(), accelerator.autocast():
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
                state = {"step": step, "history": history, "before": before, "fingerprint": fingerprint}
                save_checkpoint(accelerator, output_dir, state)
            if step >= max_steps:
                break
        epoch += 1
    progress.close()

    final_model = ema.module if ema is not None else accelerator.unwrap_model(student)
    results = {"steps": step, "trained_parameters": sum(p.numel() for p in trained), "config": run_config}
    if eval_loader is not None:
        after = evaluate_top1(final_model, eval_loader, accelerator, reference=teacher)
        history["eval_step"].append(step)
        history["eval_top1"].append(after.get("top1"))
        results["before"], results["after"] = before, after
        if teacher is not None:
            results["unreduced"] = evaluate_top1(teacher, eval_loader, accelerator)
        if args.with_tracking:
            accelerator.log({"eval_top1": after.get("top1")}, step=step)
    config = accelerator.unwrap_model(student).config
    results["gmacs"] = gmacs(config)
    results["history"] = history
    if args.with_tracking:
        accelerator.end_training()

    if accelerator.is_main_process:
        model_dir = output_dir / "model"
        with staged_folder(model_dir) as staging:
            write_model_files(staging, final_model, processor)
            card = model_card(
                config, base_model=args.model_name_or_path, results=results,
                eval_data=args.dataset_name or args.validation_dir if eval_loader is not None else None,
                eval_every=args.validation_every, eval_split=args.validation_split if args.dataset_name else None,
                train_data=args.dataset_name or args.train_dir, training=training_summary(args, step, accelerator),
                name=public_name(str(output_dir)), repo_id=args.hub_model_id, license=args.license,
            )
            card.save(staging / "README.md")
        write_atomically(output_dir / "results.json", json.dumps(results, indent=2))
        plot_learning_curve(history, output_dir / "learning_curve.png")
        if args.push_to_hub:
            try:
                publish_to_hub(model_dir, args.hub_model_id, token=args.hub_token)
            except PublishError as error:
                raise SystemExit(f"{error} (results.json and the checkpoints are in {output_dir})") from error
        print(run_summary(results, model_dir))
    accelerator.wait_for_everyone()
    return results


def run_summary(results: dict, model_dir: Path) -> str:
    """The lines a finished run prints: top-1 and agreement before and after, and where the model is."""
    steps = results["steps"]
    lines = [f"{steps} step{'s' * (steps != 1)}; model written to {model_dir}"]
    for row in ("unreduced", "before", "after"):
        if row in results:
            measured = results[row]
            top1 = f"top-1 {100 * measured['top1']:.1f}%" if measured.get("top1") is not None else "top-1 -"
            agreement = measured.get("agreement")
            lines.append(f"  {row:<9} {top1}" + (f", agreement {100 * agreement:.1f}%" if agreement is not None else ""))
    return "\n".join(lines)


def training_summary(args, steps: int, accelerator: Accelerator) -> str:
    """How the model was fine-tuned, for the model card (no local paths: data folders by their last two names)."""
    data = public_name(args.dataset_name or args.train_dir, parts=2)
    loss = "KL to the unreduced teacher alone" if args.distill_only else (
        f"cross-entropy + {args.distill_weight}·KL to the unreduced teacher")
    calibration = ("Calibration: only the reduction's own parameters were trained; the ViT's weights are the base "
                   "model's. " if args.calibrate else "")
    return (
        f"{calibration}{steps} steps on `{data}`, {args.per_device_train_batch_size} images per step and process × "
        f"{args.gradient_accumulation_steps} accumulation × {accelerator.num_processes} process(es); AdamW, learning "
        f"rate {args.learning_rate}, weight decay {args.weight_decay}, {args.lr_scheduler_type} schedule with "
        f"{args.num_warmup_steps} warm-up steps; loss: {loss}; augmentation: random resized crop and flip. "
        + (f"The weights are the EMA (decay {args.ema_decay}) of the trained ones." if args.ema_decay > 0 else "")
    ).strip()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted: run the same command with --resume_from_checkpoint latest to continue from "
                         "the last checkpoint") from None
