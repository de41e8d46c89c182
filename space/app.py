"""FreqViT token reduction, seen on your image: which patches are kept, which go into each DC token, which are gone.

    python space/app.py                 # http://127.0.0.1:7860
    FREQTR_MODEL=../shared/assets/deit-tiny-patch16-224 python space/app.py

The model (a Hub id or a local folder) loads once; every setting reuses its weights.
"""

import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import gradio as gr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from transformers import AutoImageProcessor  # noqa: E402

from freqtr_hf import FreqViTConfig, FreqViTForImageClassification, count_macs  # noqa: E402
from freqtr_hf.analysis import layer_high_frequency  # noqa: E402
from freqtr_hf.configuration_freqvit import TRAINING_FREE_METHODS  # noqa: E402
from freqtr_hf.visualization import stage_overlay, stage_summary  # noqa: E402

DEFAULT_MODEL = os.environ.get("FREQTR_MODEL", "facebook/deit-tiny-patch16-224")
MAX_MEGAPIXELS = 40
Image.MAX_IMAGE_PIXELS = MAX_MEGAPIXELS * 1_000_000  # larger files raise DecompressionBombError, reported below


@functools.lru_cache(maxsize=4)
def load_unreduced(model_id: str) -> tuple[FreqViTForImageClassification, object]:
    """The unreduced model and its image processor, loaded once per model id."""
    try:
        model = FreqViTForImageClassification.from_pretrained(model_id, reduction_method="none").eval()
        processor = AutoImageProcessor.from_pretrained(model_id)
    except ValueError as error:
        raise gr.Error(str(error)) from error
    except OSError as error:
        raise gr.Error(f"Cannot load the model {model_id!r}: {str(error).splitlines()[0]}") from error
    return model, processor


@functools.lru_cache(maxsize=32)
def load_reduced(
    model_id: str, method: str, keep_rate: float, layers: tuple[int, ...], windows: tuple[int, ...]
) -> FreqViTForImageClassification:
    """A reduced model sharing the unreduced model's weights (no reload): built once per setting."""
    unreduced, _ = load_unreduced(model_id)
    try:
        config = FreqViTConfig.from_dict(
            unreduced.config.to_dict(),
            reduction_method=method,
            keep_rate=keep_rate,
            reduction_layers=layers,
            dc_window_sizes=windows,
        )
    except ValueError as error:
        raise gr.Error(str(error)) from error
    model = FreqViTForImageClassification(config).eval()
    model.load_state_dict(unreduced.state_dict(), strict=False)  # the reduction parameters stay at zero
    return model


def read_image(path: str | None) -> Image.Image:
    """An RGB image from an uploaded file, or a clear message: not an image, corrupt, too large. Grayscale,
    16-bit and transparent images are converted (16-bit scaled to 8, transparency over white)."""
    if not path:
        raise gr.Error("Upload an image or pick an example first.")
    name = Path(path).name
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as error:
        raise gr.Error(f"{name} is too large (over {MAX_MEGAPIXELS} megapixels); please downscale it.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise gr.Error(f"{name} is not an image this app can read ({type(error).__name__}: {error}).") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") else max(values.max(), 1.0)
        image = Image.fromarray((values * 255.0 / scale).clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def parse_ints(text: str, field: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError as error:
        raise gr.Error(f"{field}: give whole numbers separated by commas, got {text!r}") from error


def input_view(pixels: torch.Tensor, processor) -> np.ndarray:
    """The model's view of the image (after resize and crop), back to uint8 (H, W, 3)."""
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return ((pixels * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def top5(logits: torch.Tensor, id2label: dict) -> dict[str, float]:
    probabilities = logits.softmax(-1)
    values, indices = probabilities.topk(5)
    return {id2label[int(i)]: float(v) for v, i in zip(values, indices)}


def median_latency(model, pixels: torch.Tensor, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(pixels)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def amplitude_plot(unreduced: list[float], reduced: list[float], stages: list[int]):
    figure, axis = plt.subplots(figsize=(6, 3.2))
    layers = range(1, len(unreduced) + 1)
    axis.plot(layers, unreduced, "o-", label="unreduced")
    axis.plot(layers, reduced, "s-", label="reduced")
    for layer in stages:
        axis.axvline(layer + 1, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("block (dotted: reduction)")
    axis.set_ylabel("log amplitude at π (rel. to 0)")
    axis.set_title("High-frequency amplitude per block")
    axis.legend()
    figure.tight_layout()
    return figure


def analyse(path, model_id, method, keep_rate, layers_text, windows_text):
    image = read_image(path)
    layers = parse_ints(layers_text, "reduction layers")
    windows = parse_ints(windows_text, "DC windows")
    unreduced, processor = load_unreduced(model_id.strip() or DEFAULT_MODEL)
    reduced = load_reduced(model_id.strip() or DEFAULT_MODEL, method, float(keep_rate), layers, windows)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    patch = reduced.config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    with torch.inference_mode():
        base = unreduced(pixels, output_hidden_states=True)
        out = reduced(pixels, output_hidden_states=True, output_token_provenance=True)
        base_latency, reduced_latency = median_latency(unreduced, pixels), median_latency(reduced, pixels)
    view = input_view(pixels[0], processor)
    overlays = [(stage_overlay(view, stage, grid), stage_summary(stage)) for stage in out.token_provenance]
    stages = [stage.layer for stage in out.token_provenance]
    figure = amplitude_plot(
        layer_high_frequency(base.hidden_states, None, grid),
        layer_high_frequency(out.hidden_states, out.token_provenance, grid),
        stages,
    )
    lengths = [h.shape[1] for h in out.hidden_states]
    token_counts = [n for i, n in enumerate(lengths) if i == 0 or n != lengths[i - 1]]
    base_macs, reduced_macs = count_macs(unreduced.config) / 1e9, count_macs(reduced.config) / 1e9
    stats = (
        "| | GMACs | latency (ms, batch 1) |\n|---|---|---|\n"
        f"| unreduced | {base_macs:.2f} | {1000 * base_latency:.1f} |\n"
        f"| {method}, keep {keep_rate} | {reduced_macs:.2f} | {1000 * reduced_latency:.1f} |\n\n"
        f"Tokens: {' → '.join(str(n) for n in token_counts)}"
    )
    id2label = unreduced.config.id2label
    return overlays, top5(out.logits[0], id2label), top5(base.logits[0], id2label), stats, figure


def example_images() -> list[str]:
    """Real photos shipped with scikit-image, written once as PNG files for the examples."""
    from skimage import data

    folder = Path(tempfile.gettempdir()) / "freqtr_space_examples"
    folder.mkdir(exist_ok=True)
    paths = []
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).save(path)
        paths.append(str(path))
    return paths


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="FreqViT token reduction") as demo:
        gr.Markdown(
            "# Frequency-aware token reduction\n"
            "Which patches a ViT keeps (high-frequency tokens, outlined), which it averages into each DC token "
            "(one colour per DC window) and which are gone (grey), at every reduction stage. "
            "Lee et al., NeurIPS 2025, with the freqtr-hf library."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="image-upload")
                model_id = gr.Textbox(DEFAULT_MODEL, label="Model (Hub id or local folder)")
                method = gr.Dropdown(list(TRAINING_FREE_METHODS), value="freq", label="Method")
                keep_rate = gr.Slider(0.1, 1.0, value=0.7, step=0.05, label="Keep rate")
                layers = gr.Textbox("3, 6, 9", label="Reduction layers (0-based)")
                windows = gr.Textbox("2, 1, 1", label="DC windows per layer (w × w)")
                run = gr.Button("Run", variant="primary", elem_id="run")
                gr.Examples(example_images(), inputs=upload, label="Examples (scikit-image photos)")
            with gr.Column(scale=2):
                stages = gr.Gallery(label="Reduction stages", columns=3, height="auto", elem_id="stages")
                with gr.Row():
                    reduced_top5 = gr.Label(num_top_classes=5, label="Reduced model: top-5", elem_id="reduced-top5")
                    base_top5 = gr.Label(num_top_classes=5, label="Unreduced model: top-5", elem_id="base-top5")
                stats = gr.Markdown(elem_id="stats")
                plot = gr.Plot(label="High-frequency log amplitude per block")
        run.click(
            analyse,
            inputs=[upload, model_id, method, keep_rate, layers, windows],
            outputs=[stages, reduced_top5, base_top5, stats, plot],
            concurrency_limit=2,
        )
    return demo.queue(max_size=32)


if __name__ == "__main__":
    build_demo().launch()
