"""What the fine-tuning scripts share (`training/finetune.py`, `training/trainer_example.py`): one-line loading errors,
the training augmentation, the batch preprocessing over the data layer, the distillation loss, the checkpoints of a
run folder (`step_N`, written whole or not at all) with the job's fingerprint, and the learning curve."""

import json
import math
import re
import shutil
import sys
from pathlib import Path
from contextlib import contextmanager

import torch
from accelerate import Accelerator
import torch.nn.functional as F
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from .data import read_batch
from .fingerprint import mismatch
from .images import ImageReadError
from .runs import replace_folder, write_atomically, write_figure


CHECKPOINT = re.compile(r"step_(\d+)")
RUN_STATE = "run_state.json"  # in a checkpoint: step, history, "before" evaluation, the job's fingerprint


@contextmanager
def loading(model: str, data: str):
    """One line instead of a traceback when a model or data set cannot be loaded (the Hub unreachable, a folder
    that does not exist, a checkpoint or setting that is refused)."""
    try:
        yield
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(
            f"cannot load {model!r} or {data!r} ({first_line}); without the Hugging Face Hub, pass local folders "
            "with --model_name_or_path and --train_dir"
        ) from error
    except ValueError as error:  # the config's checks and the image reader name the field or file
        raise SystemExit(str(error)) from error


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


def make_collate(processor, label_of: list[int], train: bool, skip_bad_images: bool = False):
    """Preprocess a batch of rows with `freqtr_hf.data.read_batch` (the bad-image policy of every command: an
    unreadable image stops the run naming it and `--skip_bad_images`, or is skipped with a line saying so), then the
    processor's resize (and, for evaluation, centre crop) and normalisation. Training batches keep the resized
    image uncropped, for `random_resized_crop_and_flip`."""
    resize_only = {}
    if train and getattr(processor, "do_center_crop", False):
        edge = processor.size.get("shortest_edge", processor.crop_size["height"])
        resize_only = {"size": {"height": edge, "width": edge}, "do_center_crop": False}

    def collate(rows):
        pixels, labels, skipped, _ = read_batch(rows, processor, label_of, skip_bad_images, "--skip_bad_images",
                                                **resize_only)
        for message in skipped:
            print(f"skipped {message}", file=sys.stderr)
        if pixels is None:
            raise ImageReadError(f"no image of a batch of {len(rows)} could be read (the last: {skipped[-1]})")
        return {"pixel_values": pixels, "labels": torch.tensor(labels)}

    return collate


def model_input_size(processor) -> tuple[int, int]:
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    return size["height"], size["width"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature 1, per image."""
    return F.kl_div(
        student_logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1), log_target=True,
        reduction="batchmean",
    )


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints in a run folder, oldest first: the `step_<int>` folders (a save writes
    `step_N.tmp`, then renames it; other folders are not checkpoints)."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.fullmatch(p.name).group(1)))


def save_checkpoint(accelerator: Accelerator, output_dir: Path, run_state: dict) -> None:
    """Save the full training state and `run_state` (step, history, the "before" evaluation, the job's
    fingerprint) into `step_N.tmp`, then rename it: a save cut short never leaves a `step_N` folder."""
    final = output_dir / f"step_{run_state['step']}"
    staging = final.with_name(f"{final.name}.tmp")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)  # left by an interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_atomically(staging / RUN_STATE, json.dumps(run_state, indent=2))
        replace_folder(staging, final)
    accelerator.wait_for_everyone()


def read_run_state(checkpoint: Path) -> dict:
    """A checkpoint's run state, or a clear error naming the checkpoint."""
    try:
        state = json.loads((checkpoint / RUN_STATE).read_text())
        if not isinstance(state, dict) or not {"step", "history", "fingerprint"} <= state.keys():
            raise ValueError("it lacks the step, the history or the fingerprint")
    except (OSError, ValueError) as error:
        raise SystemExit(
            f"cannot resume from {checkpoint}: its {RUN_STATE} is missing or damaged ({type(error).__name__}: "
            f"{error}); it is not a complete checkpoint of this script"
        ) from error
    return state


def read_fingerprint(run_file: Path) -> dict:
    """The fingerprint a run folder was started with, or a clear error naming the file."""
    try:
        return json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(
            f"{run_file} is damaged ({type(error).__name__}: {error}); pass --overwrite_output_dir to start afresh"
        ) from error


def check_same_job(fingerprint: dict, saved: dict | None, source: Path) -> None:
    if saved is not None and (difference := mismatch(current_layout(saved), fingerprint)):
        raise SystemExit(f"cannot resume from {source}: it is another job: {difference}")


def current_layout(saved: dict) -> dict:
    """A fingerprint of freqtr-hf 0.2.0's first layout (the reduction flags as given, the preset's name, and the
    student's reduction under "reduction") as today's: the student's reduction fields by name, which is what
    identifies the job. A run started then resumes now."""
    if not isinstance(saved.get("reduction"), dict):
        return saved
    flags = ("reduction_method", "keep_rate", "reduction_layers", "dc_window_sizes", "preset", "reduction")
    return {**{k: v for k, v in saved.items() if k not in flags}, **saved["reduction"]}


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
    write_figure(figure, path, dpi=120)
    plt.close(figure)
