"""Fine-tune a FreqViT with transformers' `Trainer` (cross-entropy; DynamicViT's extra loss is already in `loss`).

    python training/trainer_example.py --model_name_or_path facebook/deit-tiny-patch16-224 \
        --train_dir ../shared/assets/imagenette/train --synsets ../shared/assets/imagenet_synsets.txt \
        --output_dir runs/trainer --max_steps 100

A new classification head is trained for the class folders, labelled with readable names (a WordNet-id folder gets
its name from --synsets). Trainer saves a checkpoint every --save_steps; after an interruption, the same command
with `--resume_from_checkpoint latest` continues from the newest. The output folder follows the project's output
policy (docs/security.md). For self-distillation and EMA of the paper's recipe, use `finetune.py`.
"""

import argparse
import sys
from pathlib import Path

from transformers import AutoImageProcessor, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from freqtr_hf import FreqViTForImageClassification
from freqtr_hf.cli import positive_int
from freqtr_hf.data import class_names, label_names, load_images
from freqtr_hf.finetuning import loading, make_collate, model_input_size, random_resized_crop_and_flip
from freqtr_hf.images import ImageReadError
from freqtr_hf.models.freqvit.methods import REDUCTION_METHODS
from freqtr_hf.runs import OutputRefused, RunInUseError, check_output_folder, exclusive_use, write_marker

RUN_FOLDER = "trainer run"  # the kind of folder --output_dir is (see freqtr_hf.runs)


def main(argv: list[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model_name_or_path", default="facebook/deit-tiny-patch16-224",
                        help="Hub id or folder of a ViT/DeiT/FreqViT checkpoint")
    parser.add_argument("--train_dir", required=True, help="a folder of class sub-folders")
    parser.add_argument("--synsets", help="class list naming WordNet-id folders (imagenet_synsets.txt)")
    parser.add_argument("--output_dir", required=True, help="where Trainer writes its checkpoints and the model")
    parser.add_argument("--max_steps", type=positive_int, default=100, help="optimizer steps")
    parser.add_argument("--save_steps", type=positive_int, default=50, help="steps between checkpoints")
    parser.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest': the newest in --output_dir")
    parser.add_argument("--per_device_train_batch_size", type=positive_int, default=32, help="images per step and device")
    parser.add_argument("--reduction_method", default="freq", choices=[m for m in REDUCTION_METHODS if m != "none"],
                        help="token reduction method")
    parser.add_argument("--keep_rate", type=float, default=0.7, help="keep rate at every reduction layer")
    parser.add_argument("--skip_bad_images", action="store_true",
                        help="skip unreadable images (each named on stderr) instead of stopping at the first")
    args = parser.parse_args(argv)
    try:
        check_output_folder(args.output_dir, "--output_dir", RUN_FOLDER)
        with exclusive_use(args.output_dir, "--output_dir"):
            return train(args)
    except (OutputRefused, RunInUseError, ImageReadError) as error:
        raise SystemExit(str(error)) from None


def train(args: argparse.Namespace) -> Trainer:
    resume = args.resume_from_checkpoint
    if resume == "latest":
        resume = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if resume is None:
            raise SystemExit(f"--resume_from_checkpoint latest: {args.output_dir} holds no checkpoint to resume")
    with loading(args.model_name_or_path, args.train_dir):
        dataset = load_images(args.train_dir)
        names = class_names(label_names(dataset), args.synsets)
        model = FreqViTForImageClassification.from_pretrained(
            args.model_name_or_path,
            reduction_method=args.reduction_method,
            keep_rate=args.keep_rate,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            ignore_mismatched_sizes=True,  # a new head for these classes
        )
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write_marker(Path(args.output_dir), RUN_FOLDER)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        learning_rate=1e-4,
        weight_decay=2e-5,
        lr_scheduler_type="cosine",
        remove_unused_columns=False,  # the collator reads the raw images
        save_strategy="steps",
        save_steps=args.save_steps,
        seed=0,
        report_to=[],
        logging_steps=1,
    )
    collate = make_collate(processor, list(range(len(names))), train=True, skip_bad_images=args.skip_bad_images)
    size = model_input_size(processor)

    def augmenting_collate(rows):
        batch = collate(rows)
        return batch | {"pixel_values": random_resized_crop_and_flip(batch["pixel_values"], size)}

    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=augmenting_collate)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return trainer


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: run the same command with --resume_from_checkpoint latest to continue from the last "
                 "checkpoint")
