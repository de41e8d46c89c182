"""FreqViT token reduction, seen on your image: which patches are kept, which go into each DC token, which are gone.

    python space/app.py                 # http://127.0.0.1:7860
    FREQTR_MODEL=../shared/assets/deit-tiny-patch16-224 python space/app.py

Environment:
    FREQTR_MODEL       the default model (a Hub id or a folder); facebook/deit-tiny-patch16-224 if unset
    FREQTR_MODEL_DIRS  folders (os.pathsep-separated) under which the model box may load local models; besides
                       those, it loads only the default model and Hub ids
    FREQTR_DEVICE      auto (default: the CUDA GPU when there is one), cpu, cuda or mps
    FREQTR_QUEUE_SIZE  requests that may wait (default 16); beyond that, Gradio asks the user to try again
    FREQTR_MAX_GMACS   the largest model served, in GMACs per image unreduced (default 20: ViT-B/16 at 224 px is
                       17.6); a bigger one is refused from its config, before its weights load
    FREQTR_MAX_MPARAMS the largest model served, in millions of parameters (default 100: ViT-B is 86), also
                       checked from its config
    FREQTR_MAX_UPLOAD_MB  the largest upload (default 20)

Each model loads once, and its reduced variants share its parameter tensors. What the Space accepts, bounds and
cleans up is in docs/security.md: JPEG, PNG, WebP, GIF, BMP and TIFF images only; uploads removed after
`UPLOAD_LIFETIME_S`; every failure answered in one line that shows no path of the server.
"""

import functools
import logging
import os
import re
import statistics
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from huggingface_hub import HfApi, is_offline_mode
from huggingface_hub.constants import HF_HUB_CACHE
from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from transformers import AutoImageProcessor, PreTrainedModel

from freqtr_hf import TRAINING_FREE_FREQ, count_macs
from freqtr_hf.analysis.frequency import layer_high_frequency
from freqtr_hf.models.freqvit.configuration_freqvit import TRAINING_FREE_METHODS
from freqtr_hf.devices import describe, resolve_device, time_in_turns
from freqtr_hf.images import ImageReadError, read_image
from freqtr_hf.models.freqvit import family_classes
from freqtr_hf.models.freqvit.configuration_reduction import ReductionConfigMixin
from freqtr_hf.visualization import amplitude_plot, stages_image

FALLBACK_MODEL = "facebook/deit-tiny-patch16-224"
HUB_TIMEOUT_S = 5.0  # one metadata request decides whether the Hub answers; transformers would retry for ~25 s
WARMUP_RUNS, TIMED_RUNS = 1, 5
CONCURRENCY = 2  # requests computed at a time; the others wait in the queue
DEFAULT_LAYERS = "4, 7, 10"  # the paper's layers 4, 7, 10: reduction_layers (3, 6, 9)
DEVICE = resolve_device(os.environ.get("FREQTR_DEVICE", "auto"))
PRESET_METHOD = "freq, training-free preset"
# the Method box: every training-free method as it is, and freq with `TRAINING_FREE_FREQ` (method, config overrides)
METHODS = {**{method: (method, {}) for method in TRAINING_FREE_METHODS}, PRESET_METHOD: ("freq", TRAINING_FREE_FREQ)}
MAX_GMACS = float(os.environ.get("FREQTR_MAX_GMACS", "20"))
MAX_MPARAMS = float(os.environ.get("FREQTR_MAX_MPARAMS", "100"))
MAX_CLASSES = 100_000
MAX_UPLOAD_MB = float(os.environ.get("FREQTR_MAX_UPLOAD_MB", "20"))
MAX_UPLOAD_PIXELS = 16_000_000  # decoded, a 16 MP image is at most ~0.3 GB even as float TIFF
UPLOAD_LIFETIME_S = 900  # Gradio's cache of uploads is emptied of files older than this, every 5 minutes
SHOWN_CHARACTERS = 80  # of a user's text echoed in a message
# an absolute path of two or more parts: a message shows its last part only
SERVER_PATH = re.compile(r"(?<![\w:/.~-])(?:/[^/\s'\"]+)+/([^/\s'\"]+)")
log = logging.getLogger(__name__)


def default_model() -> str:
    return os.environ.get("FREQTR_MODEL") or FALLBACK_MODEL


def allowed_model_dirs() -> list[Path]:
    """The folders under which the model box may load local models (`FREQTR_MODEL_DIRS`), resolved."""
    parts = os.environ.get("FREQTR_MODEL_DIRS", "").split(os.pathsep)
    return [Path(part).expanduser().resolve() for part in parts if part]


def model_source(text: str) -> str:
    """What to load for the model box's text: the default model, a Hub id (`owner/name`), or a folder under
    `FREQTR_MODEL_DIRS` (resolved, so neither `..` nor a symlink leads out of it). Anything else raises `gr.Error`."""
    text = (text or "").strip()
    default = default_model()
    if not text or text == default:
        return default
    try:
        path = Path(text).expanduser()
        local = path.is_absolute() or path.exists() or text.startswith((".", "~"))
        resolved = path.resolve() if local else None
    except (ValueError, OSError, RuntimeError) as error:  # a NUL byte, a name too long, a symlink loop
        raise gr.Error(f"Model: {shorten(text)!r} is not a name this Space can load ({type(error).__name__}).") from None
    if resolved is not None:
        # a path on this server (a Hub-like name that exists here counts too: transformers would load the folder)
        roots = allowed_model_dirs()
        if resolved == Path(default).expanduser().resolve() or any(resolved.is_relative_to(root) for root in roots):
            if not resolved.is_dir():
                raise gr.Error(f"Model: there is no folder {shorten(text)!r}.")
            return str(resolved)
        allowed = "set by FREQTR_MODEL_DIRS" if roots else "none: FREQTR_MODEL_DIRS is not set"
        raise gr.Error(f"Model: {shorten(text)!r} is not under the folders this Space loads models from ({allowed}).")
    try:
        validate_repo_id(text)
    except HFValidationError:
        pass
    else:
        if text.count("/") == 1:
            return text
    raise gr.Error(f"Model: give a Hub id such as {FALLBACK_MODEL!r} or an allowed folder, got {shorten(text)!r}.")


def shorten(text: str) -> str:
    """A user's text as a message may echo it: at most `SHOWN_CHARACTERS`, without control characters."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 1] + "…"


def public_message(text: str) -> str:
    """One line for the user: the first line of `text`, with the server's folders (those the Space knows of, then
    any absolute path) cut to their last part."""
    line = (str(text).strip().splitlines() or [""])[0]
    roots = {*map(str, allowed_model_dirs()), str(Path.cwd()), str(Path.home()), tempfile.gettempdir(),
             os.path.dirname(default_model().rstrip("/")), HF_HUB_CACHE}
    for root in sorted((r for r in roots if r not in ("", "/")), key=len, reverse=True):
        line = line.replace(root.rstrip("/") + "/", "")
    return SERVER_PATH.sub(r"\1", line)[:300]


def one_line_answers(handler):
    """Every failure of a request as one `gr.Error` line without the server's paths; an unexpected one is logged
    with its traceback on the server and named by its type only."""

    @functools.wraps(handler)
    def answered(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error as error:
            raise gr.Error(public_message(error.message)) from None
        except Exception as error:  # noqa: BLE001 - the boundary between the server and the user
            log.exception("request failed")
            raise gr.Error(f"The request failed ({type(error).__name__}); nothing was kept of it.") from None

    return answered


def check_cost(source: str, local_files_only: bool) -> None:
    """Refuse, from its config alone, a model costlier than `MAX_GMACS` per image: a request must not cost what a
    model's config says."""
    config_class, model_class = family_classes(source, local_files_only=local_files_only)
    config_dict, _ = config_class.get_config_dict(source, local_files_only=local_files_only)
    classes = max(int(config_dict.get("num_labels") or 0), len(config_dict.get("id2label") or {}))
    if classes > MAX_CLASSES:  # checked first: the config would build a label table of that size
        raise gr.Error(f"Model: {classes} classes is over this Space's limit of {MAX_CLASSES}; pick another model.")
    config = config_class.from_dict(config_dict, reduction_method="none")
    gmacs = count_macs(config) / 1e9
    shape = f"{config.image_size} px, {config.num_hidden_layers} layers, width {config.hidden_size}"
    if gmacs > MAX_GMACS:
        raise gr.Error(f"Model: {gmacs:.0f} GMACs per image ({shape}) is over this Space's limit of {MAX_GMACS:g}; "
                       "pick a smaller model.")
    # the parameters counted on the meta device: no memory for weights; torch's device mode is the calling thread's
    # own (accelerate's init_empty_weights patches every thread's modules, and requests run in threads)
    with torch.device("meta"):
        mparams = model_class(config).num_parameters() / 1e6
    if mparams > MAX_MPARAMS:
        raise gr.Error(f"Model: {mparams:.0f} M parameters ({shape}, {config.num_labels} classes) is over this "
                       f"Space's limit of {MAX_MPARAMS:g} M; pick a smaller model.")


def hub_unreachable(model_id: str) -> str | None:
    """Why the Hub cannot serve `model_id` right now (offline mode, no connection, an error answer), or None when
    it answers. A model that does not exist or is gated raises `gr.Error`."""
    if is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(model_id, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError as error:
        raise gr.Error(f"Model: there is no model {model_id!r} on the Hub (or it is private).") from error
    except GatedRepoError as error:
        raise gr.Error(f"Model: {model_id!r} is gated on the Hub; this Space cannot load it.") from error
    except Exception as error:  # noqa: BLE001 - connection errors are the Hub client's HTTP library's own types
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no answer'}"
    return None


def share_weights(config: ReductionConfigMixin, unreduced: PreTrainedModel) -> PreTrainedModel:
    """A model built from `config` whose parameters are the unreduced model's own tensors (same storage, no copy);
    only the reduction's new parameters are its own, at their initial value (zero: the training-free method)."""
    with torch.device(unreduced.device):
        model = type(unreduced)(config)
    result = model.load_state_dict(unreduced.state_dict(), strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"the reduced model lacks the unreduced model's {result.unexpected_keys[:3]}")
    return model.eval()


class LoadedModel:
    """One model: the unreduced classifier, its image processor, and its reduced variants (built once per setting,
    sharing its weights, and dropped with it)."""

    def __init__(self, source: str):
        reason = hub_unreachable(source) if not Path(source).is_dir() else None
        try:
            check_cost(source, local_files_only=reason is not None)
            _, model_class = family_classes(source, local_files_only=reason is not None)
            model = model_class.from_pretrained(
                source, reduction_method="none", local_files_only=reason is not None
            )
            self.processor = AutoImageProcessor.from_pretrained(source, local_files_only=reason is not None)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        except OSError as error:
            if reason is not None:
                raise gr.Error(
                    f"The Hugging Face Hub cannot be reached ({reason}), and {source!r} is not in the local cache."
                ) from error
            raise gr.Error(f"Cannot load the model {source!r}: {str(error).splitlines()[0]}") from error
        self.unreduced = model.to(DEVICE).eval()
        self.reduced = functools.lru_cache(maxsize=32)(self.build_reduced)

    def build_reduced(
        self, method: str, keep_rate: float, layers: tuple[int, ...], windows: tuple[int, ...]
    ) -> PreTrainedModel:
        """The model reducing with `method` (a key of `METHODS`) after the 0-based blocks `layers`."""
        reduction_method, overrides = METHODS[method]
        try:
            config = type(self.unreduced.config).from_dict(
                self.unreduced.config.to_dict(),
                **overrides,
                reduction_method=reduction_method,
                keep_rate=keep_rate,
                reduction_layers=layers,
                dc_window_sizes=windows,
            )
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return share_weights(config, self.unreduced)


@functools.lru_cache(maxsize=4)
def load_model(source: str) -> LoadedModel:
    """The model of a source checked by `model_source`, loaded once."""
    return LoadedModel(source)


def read_upload(upload: str | dict | None) -> Image.Image:
    """The uploaded image as 8-bit RGB (`freqtr_hf.images.read_image`: the size is checked from the header before
    decoding), or a `gr.Error` naming the file. `upload` is a path, or the image box's file data (a dict)."""
    path, name = (upload.get("path"), upload.get("orig_name")) if isinstance(upload, dict) else (upload, None)
    if not path:
        raise gr.Error("Upload an image or pick an example first.")
    shown = name or Path(path).name
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise gr.Error(f"{shorten(shown)}: the upload is gone; upload it again.") from error
    if size > MAX_UPLOAD_MB * 1e6:
        raise gr.Error(f"{shorten(shown)}: {size / 1e6:.1f} MB is over this Space's limit of {MAX_UPLOAD_MB:g} MB.")
    try:
        return read_image(path, max_pixels=MAX_UPLOAD_PIXELS)
    except ImageReadError as error:
        raise gr.Error(str(error).replace(str(path), shorten(shown))) from error  # not the server's path


def parse_ints(text: str, field: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).replace(",", " ").split())
    except ValueError as error:
        raise gr.Error(f"{field}: give whole numbers separated by commas, got {text!r}") from error


def reduction_layers(text: str, num_layers: int) -> tuple[int, ...]:
    """The config's 0-based `reduction_layers` from the UI's layer numbers, which count from 1 as the paper does
    ("layers 4, 7, 10" are blocks 3, 6, 9). This is the one place where the numbering changes."""
    numbers = parse_ints(text, "Reduction layers")
    if not numbers or any(not 1 <= n <= num_layers for n in numbers) or list(numbers) != sorted(set(numbers)):
        raise gr.Error(
            f"Reduction layers: strictly increasing layer numbers from 1 to {num_layers} (this model's depth), "
            f"got {text!r}"
        )
    return tuple(n - 1 for n in numbers)


def input_view(pixels: torch.Tensor, processor) -> np.ndarray:
    """The model's view of the image (after resize and crop), back to uint8 (H, W, 3)."""
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return ((pixels.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def top5(logits: torch.Tensor, id2label: dict) -> dict[str, float]:
    values, indices = logits.float().softmax(-1).topk(min(5, logits.shape[-1]))  # a model may have fewer classes
    return {id2label[int(i)]: float(v) for v, i in zip(values, indices)}


def median_latencies(
    models: list, pixels: torch.Tensor, warmup: int = WARMUP_RUNS, runs: int = TIMED_RUNS
) -> list[float]:
    """Median seconds per call of each model on `pixels`, over `runs` timed rounds after `warmup` untimed ones (so
    no model pays for a cold first run). The models take turns within a round, so drift hits them alike."""
    times = time_in_turns([functools.partial(model, pixels) for model in models], warmup + runs, pixels.device)
    return [statistics.median(record[warmup:]) for record in times]


@one_line_answers
def analyse(upload, model_text, method, keep_rate, layers_text, windows_text):
    """Run the unreduced and the reduced model on the upload: stage pictures, both top-5s, cost and latency, and
    the per-layer high-frequency amplitude."""
    image = read_upload(upload)
    if method not in METHODS:
        raise gr.Error(f"Method: one of {', '.join(METHODS)}, got {method!r}")
    try:
        keep_rate = float(keep_rate)
    except (TypeError, ValueError) as error:
        raise gr.Error(f"Keep rate: a number in (0, 1], got {keep_rate!r}") from error
    loaded = load_model(model_source(model_text))
    unreduced = loaded.unreduced
    layers = reduction_layers(layers_text, unreduced.config.num_hidden_layers)
    reduced = loaded.reduced(method, keep_rate, layers, parse_ints(windows_text, "DC windows"))
    pixels = loaded.processor(image, return_tensors="pt")["pixel_values"].to(DEVICE)
    patch, prefix = reduced.config.patch_size, reduced.config.num_prefix_tokens
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    with torch.inference_mode():
        base = unreduced(pixels, output_hidden_states=True)
        out = reduced(pixels, output_hidden_states=True, output_token_provenance=True)
        base_latency, reduced_latency = median_latencies([unreduced, reduced], pixels)
    view = input_view(pixels[0], loaded.processor)
    provenance = out.token_provenance or ()
    stages = stages_image(view, provenance, grid, METHODS[method][0])
    figure = amplitude_plot(
        layer_high_frequency(base.hidden_states, None, grid, prefix),
        layer_high_frequency(out.hidden_states, provenance, grid, prefix),
        [stage.layer for stage in provenance],
    )
    lengths = [h.shape[1] for h in out.hidden_states]
    token_counts = [n for i, n in enumerate(lengths) if i == 0 or n != lengths[i - 1]]
    base_macs, reduced_macs = count_macs(unreduced.config) / 1e9, count_macs(reduced.config) / 1e9
    stats = (
        "| model | GMACs | latency (ms) |\n|---|---|---|\n"
        f"| unreduced | {base_macs:.2f} | {1000 * base_latency:.1f} |\n"
        f"| {method}, keep {keep_rate:g} | {reduced_macs:.2f} | {1000 * reduced_latency:.1f} |\n\n"
        f"Latency: median of {TIMED_RUNS} runs after {WARMUP_RUNS} warm-up, batch size 1, "
        f"{describe(DEVICE)}, {str(unreduced.dtype).removeprefix('torch.')}.  \n"
        f"Tokens: {' → '.join(str(n) for n in token_counts)}, reducing after layer "
        f"{', '.join(str(stage.layer + 1) for stage in provenance) or 'none'}"
    )
    id2label = unreduced.config.id2label
    return stages, top5(out.logits[0], id2label), top5(base.logits[0], id2label), stats, figure


@one_line_answers
def check_upload(upload) -> None:
    """Tell the user at once when an upload cannot be read (not an image, corrupt, too large)."""
    read_upload(upload)


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
    # uploads (and the Space's own outputs) leave Gradio's cache after UPLOAD_LIFETIME_S, and all of them at shutdown
    with gr.Blocks(title="FreqViT token reduction", delete_cache=(300, UPLOAD_LIFETIME_S)) as demo:
        gr.Markdown(
            "# Frequency-aware token reduction\n"
            "Which patches a ViT keeps (high-frequency tokens, white borders), which it averages into each DC token "
            "(hatched and outlined, one colour per token) and which are gone (grey), at every reduction layer; with "
            "the training-free preset, patches also merge into the kept token they resemble (hatched in white). "
            "Lee et al., NeurIPS 2025, with the freqtr-hf library. "
            f"Runs on **{describe(DEVICE)}**."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="Image", height=260, elem_id="image-upload"
                )
                gr.Examples(example_images(), inputs=upload, label="Examples (scikit-image photos)")
                model_id = gr.Textbox(default_model(), label="Model (Hub id, or a folder this Space allows)")
                method = gr.Dropdown(list(METHODS), value="freq", label="Method")
                keep_rate = gr.Slider(0.1, 1.0, value=0.7, step=0.05, label="Keep rate")
                layers = gr.Textbox(
                    DEFAULT_LAYERS, label="Reduction layers (numbered from 1, as in the paper: 4, 7, 10)"
                )
                windows = gr.Textbox("2, 1, 1", label="DC windows per reduction layer (w × w)")
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                stages = gr.Image(
                    label="Reduction stages", show_label=False, type="pil", format="png",
                    buttons=["fullscreen", "download"], elem_id="stages",
                )
                with gr.Row():
                    reduced_top5 = gr.Label(num_top_classes=5, label="Reduced model: top-5", elem_id="reduced-top5")
                    base_top5 = gr.Label(num_top_classes=5, label="Unreduced model: top-5", elem_id="base-top5")
                stats = gr.Markdown(label="Cost and latency", elem_id="stats")
                plot = gr.Plot(label="High-frequency log amplitude per layer", elem_id="amplitude")
        # preprocess=False: the raw upload reaches read_upload, which checks the size before anything decodes it
        work = dict(preprocess=False, concurrency_limit=CONCURRENCY, concurrency_id="model")  # one limit for both
        upload.upload(check_upload, inputs=upload, api_visibility="private", **work)
        run.click(
            analyse,
            inputs=[upload, model_id, method, keep_rate, layers, windows],
            outputs=[stages, reduced_top5, base_top5, stats, plot],
            api_name="analyse",
            **work,
        )
    # a request beyond the queue gets Gradio's "This application is currently busy. Please try again."
    return demo.queue(max_size=int(os.environ.get("FREQTR_QUEUE_SIZE", "16")))


if __name__ == "__main__":
    build_demo().launch(max_file_size=f"{MAX_UPLOAD_MB:g}mb")
