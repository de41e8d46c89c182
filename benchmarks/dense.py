"""Dense prediction with a reduced backbone: semantic segmentation of CamVid street scenes by a linear head on
`FreqViTBackbone`'s full-grid feature maps, per method, keep rate and token restoration; the backbone's speed.

    python benchmarks/dense.py [--checkpoint ../shared/assets/deit-tiny-patch16-224] [--data ../shared/assets/camvid]
        [--size 352 480] [--methods freq preset topk evit tome kmedoids] [--keep-rates 0.9 0.7 0.5]
        [--restorations carrier residual nearest] [--state-file dense-state.json] [--output dense.json]
        [--figure dense.png]
    python benchmarks/dense.py --methods preset --keep-rates 0.7 --restorations nearest --finetune-epochs 2
    python benchmarks/dense.py --speed [--speed-sizes 352x480 512x512] [--batch-size 8] [--rounds 5]

Training-free: a linear head (a 1×1 convolution, 11 classes) is trained on the unreduced backbone's frozen last-stage
features of CamVid's 367 train images (at `--size`, an aspect-keeping 352×480 by default: 22×30 = 660 patches),
then read, unchanged, from each reduced backbone on the 101 val images. The table gives val mIoU (void ignored) and
its share of the unreduced model's. `preset` is `freq` with `TRAINING_FREE_FREQ`; `tome` merges per stage; the
reduction layers are the default (3, 6, 9). GMACs are the backbone's at `--size`.

`--finetune-epochs N` also fine-tunes each backbone with a new linear head (AdamW, the backbone at 1e-4, the head at
1e-3, batch `--batch-size`) on train, the unreduced one the same way, and gives each one's val mIoU and its share of
the unreduced model's.

With `--state-file`, every measurement is saved as it is made: an interrupted run (Ctrl-C) resumes when the same
command runs again, and a state of another job (other checkpoint, data or settings) is refused by name.

`--speed` times the backbone of each method (default restoration) against the unreduced one on the same weights,
side by side in turns, per image size, with the MAC ratio.
"""

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix
from tqdm.auto import tqdm
from transformers import AutoImageProcessor

from freqtr_hf import TRAINING_FREE_FREQ, FreqViTBackbone, FreqViTModel, count_macs
from freqtr_hf.cli import HelpFormatter, non_negative_int, positive_int
from freqtr_hf.devices import describe, resolve_device, time_in_turns
from freqtr_hf.images import read_image
from freqtr_hf.models.freqvit.methods import TOKEN_RESTORATIONS
from freqtr_hf.fingerprint import files_digest, mismatch, model_digest
from freqtr_hf.runs import BENCHMARK_KIND, FIGURE, check_output_file, exclusive_use, write_figure, write_json

ASSETS = Path(__file__).resolve().parent.parent.parent / "shared" / "assets"
STATE_KIND = "dense benchmark state"  # what --state-file holds (see freqtr_hf.runs)
CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist")
VOID = len(CLASSES)  # label 11: unlabelled, ignored
# name -> backbone fields
METHODS = {
    "freq": dict(reduction_method="freq"),
    "preset": dict(reduction_method="freq", **TRAINING_FREE_FREQ),
    # the attention-free score (App. J): every block runs a fused attention kernel
    "preset-logits": dict(reduction_method="freq", **TRAINING_FREE_FREQ, score_source="logits"),
    "topk": dict(reduction_method="topk"),
    "evit": dict(reduction_method="evit"),
    "tome": dict(reduction_method="tome"),
    "kmedoids": dict(reduction_method="kmedoids"),
}


def read_split(folder: Path, size: tuple[int, int]) -> tuple[list[Image.Image], torch.Tensor]:
    """The images of a CamVid split and their label maps (N, H, W) resized (nearest) to `size` (height, width)."""
    images, labels = [], []
    for image_file in sorted((folder / "images").glob("*.jpg")):
        images.append(read_image(image_file))
        label = Image.open(folder / "labels" / f"{image_file.stem}.png").resize(size[::-1], Image.NEAREST)
        labels.append(torch.from_numpy(np.asarray(label, dtype=np.int64)))
    return images, torch.stack(labels)


@torch.inference_mode()
def last_stage_features(backbone: FreqViTBackbone, pixels: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    """(N, C, H/p, W/p): the backbone's last feature map of every image."""
    maps = []
    for start in tqdm(range(0, len(pixels), batch_size), desc=what, leave=False, file=sys.stderr):
        maps.append(backbone(pixels[start : start + batch_size]).feature_maps[-1].float())
    return torch.cat(maps)


def upsampled(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def quarter_targets(labels: torch.Tensor) -> torch.Tensor:
    """Label maps (N, H, W) at a quarter of their resolution (nearest), where the training loss is taken."""
    quarter = (labels.shape[1] // 4, labels.shape[2] // 4)
    return torch.nn.functional.interpolate(labels[:, None].float(), size=quarter, mode="nearest")[:, 0].long()


def segmentation_loss(head: torch.nn.Conv2d, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's logits, upsampled bilinearly to the targets' resolution; void ignored."""
    return torch.nn.functional.cross_entropy(upsampled(head(features), targets.shape[1:]), targets, ignore_index=VOID)


def train_linear_head(features: torch.Tensor, labels: torch.Tensor, epochs: int = 60, seed: int = 0) -> torch.nn.Conv2d:
    """A 1×1 convolution from frozen features (N, C, h, w) to class logits, trained with `segmentation_loss`."""
    torch.manual_seed(seed)
    head = torch.nn.Conv2d(features.shape[1], len(CLASSES), 1)
    targets = quarter_targets(labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in tqdm(range(epochs), desc="linear head", leave=False, file=sys.stderr):
        for batch in torch.randperm(len(features)).split(32):
            loss = segmentation_loss(head, features[batch], targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def fine_tune(
    model: FreqViTBackbone, pixels: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, what: str
) -> torch.nn.Conv2d:
    """The backbone and a new linear head trained together (AdamW, the backbone at a tenth of the head's rate)."""
    torch.manual_seed(0)
    head = torch.nn.Conv2d(model.config.hidden_size, len(CLASSES), 1)
    targets = quarter_targets(labels)
    optimizer = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": 1e-4}, {"params": head.parameters(), "lr": 1e-3}], weight_decay=1e-4
    )
    model.train()
    batches = [batch for _ in range(epochs) for batch in torch.randperm(len(pixels)).split(batch_size)]
    for batch in tqdm(batches, desc=what, leave=False, file=sys.stderr):
        loss = segmentation_loss(head, model(pixels[batch]).feature_maps[-1], targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return head.eval()


@torch.no_grad()
def mean_iou(head: torch.nn.Conv2d, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes of intersection over union at the labels' resolution, void pixels ignored (%)."""
    counts = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    for start in range(0, len(features), 16):
        predicted = upsampled(head(features[start : start + 16]), labels.shape[1:]).argmax(1)
        truth = labels[start : start + 16]
        valid = truth != VOID
        counts += confusion_matrix(truth[valid].numpy(), predicted[valid].numpy(), labels=range(len(CLASSES)))
    union = counts.sum(0) + counts.sum(1) - np.diag(counts)
    present = union > 0
    return float(100 * (np.diag(counts)[present] / union[present]).mean())


class Progress:
    """The measurements done so far, by key, saved after each one to `--state-file` (when given) with the job's
    fingerprint: a rerun of the same job skips them, a state of another job is refused naming what differs."""

    def __init__(self, path: str | None, fingerprint: dict):
        self.path, self.fingerprint, self.done = path, fingerprint, {}
        if path and Path(path).is_file():
            saved = json.loads(Path(path).read_text())
            different = mismatch(saved.get("fingerprint", {}), fingerprint)
            if different:
                raise ValueError(f"--state-file: {path} holds another job ({different}); give another file")
            self.done = saved["done"]

    def measure(self, key: str, compute: Callable[[], float]) -> float:
        if key not in self.done:
            self.done[key] = compute()
            if self.path:
                write_json(self.path, {"fingerprint": self.fingerprint, "done": self.done}, STATE_KIND)
        return self.done[key]


def job_fingerprint(args: argparse.Namespace) -> dict:
    """What makes two runs the same job: the checkpoint's files, the data's files, and every setting that changes a
    figure."""
    data = sorted(path for path in args.data.rglob("*") if path.is_file())
    return {
        "checkpoint": model_digest(args.checkpoint), "data": files_digest(data, args.data), "size": list(args.size),
        "batch_size": args.batch_size, "finetune_epochs": args.finetune_epochs,
    }


def backbone(checkpoint: str, fields: dict, restoration: str = "nearest") -> FreqViTBackbone:
    return FreqViTBackbone.from_pretrained(checkpoint, token_restoration=restoration, **fields).eval()


def training_free(args: argparse.Namespace, processor, progress: Progress) -> dict:
    size = tuple(args.size)
    process = dict(size={"height": size[0], "width": size[1]}, do_center_crop=False, return_tensors="pt")
    train_images, train_labels = read_split(args.data / "train", size)
    val_images, val_labels = read_split(args.data / "val", size)
    train_pixels = processor(train_images, **process).pixel_values
    val_pixels = processor(val_images, **process).pixel_values
    unreduced = backbone(args.checkpoint, dict(reduction_method="none"))
    head = train_linear_head(last_stage_features(unreduced, train_pixels, args.batch_size, "train features"),
                             train_labels)
    reference = mean_iou(head, last_stage_features(unreduced, val_pixels, args.batch_size, "val"), val_labels)
    base_gmacs = count_macs(unreduced.config, size) / 1e9
    print(f"unreduced: val mIoU {reference:.1f} at {size[0]}x{size[1]} ({base_gmacs:.2f} GMACs)\n")
    rows = [dict(method="none", keep_rate=1.0, restoration=None, miou=reference, gmacs=base_gmacs)]
    print(f"{'method':10s} {'keep':>5s} {'GMACs':>6s} " + " ".join(f"{name:>18s}" for name in args.restorations))
    for method in args.methods:
        for keep_rate in args.keep_rates:
            cells = []
            for restoration in args.restorations:
                model = backbone(args.checkpoint, {**METHODS[method], "keep_rate": keep_rate}, restoration)
                what = f"{method} {keep_rate} {restoration}"
                miou = progress.measure(what, lambda: mean_iou(
                    head, last_stage_features(model, val_pixels, args.batch_size, what), val_labels
                ))
                gmacs = count_macs(model.config, size) / 1e9
                rows.append(dict(method=method, keep_rate=keep_rate, restoration=restoration, miou=miou, gmacs=gmacs))
                cells.append(f"{miou:5.1f} ({100 * miou / reference:5.1f}%)")
            print(f"{method:10s} {keep_rate:5.2f} {gmacs:6.2f} " + " ".join(f"{cell:>18s}" for cell in cells),
                  flush=True)
    if args.figure:
        draw_restoration(args, val_images[0], val_pixels[:1], unreduced)
    result = dict(size=list(size), reference_miou=reference, rows=rows)
    if args.finetune_epochs:
        tuned = {}
        for name, fields in {"none": dict(reduction_method="none"), **{
            f"{method} {keep_rate}": {**METHODS[method], "keep_rate": keep_rate}
            for method in args.methods for keep_rate in args.keep_rates
        }}.items():
            model = backbone(args.checkpoint, fields)

            def tuned_miou() -> float:
                head = fine_tune(model, train_pixels, train_labels, args.finetune_epochs, args.batch_size, name)
                return mean_iou(head, last_stage_features(model, val_pixels, args.batch_size, "val"), val_labels)

            tuned[name] = progress.measure(f"fine-tuned {name}", tuned_miou)
            share = f" ({100 * tuned[name] / tuned['none']:.1f}% of the unreduced model fine-tuned the same way)"
            print(f"fine-tuned {args.finetune_epochs} epoch(s), {name}: val mIoU {tuned[name]:.1f}"
                  + (share if name != "none" else ""), flush=True)
        result["fine_tuned"] = dict(epochs=args.finetune_epochs, miou=tuned)
    return result


def principal_colours(maps: list[torch.Tensor]) -> list[np.ndarray]:
    """Feature maps (C, h, w) -> RGB images of their first three principal components, fitted on the first map."""
    from sklearn.decomposition import PCA

    flat = [m.flatten(1).T.numpy() for m in maps]
    pca = PCA(3).fit(flat[0])
    projected = [pca.transform(f) for f in flat]
    low, high = np.percentile(projected[0], 1, axis=0), np.percentile(projected[0], 99, axis=0)
    return [np.clip((p - low) / (high - low), 0, 1).reshape(*maps[0].shape[1:], 3) for p in projected]


@torch.inference_mode()
def draw_restoration(args: argparse.Namespace, image: Image.Image, pixels: torch.Tensor, unreduced) -> None:
    """The unreduced and the restored last-stage feature maps side by side (first three principal components as
    RGB), per restoration, `freq` at keep 0.7, with the patches still tokens of their own outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [unreduced(pixels).feature_maps[-1][0]]
    kept = None
    for restoration in args.restorations:
        model = backbone(args.checkpoint, {**METHODS["freq"], "keep_rate": 0.7}, restoration)
        maps.append(model(pixels).feature_maps[-1][0])
        if kept is None:
            traced = FreqViTModel.forward(model, pixels, interpolate_pos_encoding=True, output_token_provenance=True)
            kept = traced.token_provenance[-1].kept[0].view(maps[0].shape[1:])
    colours = principal_colours(maps)
    figure, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 2.6))
    axes[0].imshow(image.resize(tuple(args.size[::-1])))
    axes[0].set_title("image")
    titles = ["unreduced", *(f"freq 0.7, {name}" for name in args.restorations)]
    for axis, colour, title in zip(axes[1:], colours, titles):
        axis.imshow(colour, interpolation="nearest")
        axis.set_title(title)
    axes[1].contour(kept.numpy(), levels=[0.5], colors="white", linewidths=0.6)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    write_figure(figure, args.figure)
    print(f"figure: {args.figure} (white outline: patches still tokens of their own after the last stage)")


def speed(args: argparse.Namespace, device: torch.device) -> dict:
    rows = []
    for text in args.speed_sizes:
        size = tuple(int(side) for side in text.split("x"))
        pixels = torch.randn(args.batch_size, 3, *size, device=device)
        models = {"none": backbone(args.checkpoint, dict(reduction_method="none")).to(device)}
        models |= {name: backbone(args.checkpoint, METHODS[name]).to(device) for name in args.methods}
        calls = [lambda model=model: model(pixels) for model in models.values()]
        with torch.inference_mode():
            for call in calls:
                call()
            times = time_in_turns(calls, args.rounds, device)
        base_macs = count_macs(models["none"].config, size)
        print(f"\n{size[0]}x{size[1]}, batch {args.batch_size}: unreduced {statistics.median(times[0]) * 1e3:.0f} ms")
        for (name, model), seconds in list(zip(models.items(), times))[1:]:
            speedup = statistics.median(base / own for base, own in zip(times[0], seconds))
            ratio = base_macs / count_macs(model.config, size)
            print(f"  {name:13s} {speedup:5.2f}x against a MAC ratio of {ratio:.2f}x ({100 * speedup / ratio:.0f}%)")
            rows.append(dict(size=list(size), method=name, speedup=speedup, mac_ratio=ratio))
    return dict(batch_size=args.batch_size, rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", default=str(ASSETS / "deit-tiny-patch16-224"), help="a ViT/DeiT checkpoint")
    parser.add_argument("--data", type=Path, default=ASSETS / "camvid",
                        help="CamVid's layout: train/ and val/, each with images/*.jpg and labels/*.png")
    parser.add_argument("--size", type=positive_int, nargs=2, default=[352, 480], metavar=("HEIGHT", "WIDTH"),
                        help="the images' size (whole patches)")
    parser.add_argument("--methods", nargs="+", default=["freq", "preset", "topk", "evit", "tome", "kmedoids"],
                        choices=METHODS, help="preset: freq with TRAINING_FREE_FREQ; preset-logits: with logit scores")
    parser.add_argument("--keep-rates", type=float, nargs="+", default=[0.9, 0.7, 0.5], help="per reduction layer")
    parser.add_argument("--restorations", nargs="+", default=list(TOKEN_RESTORATIONS), choices=TOKEN_RESTORATIONS,
                        help="how a patch that left the sequence is put back (docs/dense.md)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per forward")
    parser.add_argument("--finetune-epochs", type=non_negative_int, default=0, metavar="EPOCHS",
                        help="also fine-tune each backbone (--methods x --keep-rates, and the unreduced one) with a "
                        "new linear head for this many epochs on train, and read them on val")
    parser.add_argument("--speed", action="store_true", help="time the backbones instead of measuring mIoU")
    parser.add_argument("--speed-sizes", nargs="+", default=["352x480", "512x512"], help="HEIGHTxWIDTH, for --speed")
    parser.add_argument("--rounds", type=positive_int, default=5, help="timed forwards per model, for --speed")
    parser.add_argument("--state-file", help="progress, saved after every measurement: run the same command again to "
                        "resume an interrupted run")
    parser.add_argument("--output", help="a JSON file for the figures")
    parser.add_argument("--figure", help="a PNG of the unreduced and restored feature maps")
    args = parser.parse_args()
    if args.output:
        check_output_file(args.output, "--output", BENCHMARK_KIND)
    if args.state_file:
        check_output_file(args.state_file, "--state-file", STATE_KIND)
    if args.figure:
        check_output_file(args.figure, "--figure", FIGURE)
    if not args.speed:
        for split in ("train", "val"):
            if not (args.data / split / "images").is_dir():
                parser.error(f"--data: {args.data} has no {split}/images folder (CamVid's layout)")
    device = resolve_device("auto")
    print(f"torch {torch.__version__}, {describe(device)}")
    if args.speed:
        result = speed(args, device)
    else:
        with ExitStack() as held:
            try:  # the state file in use by another run, or holding another job: refused before any work
                if args.state_file:
                    held.enter_context(exclusive_use(args.state_file, "--state-file"))
                progress = Progress(args.state_file, job_fingerprint(args))
            except ValueError as error:
                parser.error(str(error))
            try:
                result = training_free(args, AutoImageProcessor.from_pretrained(args.checkpoint), progress)
            except KeyboardInterrupt:
                resume = "run the same command again to resume" if args.state_file else "give --state-file to resume"
                sys.exit(f"\ninterrupted: {resume}")
    if args.output:
        write_json(args.output, {"benchmark": "dense", **result}, BENCHMARK_KIND)


if __name__ == "__main__":
    main()
