"""The figures and the short markdown report of `freqtr-hf analyze`, drawn from the report dict alone."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..fingerprint import slug  # noqa: E402
from ..runs import write_atomically, write_figure  # noqa: E402


NOISE_LABELS = {"clean": "clean", "lf": "LF noise", "random": "random noise", "hf": "HF noise"}


def _methods(report: dict) -> list[str]:
    return report["run"]["methods"]


def _colours(methods: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab10")
    return {method: palette(i % 10) for i, method in enumerate(methods)}


def _heatmap(ax, matrix, labels: list[str], title: str, vmin: float, vmax: float, cmap: str = "viridis") -> None:
    """A matrix as a heat map with its values written in the cells (blank where None)."""
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    size = 7 if len(labels) <= 8 else 5
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            shade = (value - vmin) / (vmax - vmin) if vmax > vmin else 0.5
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=size,
                    color="black" if shade > 0.6 else "white")


def _save(fig, output_dir: Path, name: str) -> str:
    fig.tight_layout()
    write_figure(fig, output_dir / name)
    plt.close(fig)
    return name


def amplitude_figure(report: dict, output_dir: Path) -> str:
    """Relative log amplitude at π per block: rows data sets, columns keep rates, one line per method."""
    names, rates, methods = list(report["log_amplitude"]), report["run"]["keep_rates"], _methods(report)
    colours = _colours(methods)
    fig, axes = plt.subplots(len(names), len(rates), figsize=(3.6 * len(rates), 2.8 * len(names)), squeeze=False,
                             sharey=True)
    for row, name in enumerate(names):
        section = report["log_amplitude"][name]
        for col, rate in enumerate(rates):
            ax = axes[row][col]
            blocks = range(1, len(section["none"]["at_pi"]) + 1)
            ax.plot(blocks, section["none"]["at_pi"], "k--", label="unreduced")
            for method in methods:
                ax.plot(blocks, section[f"{method}@{rate:g}"]["at_pi"], color=colours[method], label=method)
            ax.set_title(f"{name}, keep {rate:g}", fontsize=9)
            ax.set_xlabel("block")
            if col == 0:
                ax.set_ylabel("rel. log amplitude at π")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, output_dir, "log_amplitude.png")


def depth_map_figure(report: dict, output_dir: Path) -> str:
    """The mean leaving depth of every patch: rows methods, columns (data set, keep rate)."""
    names, rates, methods = list(report["depth_maps"]), report["run"]["keep_rates"], _methods(report)
    settings = [(name, rate) for name in names for rate in rates]
    num_layers = len(report["log_amplitude"][names[0]]["none"]["at_pi"])
    fig, axes = plt.subplots(len(methods), len(settings), figsize=(1.5 * len(settings) + 1, 1.5 * len(methods)),
                             squeeze=False)
    for row, method in enumerate(methods):
        for col, (name, rate) in enumerate(settings):
            ax = axes[row][col]
            image = ax.imshow(report["depth_maps"][name][f"{method}@{rate:g}"], vmin=1, vmax=num_layers,
                              cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{textwrap.fill(name.replace('_', ' '), 14)}\nkeep {rate:g}", fontsize=7)
            if col == 0:
                ax.set_ylabel(method, fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="mean depth a patch leaves at (block)")
    write_figure(fig, output_dir / "depth_maps.png")
    plt.close(fig)
    return "depth_maps.png"


def similarity_figure(report: dict, name: str, output_dir: Path) -> str:
    """Per keep rate: kept-set IoU (last stage), NMI of merging assignments (last stage), depth-map Pearson and
    CLS-feature CKA between the methods, with the numbers."""
    rates, methods = report["run"]["keep_rates"], _methods(report)
    maps = report["pattern_similarity"]["depth_maps"]
    fig, axes = plt.subplots(len(rates), 4, figsize=(17, 4.2 * len(rates)), squeeze=False)
    for row, rate in enumerate(rates):
        suffix = f"@{rate:g}"
        for col, key in enumerate(("iou", "nmi")):
            section = report["pattern_similarity"][key][name]
            picked = [i for i, label in enumerate(section["labels"]) if label.endswith(suffix)]
            labels = [section["labels"][i].split("@")[0] for i in picked]
            matrix = [[section["matrix"][-1][i][j] for j in picked] for i in picked] if section["matrix"] else []
            title = f"{'kept-set IoU' if key == 'iou' else 'assignment NMI'}, last stage, keep {rate:g}"
            if labels:
                _heatmap(axes[row][col], matrix, labels, title, 0, 1)
            else:
                axes[row][col].set_axis_off()
        picked = [maps["labels"].index(f"{name} {method}{suffix}") for method in methods]
        _heatmap(axes[row][2], [[maps["pearson"][i][j] for j in picked] for i in picked], methods,
                 f"depth-map Pearson, keep {rate:g}", -1, 1, cmap="coolwarm")
        cka = report["cka"][name]
        picked = [cka["labels"].index(label) for label in ["none", *(m + suffix for m in methods)]]
        _heatmap(axes[row][3], [[cka["matrix"][i][j] for j in picked] for i in picked], ["none", *methods],
                 f"CLS-feature linear CKA, keep {rate:g}", 0, 1)
    fig.suptitle(name)
    return _save(fig, output_dir, f"similarity_{slug(name)}.png")


def settings_figure(report: dict, output_dir: Path) -> str:
    """Per method, the depth-map Pearson correlation between its settings (data set × keep rate)."""
    names, rates, methods = list(report["depth_maps"]), report["run"]["keep_rates"], _methods(report)
    maps = report["pattern_similarity"]["depth_maps"]
    columns = min(4, len(methods))
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.set_axis_off()
    for ax, method in zip(axes.flat, methods):
        labels = [f"{name} {method}@{rate:g}" for name in names for rate in rates]
        picked = [maps["labels"].index(label) for label in labels]
        short = [f"{name.split('/')[0][:10]} {rate:g}" for name in names for rate in rates]
        _heatmap(ax, [[maps["pearson"][i][j] for j in picked] for i in picked], short, method, -1, 1,
                 cmap="coolwarm")
    return _save(fig, output_dir, "depth_map_settings.png")


def overlap_figure(report: dict, output_dir: Path) -> str:
    """IoU between the HF set and EViT's rule per reduction layer, with the chance level."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, rates in report["evit_hf_iou"].items():
        for rate, overlap in rates.items():
            line, = ax.plot(overlap["layers"], overlap["iou"], marker="o", label=f"{name}, keep {rate}")
            ax.plot(overlap["layers"], overlap["chance"], ":", color=line.get_color())
    ax.set_xlabel("reduction layer (0-based block)")
    ax.set_ylabel("IoU (dotted: chance)")
    ax.set_title("HF set vs EViT's top-k by CLS attention", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, output_dir, "evit_hf_iou.png")


def noise_figure(report: dict, output_dir: Path) -> str:
    """Accuracy of the unreduced model, clean and with noise on each token set, per data set."""
    noise, settings = report["noise_test"], report["run"]["noise"]
    names = list(noise)
    fig, ax = plt.subplots(figsize=(1.8 + 2.4 * len(names), 3.4))
    width = 0.8 / len(NOISE_LABELS)
    for i, (key, text) in enumerate(NOISE_LABELS.items()):
        values = [100 * (noise[n][key]["top1"] if noise[n][key]["top1"] is not None else noise[n][key]["agreement"])
                  for n in names]
        bars = ax.bar(np.arange(len(names)) + (i - 1.5) * width, values, width, label=text)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("top-1 % (agreement where unlabelled)")
    ax.set_title(f"noise on {100 * settings['fraction']:g}% of the tokens, σ = {settings['scale']:g}× token std, "
                 f"after blocks {settings['layers']}", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, output_dir, "noise_test.png")


def accuracy_figure(report: dict, output_dir: Path) -> str:
    """Top-1 (agreement where unlabelled) against GMACs, one line per method over the keep rates."""
    names, rates, methods = list(report["accuracy"]), report["run"]["keep_rates"], _methods(report)
    colours = _colours(methods)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        accuracy = report["accuracy"][name]
        key = "top1" if accuracy["none"]["top1"] is not None else "agreement"
        ax.plot(accuracy["none"]["gmacs"], 100 * accuracy["none"][key], "k*", markersize=10, label="unreduced")
        for method in methods:
            points = sorted((accuracy[f"{method}@{r:g}"]["gmacs"], 100 * accuracy[f"{method}@{r:g}"][key])
                            for r in rates)
            ax.plot(*zip(*points), marker="o", color=colours[method], label=method)
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel("top-1 %" if key == "top1" else "agreement with unreduced %")
        ax.set_title(name, fontsize=9)
    axes[0][-1].legend(fontsize=7)
    return _save(fig, output_dir, "accuracy_gmacs.png")


def collapse_figure(report: dict, output_dir: Path) -> str:
    """Similarity of each block to the last (collapse proxy) and, for freq, the sets' similarity to the DC signal."""
    names, methods = list(report["last_layer_similarity"]), _methods(report)
    rate = 0.7 if 0.7 in report["run"]["keep_rates"] else report["run"]["keep_rates"][0]
    colours = _colours(methods)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, style in zip(names, ("-", "--", ":", "-.")):
        section = report["last_layer_similarity"][name]
        blocks = range(1, len(section["none"]) + 1)
        axes[0].plot(blocks, section["none"], style, color="black", label=f"unreduced ({name})")
        for method in methods:
            axes[0].plot(blocks, section[f"{method}@{rate:g}"], style, color=colours[method],
                         label=method if name == names[0] else None)
        for rate_key, sets in report["dc_similarity"][name].items():
            for key, colour in (("hf", "tab:red"), ("lf", "tab:blue"), ("dc", "tab:green")):
                axes[1].plot(sets["layers"], sets[key], style, marker="o", color=colour, alpha=0.4 + 0.2 * (
                    float(rate_key) >= rate), label=f"{key.upper()}" if name == names[0] and rate_key == f"{rate:g}"
                    else None)
    axes[0].set_xlabel("block")
    axes[0].set_ylabel("cosine similarity to the last block")
    axes[0].set_title(f"collapse proxy, keep {rate:g}", fontsize=9)
    axes[0].legend(fontsize=6)
    axes[1].set_xlabel("reduction layer (0-based block)")
    axes[1].set_ylabel("cosine similarity to the mean token")
    axes[1].set_title("freq: HF / LF / DC sets vs the DC signal (all keep rates)", fontsize=9)
    axes[1].legend(fontsize=7)
    return _save(fig, output_dir, "collapse.png")


def correlation_figure(report: dict, output_dir: Path) -> str:
    """Each method's depth-map correlation with the reference against its top-1 difference to it."""
    references = list(report["correlations"])
    fig, axes = plt.subplots(1, max(1, len(references)), figsize=(4.6 * max(1, len(references)), 3.6),
                             squeeze=False)
    colours = _colours(_methods(report))
    for ax, reference in zip(axes[0], references):
        for point in report["correlations"][reference]["points"]:
            similarity = point["similarity"]["pearson"]
            if similarity is not None:
                ax.scatter(similarity, 100 * point["difference"], color=colours[point["model"].split("@")[0]], s=14)
        for method in _methods(report):
            ax.scatter([], [], color=colours[method], label=method, s=14)
        rho = report["correlations"][reference]["measures"]["pearson"]["absolute"]["spearman"]
        ax.set_title(f"vs {reference}: Spearman with |difference| "
                     f"{'n/a' if rho is None else f'{rho:+.2f}'}", fontsize=9)
        ax.set_xlabel(f"depth-map Pearson with {reference}")
        ax.set_ylabel(f"top-1 − {reference} top-1 (points)")
        ax.axhline(0, color="grey", lw=0.5)
    if references:  # none when the run has no reference method (Top-K, K-Medoids) to compare with
        axes[0][-1].legend(fontsize=6)
    return _save(fig, output_dir, "correlations.png")


def write_figures(report: dict, output_dir: Path) -> dict[str, str]:
    """Every figure as a PNG in `output_dir`; returns {analysis: file name}."""
    output_dir = Path(output_dir)
    figures = {
        "accuracy": accuracy_figure(report, output_dir),
        "log_amplitude": amplitude_figure(report, output_dir),
        "noise_test": noise_figure(report, output_dir),
        "collapse": collapse_figure(report, output_dir),
        "depth_maps": depth_map_figure(report, output_dir),
        "depth_map_settings": settings_figure(report, output_dir),
        "correlations": correlation_figure(report, output_dir),
    }
    if any(report["evit_hf_iou"].values()):
        figures["evit_hf_iou"] = overlap_figure(report, output_dir)
    for name in report["accuracy"]:
        figures[f"similarity {name}"] = similarity_figure(report, name, output_dir)
    return figures


CAPTIONS = {
    "accuracy": "Top-1 against GMACs per method over the keep rates.",
    "log_amplitude": "Relative log amplitude at π of the block outputs (restored to the patch grid).",
    "noise_test": "Noise on the HF vs the LF tokens of the unreduced model.",
    "collapse": "Similarity of each block to the last block, and of freq's HF/LF/DC sets to the mean token.",
    "evit_hf_iou": "IoU between freq's HF set and the set EViT's rule would keep, from the same attention.",
    "depth_maps": "Mean depth (block) at which each patch leaves; the number of blocks (12 in DeiT) = survives.",
    "depth_map_settings": "Per method, depth-map Pearson correlation between data sets and keep rates.",
    "correlations": "Pattern similarity to the reference against the top-1 difference to it.",
}


def write_markdown(report: dict, figures: dict[str, str], output_dir: Path) -> Path:
    """`report.md`: the run, the findings table, the accuracy table and the figures."""
    run = report["run"]
    data = ", ".join(f"`{name}` ({info['images']} images)" for name, info in run["data"].items())
    lines = [
        "# Token-reduction analysis",
        "",
        f"Model `{run['model']}`; data {data}; methods {', '.join(run['methods'])}; keep rates "
        f"{', '.join(f'{r:g}' for r in run['keep_rates'])}; reduction after blocks {run['reduction_layers']} "
        f"(0-based); {run['device']}."
        + (f" `freq` runs with the `{run['freq_preset']}` preset." if run.get("freq_preset", "paper") != "paper" else ""),
        "",
        "## Findings",
        "",
        "| finding | holds here | numbers |",
        "|---|---|---|",
    ]
    for item in report["findings"]:
        holds = {True: "yes", False: "**no**", None: "n/a"}[item["holds"]]
        lines.append(f"| {item['finding']} | {holds} | {item['numbers']} |")
    lines += ["", "## Accuracy", ""]
    for name, section in report["accuracy"].items():
        lines += [f"`{name}`:", "", "| model | top-1 % | agreement % | GMACs |", "|---|---|---|---|"]
        for label, scores in section.items():
            top1 = "–" if scores["top1"] is None else f"{100 * scores['top1']:.1f}"
            lines.append(f"| {label} | {top1} | {100 * scores['agreement']:.1f} | {scores['gmacs']:.2f} |")
        lines.append("")
    lines += ["## Figures", ""]
    for key, file_name in figures.items():
        caption = CAPTIONS.get(key, "Similarity matrices (last stage for IoU/NMI) per keep rate: "
                                    + key.split(" ", 1)[-1] + ".")
        lines += [f"![{key}]({file_name})", "", caption, ""]
    path = Path(output_dir) / "report.md"
    write_atomically(path, "\n".join(lines))
    return path
