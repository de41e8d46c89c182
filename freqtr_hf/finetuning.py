"""What the fine-tuning scripts share (`training/finetune.py`, `training/trainer_example.py`): one-line loading errors,
the training augmentation, the batch preprocessing over the data layer, and the distillation loss."""

import math
import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from .data import read_batch
from .images import ImageReadError


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
