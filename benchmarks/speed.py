"""FreqViT and the training-free baselines against transformers' ViT on the same (random) weights, side by side; and
the other families (DINOv2, CLIP's and SigLIP's vision towers) at their long sequences against their own classes.

    python benchmarks/speed.py [--device auto|cpu|cuda|mps] [--sizes small base base-384 large large-384
        dinov2-s-518 dinov2-b-518 clip-l-336 siglip-b-384]
        [--batch-sizes 1 32] [--dtypes float32 bfloat16] [--rounds 7] [--methods ...] [--compile]
        [--compile-modes default reduce-overhead max-autotune] [--training-memory] [--matmuls-alone]
    python benchmarks/speed.py --sizes overhead small --batch-sizes 1

Each round times every model once on the same batch, in turn (the order rotates between rounds). A speed-up is the
median over rounds of the ratio within a round (ViT's time / the model's time), so each ratio pairs timings taken
seconds apart on a noisy machine; it is also given as a share of the MAC ratio. `free-cut` is FreqViT cut to `freq`'s
token counts by slicing, a reduction that costs nothing: its share is the ceiling that the smaller matmuls set for
any method at this batch size. Each line gives the median milliseconds per forward and the aten operations one
forward dispatches; `--sizes overhead` (width 8, one head) leaves only each op's fixed cost, the part of the time
that no token cut removes. On CUDA, peak memory per model is printed too. `--compile` adds `torch.compile`
(default mode; on CUDA also `reduce-overhead`, CUDA graphs; or the `--compile-modes` given) of ViT and every model in
`--methods`, timed against the compiled ViT the same way. `--matmuls-alone` times ViT's linear layers alone, at full
length and at `freq`'s token counts: each reads its whole weight matrix whatever the token count, so at batch 1 even
they fall short of their MAC ratio. `--training-memory` measures the activations a training step keeps for backward (batch 64), with and
without reduction. `--score-study` times a reducing block's attention with `freq`'s exact score several ways: eager over all queries,
the model's chunks of queries, and sdpa plus the score recomputed over chunks of queries (no (B, h, n, n) tensor). Attention runs on sdpa.
"""

import argparse
import statistics
from dataclasses import replace
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode  # the hook that sees every aten op, as FlopCounterMode
from transformers import (
    CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel, ViTConfig,
    ViTForImageClassification,
)

from freqtr_hf import (
    TRAINING_FREE_FREQ, FreqCLIPVisionConfig, FreqCLIPVisionModel, FreqDinov2Config, FreqDinov2Model,
    FreqSiglipVisionConfig, FreqSiglipVisionModel, FreqViTConfig, FreqViTForImageClassification, count_macs,
)
from freqtr_hf.devices import (
    DEVICE_CHOICES, describe, resolve_device, resolve_dtype, synchronize, time_in_turns,
)
from freqtr_hf.models.freqvit import modeling_reduction
from freqtr_hf.models.freqvit.token_schedule import configured_sequence_lengths
from freqtr_hf.models.freqvit.token_state import AttentionMaps, TokenState
from freqtr_hf.cli import HelpFormatter, positive_int

# name -> (family, width, heads, blocks, image size, patch size)
SHAPES = {
    "tiny": ("vit", 192, 3, 12, 224, 16), "small": ("vit", 384, 6, 12, 224, 16), "base": ("vit", 768, 12, 12, 224, 16),
    # long sequences: 577 tokens at 384 px
    "base-384": ("vit", 768, 12, 12, 384, 16), "large": ("vit", 1024, 16, 24, 224, 16),
    "large-384": ("vit", 1024, 16, 24, 384, 16),
    # not a model: so narrow that its matmuls cost next to nothing, and what is left is each op's fixed cost
    "overhead": ("vit", 8, 1, 12, 224, 16),
    # the other families at the sequence lengths they run at: 1,370 tokens (DINOv2 at 518 px), 577 (CLIP ViT-L/14 at
    # 336 px), 576 (SigLIP-B/16 at 384 px, no CLS token)
    "dinov2-s-518": ("dinov2", 384, 6, 12, 518, 14), "dinov2-b-518": ("dinov2", 768, 12, 12, 518, 14),
    "clip-l-336": ("clip", 1024, 16, 24, 336, 14), "siglip-b-384": ("siglip", 768, 12, 12, 384, 16),
}
# family -> (transformers' config and model, the reducing config and model); ViT's with its classifier, the others'
# encoders as their users run them
FAMILY_CLASSES = {
    "vit": (ViTConfig, ViTForImageClassification, FreqViTConfig, FreqViTForImageClassification),
    "dinov2": (Dinov2Config, Dinov2Model, FreqDinov2Config, FreqDinov2Model),
    "clip": (CLIPVisionConfig, CLIPVisionModel, FreqCLIPVisionConfig, FreqCLIPVisionModel),
    "siglip": (SiglipVisionConfig, SiglipVisionModel, FreqSiglipVisionConfig, FreqSiglipVisionModel),
}
VIT_SHAPES = [name for name, shape in SHAPES.items() if shape[0] == "vit"]
# how a report names a family's transformers model, its baseline
FAMILY_NAMES = {"vit": "ViT", "dinov2": "DINOv2", "clip": "CLIP", "siglip": "SigLIP"}
# name -> FreqViTConfig fields; per-layer ToMe at r = 13, as its paper runs DeiT (0.74 GMACs on DeiT-T shapes)
VARIANTS = {
    "freqvit-off": dict(reduction_method="none"),
    "freq": dict(reduction_method="freq"),
    "freq-logits": dict(reduction_method="freq", score_source="logits"),
    "freq-training-free": dict(reduction_method="freq", **TRAINING_FREE_FREQ),
    # each stage's sequence rounded to a multiple of 8 or 64 tokens (GPU tiles)
    "freq-x8": dict(reduction_method="freq", sequence_multiple=8),
    "freq-x64": dict(reduction_method="freq", sequence_multiple=64),
    "topk": dict(reduction_method="topk"),
    "evit": dict(reduction_method="evit"),
    "tome": dict(reduction_method="tome"),
    "tome-r13": dict(reduction_method="tome", tome_r=13),
    "kmedoids": dict(reduction_method="kmedoids"),
    "ats": dict(reduction_method="ats"),
    "radial": dict(reduction_method="radial"),
}
# not a method: FreqViT cut to freq's token counts by slicing, see `SlicingReducer`
FREE_REDUCTION = "free-cut"


class SlicingReducer(torch.nn.Module):
    """A reducer that costs nothing: it keeps the first `length` tokens of the sequence (and computes nothing
    meaningful). A FreqViT with these in place of its reducers runs at a schedule's token counts in the same model
    code as every method: its speed-up is what the smaller matmuls alone give, the most any method with these token
    counts can reach at this batch size."""

    needs_attention_probs = False
    needs_received_attention = False

    def __init__(self, length: int):
        super().__init__()
        self.length = length

    def forward(
        self, hidden_states: torch.Tensor, maps: AttentionMaps | None, tokens: TokenState
    ) -> tuple[torch.Tensor, TokenState]:
        candidates = tokens.patch_ids[:, : self.length - tokens.prefix]
        return hidden_states[:, : self.length], replace(tokens, patch_ids=candidates)


def cut_by_slicing(model: torch.nn.Module) -> torch.nn.Module:
    """A reducing `model` with each reducer replaced by a `SlicingReducer` to the length its own reduction leaves."""
    for layer, (_, length) in zip(model.base_model.blocks, configured_sequence_lengths(model.config)):
        if layer.token_reducer is not None:
            layer.token_reducer = SlicingReducer(length)
    return model


class MatmulsAlone:
    """Only the linear layers of a ViT's blocks, each on as many tokens as a schedule gives it (random inputs made
    once): a forward's matrix products and nothing else. Timed at full length and at `freq`'s token counts, it shows
    how far the products alone fall short of their MAC ratio at a batch size (a comparison, not a bound: in the
    model q, k and v share one input, here each reads its own)."""

    def __init__(self, vit: ViTForImageClassification, lengths: list[tuple[int, int]], batch_size: int):
        """lengths: per block, (tokens its attention sees, tokens its MLP sees), as `sequence_lengths` gives."""
        self.calls, self.macs = [], 0
        for layer, (attention_length, mlp_length) in zip(vit.vit.layers, lengths):
            for module, length in ((layer.attention, attention_length), (layer.mlp, mlp_length)):
                for linear in module.modules():
                    if isinstance(linear, torch.nn.Linear):
                        rows = torch.randn(batch_size, length, linear.in_features, device=linear.weight.device,
                                           dtype=linear.weight.dtype)
                        self.calls.append(partial(linear, rows))
                        self.macs += batch_size * length * linear.in_features * linear.out_features

    def __call__(self) -> None:
        for call in self.calls:
            call()


def matmuls_alone(
    vit: ViTForImageClassification, config: FreqViTConfig, batch_size: int, rounds: int, device: torch.device
) -> tuple[float, float]:
    """ViT's linear layers alone at full length and at the token counts of a FreqViT `config`, in turns: (their
    speed-up, their MAC ratio)."""
    cut = configured_sequence_lengths(config)
    full = [(cut[0][0],) * 2] * len(cut)
    full, cut = MatmulsAlone(vit, full, batch_size), MatmulsAlone(vit, cut, batch_size)
    with torch.inference_mode():
        for run in (full, cut):
            run()
        times = time_in_turns([full, cut], rounds, device)
    return statistics.median(f / c for f, c in zip(*times)), full.macs / cut.macs


def build_models(size: str, variants: list[str], device, dtype) -> dict[str, tuple[torch.nn.Module, int]]:
    """The family's transformers model (first, named after the family) and each reducing variant, sharing one set of
    random weights, with their MACs. A variant the family's config refuses (CLS-token scores on SigLIP) is left out
    with its reason."""
    family, width, heads, depth, image_size, patch_size = SHAPES[size]
    reference_config, reference_class, config_class, model_class = FAMILY_CLASSES[family]
    shape = dict(hidden_size=width, num_attention_heads=heads, num_hidden_layers=depth, image_size=image_size,
                 patch_size=patch_size, attn_implementation="sdpa")
    shape |= dict(num_labels=1000) if family == "vit" else {}
    shape |= dict(intermediate_size=4 * width) if family != "dinov2" else {}  # DINOv2: mlp_ratio 4
    reference = reference_class(reference_config(**shape)).eval()
    unreduced = config_class(**shape, reduction_method="none")
    models = {family: (reference, count_macs(unreduced))}
    for name in variants:
        fields = VARIANTS["freq" if name == FREE_REDUCTION else name]
        try:
            config = config_class(**shape, **fields)
        except ValueError as error:
            print(f"{name} left out of {size}: {error}")
            continue
        model = model_class(config).eval()
        model.load_state_dict(reference.state_dict(), strict=False)
        models[name] = (cut_by_slicing(model) if name == FREE_REDUCTION else model, count_macs(config))
    return {name: (model.to(device=device, dtype=dtype), macs) for name, (model, macs) in models.items()}


def shape_title(size: str) -> str:
    """How a report names a `--sizes` entry."""
    if size == "overhead":
        return "width 8, one head (per-op overhead)"
    family, width, _, _, image_size, patch_size = SHAPES[size]
    tokens = (image_size // patch_size) ** 2 + (family != "siglip")
    if family != "vit":
        return (f"{FAMILY_NAMES[family]}-{size.split('-')[1].upper()}/{patch_size} shapes at {image_size} px "
                f"({tokens} tokens)")
    name = size.partition("-")[0]
    return f"{'DeiT' if name != 'large' else 'ViT'}-{name[0].upper()}/16 shapes at {image_size} px ({tokens} tokens)"


def aten_ops_per_forward(model: torch.nn.Module, pixels: torch.Tensor) -> int:
    """How many aten operations one forward of `pixels` (B, 3, H, W) dispatches, after a warm-up call so that cached
    constants are not counted. At batch 1 on a CPU each costs a few microseconds whatever its size."""

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    counter = Counter()
    with torch.inference_mode():
        model(pixels)
        with counter:
            model(pixels)
    return counter.count


def time_side_by_side(models: dict, pixels: torch.Tensor, rounds: int, device) -> tuple[dict, dict]:
    """Per model: its times over the rounds, and its peak memory (bytes, CUDA only): its weights plus the most its
    forward allocated beyond what was held before (activations, workspaces, CUDA graph pools). The other models'
    weights share the device, so the device's own peak would count them all."""
    peaks, names = {}, list(models)
    with torch.inference_mode():
        for name in names:  # warm-up (CUDA graphs record on the second call, replay from the third), peak memory
            model = models[name][0]
            if device.type == "cuda":
                synchronize(device)
                held = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(3):
                model(pixels)
            synchronize(device)
            if device.type == "cuda":
                weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
                peaks[name] = weights + torch.cuda.max_memory_allocated(device) - held
        measured = time_in_turns([partial(models[name][0], pixels) for name in names], rounds, device)
    return dict(zip(names, measured)), peaks


def report(title: str, models: dict, times: dict, peaks: dict, batch_size: int, ops: dict | None = None) -> None:
    """One line per model, the first (the family's transformers model) the baseline; `ops`: aten operations per
    forward, by model (see `aten_ops_per_forward`)."""
    baseline = next(iter(models))
    vit_macs = models[baseline][1]
    print(f"\n{title}")
    print(f"{'model':<20} {'GMACs':>6} {'img/s':>9} {'ms':>8} {'speed-up':>9} {'MAC ratio':>10} {'share':>7} "
          f"{'peak MiB':>9} {'ops':>5}")
    for name, (_, macs) in models.items():
        speedup = statistics.median(v / t for v, t in zip(times[baseline], times[name]))
        mac_ratio = vit_macs / macs
        peak = f"{peaks[name] / 2**20:9.0f}" if name in peaks else f"{'-':>9}"
        count = f"{ops[name]:>5}" if ops else f"{'-':>5}"
        print(f"{name:<20} {macs / 1e9:>6.2f} {batch_size / statistics.median(times[name]):>9.1f} "
              f"{1e3 * statistics.median(times[name]):>8.2f} {speedup:>8.2f}x {mac_ratio:>9.2f}x "
              f"{100 * speedup / mac_ratio:>6.0f}% {peak} {count}")
    if f"{baseline} (eager)" in times:
        compiled_ms, eager_ms = (1e3 * statistics.median(times[name]) for name in (baseline, f"{baseline} (eager)"))
        if compiled_ms > eager_ms:
            print(f"the compiled {FAMILY_NAMES[baseline]} is slower than the eager one ({compiled_ms:.2f} ms against "
                  f"{eager_ms:.2f}): the speed-ups above, against it, overstate what the reduced models gain; compare "
                  f"their ms with {baseline} (eager)'s")


def compiled_models(models: dict, mode: str) -> dict:
    """Every model compiled in `mode` (fullgraph, static shapes), with eager ViT beside them. Speed-ups are against
    the compiled baseline (the family's transformers model)."""
    # every model's forward is one function (transformers' `can_return_tuple` wrapper), and all its compiled versions
    # count towards one recompile limit (over it, fullgraph raises): start afresh per mode and batch size, with room
    # for every model
    torch.compiler.reset()
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.7
    setattr(config, limit, max(getattr(config, limit), len(models)))
    compiled = {name: (torch.compile(model, mode=mode, fullgraph=True, dynamic=False), macs)
                for name, (model, macs) in models.items()}
    baseline = next(iter(models))
    return {**compiled, f"{baseline} (eager)": models[baseline]}


def exact_score_study(
    size: str, batch_size: int, dtype: torch.dtype, rounds: int, device: torch.device, chunk: int = 64
) -> dict[str, float]:
    """One reducing block's attention at a shape's token count, ways that give `freq`'s exact score (the column mean
    of the softmax): eager over all queries at once (the (B, h, n, n) probabilities, then AV); the model's
    `eager_attention` (over chunks of `query_chunk` queries), and the same with 256 queries a chunk; sdpa plus the
    column sums recomputed over chunks of `chunk` queries. Returns each one's speed against the whole eager one (above
    1: faster) and the largest score difference among them."""
    family, width, heads, _, image_size, patch_size = SHAPES[size]
    length = (family != "siglip") + (image_size // patch_size) ** 2
    q, k, v = (torch.randn(batch_size, heads, length, width // heads, device=device, dtype=dtype) for _ in range(3))
    scaling = (width // heads) ** -0.5

    def eager() -> torch.Tensor:
        probs = (q @ k.transpose(-1, -2) * scaling).softmax(-1)
        probs @ v  # the block's output
        return probs.mean(dim=(1, 2), dtype=torch.float32)

    def model_chunks() -> torch.Tensor:
        return modeling_reduction.eager_attention(q, k, v, None, scaling, 0.0, False, True)[2]

    def fixed_chunks() -> torch.Tensor:  # the same, 256 queries a chunk
        outputs, sums = [], 0.0
        for part in q.split(256, dim=2):
            probs = ((part * scaling) @ k.transpose(-1, -2)).softmax(-1)
            outputs.append(probs @ v)
            sums = sums + probs.sum(dim=(1, 2), dtype=torch.float32)
        torch.cat(outputs, dim=2)  # the block's output
        return sums / (heads * length)

    def recomputed() -> torch.Tensor:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)  # the block's output
        sums = sum((part @ k.transpose(-1, -2) * scaling).softmax(-1).sum(dim=2, dtype=torch.float32)
                   for part in q.split(chunk, dim=2))
        return sums.sum(1) / (heads * length)

    ways = {"the model's chunks": model_chunks, "256 queries a chunk": fixed_chunks,
            f"sdpa + sums over {chunk}": recomputed}
    with torch.inference_mode():
        reference = eager()
        difference = max((way() - reference).abs().max().item() for way in ways.values())
        times = time_in_turns([eager, *ways.values()], rounds, device)
    ratios = {name: statistics.median(e / t for e, t in zip(times[0], way)) for name, way in zip(ways, times[1:])}
    return {**ratios, "difference": difference}


def saved_activation_bytes(model: torch.nn.Module, pixels: torch.Tensor) -> int:
    """Bytes of the distinct tensors a training step keeps for backward, weights aside (the activations), counted
    as they are saved: the count does not depend on the device's allocator."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        labels = torch.zeros(len(pixels), dtype=torch.long, device=pixels.device)
        loss = model(pixels, labels=labels).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=SHAPES,
                        help="DeiT/ViT shapes (-384: at 384 px, 577 tokens), 'overhead': width 8, one head, where "
                        "only the per-op cost is left, or another family's at its long sequences (DINOv2-S/B at 518 "
                        "px, CLIP ViT-L/14 at 336, SigLIP-B/16 at 384)")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--rounds", type=positive_int, default=7, help="timed forwards per model")
    parser.add_argument("--methods", nargs="+", default=[*VARIANTS, FREE_REDUCTION], choices=[*VARIANTS, FREE_REDUCTION],
                        help=f"{FREE_REDUCTION}: FreqViT cut to freq's token counts by slicing, a reduction that "
                        "costs nothing")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of ViT and every model in --methods (each compiles once per "
                        "mode and batch size: choose few)")
    parser.add_argument("--compile-modes", nargs="+", choices=("default", "reduce-overhead", "max-autotune"),
                        help="the torch.compile modes --compile times (default: default, and on CUDA also "
                        "reduce-overhead, CUDA graphs; max-autotune tunes every matmul and takes minutes per model)")
    parser.add_argument("--training-memory", action="store_true", help="activations kept by a training step")
    parser.add_argument("--score-study", action="store_true",
                        help="also time a reducing block's attention with the exact score several ways: eager over all "
                        "queries, over the model's chunks of queries, and sdpa plus the score's column sums over chunks "
                        "of 64 queries")
    parser.add_argument("--matmuls-alone", action="store_true",
                        help="also time ViT's linear layers alone, at full length and at freq's token counts")
    args = parser.parse_args()
    needs_freq = (
        ("--training-memory", args.training_memory, "measures the default FreqViT"),
        ("--matmuls-alone", args.matmuls_alone, "runs at the default FreqViT's token counts"),
    )
    for flag, wanted, why in needs_freq:
        if wanted and "freq" not in args.methods:
            parser.error(f"{flag} {why}: add freq to --methods")
        others = [size for size in args.sizes if size not in VIT_SHAPES]
        if wanted and others:
            parser.error(f"{flag} measures ViT shapes only; leave out {' '.join(others)}")
    try:
        device = resolve_device(args.device)
        dtypes = {name: resolve_dtype(name, device) for name in args.dtypes}
    except ValueError as error:
        parser.error(str(error))
    if args.compile_modes is None:
        args.compile_modes = ["default"] + (["reduce-overhead"] if device.type == "cuda" else [])
    print(f"torch {torch.__version__}, {describe(device)}, sdpa attention")
    for dtype_name, dtype in dtypes.items():
        for size in args.sizes:
            models = build_models(size, args.methods, device, dtype)
            for batch_size in args.batch_sizes:
                image_size = SHAPES[size][4]
                pixels = torch.randn(batch_size, 3, image_size, image_size, device=device, dtype=dtype)
                times, peaks = time_side_by_side(models, pixels, args.rounds, device)
                ops = {name: aten_ops_per_forward(model, pixels) for name, (model, _) in models.items()}
                report(f"{shape_title(size)}, {dtype_name}, batch {batch_size}", models, times, peaks, batch_size, ops)
                if args.matmuls_alone:
                    speedup, mac_ratio = matmuls_alone(
                        models["vit"][0], models["freq"][0].config, batch_size, args.rounds, device
                    )
                    print(f"matrix products alone (ViT's linear layers at freq's token counts): {speedup:.2f}x against "
                          f"a MAC ratio of {mac_ratio:.2f}x, {100 * speedup / mac_ratio:.0f}%")
                if args.score_study:
                    study = exact_score_study(size, batch_size, dtype, args.rounds, device)
                    difference = study.pop("difference")
                    print("a reducing block's attention with the exact score, against eager over all queries at once "
                          f"(scores within {difference:.1e}): " + ", ".join(f"{name} {ratio:.2f}x"
                                                                            for name, ratio in study.items()))
                if args.compile:
                    for mode in args.compile_modes:
                        compiled = compiled_models(models, mode)
                        times, peaks = time_side_by_side(compiled, pixels, args.rounds, device)
                        report(f"  torch.compile (mode {mode}), {shape_title(size)}, {dtype_name}, batch {batch_size}: "
                               "against compiled ViT", compiled, times, peaks, batch_size)
            if args.training_memory:
                pixels = torch.randn(64, 3, SHAPES[size][4], SHAPES[size][4], device=device, dtype=dtype)
                vit_bytes = saved_activation_bytes(models["vit"][0], pixels)
                freq_bytes = saved_activation_bytes(models["freq"][0], pixels)
                print(f"\ntraining step, {shape_title(size)}, {dtype_name}, batch 64: activations kept for backward "
                      f"ViT {vit_bytes / 2**30:.2f} GiB, FreqViT {freq_bytes / 2**30:.2f} GiB "
                      f"(ratio {vit_bytes / freq_bytes:.2f}x)")


if __name__ == "__main__":
    main()
