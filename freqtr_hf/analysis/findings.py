"""The verdicts on the two papers' claims, each a sentence, whether it holds, and the numbers it rests on."""



from ..models.freqvit.token_schedule import MERGING_METHODS




def _headline_rate(keep_rates: list[float]) -> float:
    """The keep rate the findings quote: 0.7 (the papers' main setting) when analysed, else the median."""
    return 0.7 if 0.7 in keep_rates else sorted(keep_rates)[len(keep_rates) // 2]


def _finding(text: str, holds: bool | None, numbers: str) -> dict:
    return {"finding": text, "holds": holds, "numbers": numbers}


def amplitude_findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """High-frequency amplitude falls with depth (unreduced model), and the frequency-aware method keeps more of it
    at the last block than the other methods."""
    falls, numbers = [], []
    for name in names:
        at_pi = report["log_amplitude"][name]["none"]["at_pi"]
        falls.append(at_pi[-1] < at_pi[0])
        numbers.append(f"{name}: {at_pi[0]:.2f} (block 1) -> {max(at_pi):.2f} (max) -> {at_pi[-1]:.2f} (block "
                       f"{len(at_pi)})")
    result = [_finding("High-frequency log amplitude (at π) of the unreduced model falls with depth", all(falls),
                       "; ".join(numbers))]
    rate = _headline_rate(keep_rates)
    last = {name: {m: report["log_amplitude"][name][f"{m}@{rate:g}"]["at_pi"][-1] for m in methods}
            for name in names}
    numbers = [f"{name}: " + ", ".join(f"{m} {v:.2f}" for m, v in sorted(values.items(), key=lambda kv: -kv[1]))
               + f" (unreduced {report['log_amplitude'][name]['none']['at_pi'][-1]:.2f})"
               for name, values in last.items()]
    holds = all(max(values, key=values.get) == "freq" for values in last.values()) if "freq" in methods else None
    result.append(_finding(f"Methods differ in it: freq keeps the most high-frequency amplitude at the last block "
                           f"(keep {rate:g})", holds, "; ".join(numbers)))
    return result


def noise_finding(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Noise on the high-frequency tokens costs more accuracy than the same noise on the low-frequency ones."""
    holds, numbers = [], []
    for name in names:
        scores = report["noise_test"][name]
        key = "top1" if scores["clean"]["top1"] is not None else "agreement"
        holds.append(scores["hf"][key] < scores["lf"][key])
        numbers.append(f"{name} {key}: clean {100 * scores['clean'][key]:.1f}, HF noise {100 * scores['hf'][key]:.1f},"
                       f" LF noise {100 * scores['lf'][key]:.1f}, random {100 * scores['random'][key]:.1f}")
    noise = report["run"]["noise"]
    text = (f"High-frequency tokens matter more than low-frequency ones under noise ({100 * noise['fraction']:g}% of "
            f"the tokens each, σ = {noise['scale']:g}× the token std, after blocks {noise['layers']})")
    return [_finding(text, all(holds), "; ".join(numbers))]


def overlap_finding(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """EViT's kept set and the high-frequency set converge with depth: their IoU grows from layer to layer."""
    if "freq" not in methods:
        return [_finding("EViT's and the HF sets converge with depth", None, "freq was not analysed")]
    holds, numbers = [], []
    for name in names:
        for rate, overlap in report["evit_hf_iou"][name].items():
            holds.append(all(b > a for a, b in zip(overlap["iou"], overlap["iou"][1:])))
            numbers.append(f"{name} keep {rate}: " + " -> ".join(f"{v:.2f}" for v in overlap["iou"])
                           + " (chance " + " -> ".join(f"{v:.2f}" for v in overlap["chance"]) + ")")
    return [_finding("EViT's kept set and the HF set converge with depth (IoU rises at every reduction layer)",
                     all(holds), "; ".join(numbers))]


def _ranking(report: dict, name: str, methods: list[str], rate: float) -> tuple[str, list[str]]:
    accuracy = report["accuracy"][name]
    key = "top1" if accuracy["none"]["top1"] is not None else "agreement"
    return key, sorted(methods, key=lambda m: -accuracy[f"{m}@{rate:g}"][key])


def accuracy_findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Top-K is in the top 3 in most settings; pruning beats (hard) merging."""
    result = []
    if "topk" in methods:
        places = {(name, rate): _ranking(report, name, methods, rate)[1].index("topk") + 1
                  for name in names for rate in keep_rates}
        share = sum(place <= 3 for place in places.values()) / len(places)
        result.append(_finding(
            f"Top-K is a strong baseline (in the top 3 of {len(methods)} methods in most settings)", share > 0.5,
            f"top 3 in {100 * share:.0f}% of {len(places)} settings; places: "
            + ", ".join(f"{name} {rate:g}: {place}" for (name, rate), place in places.items())))
    pruning = [m for m in methods if m in ("topk", "evit", "ats", "radial")]
    merging = [m for m in methods if m in MERGING_METHODS]
    if pruning and merging:
        gaps = []
        for name in names:
            for rate in keep_rates:
                key, _ = _ranking(report, name, methods, rate)
                best = {family: max(report["accuracy"][name][f"{m}@{rate:g}"][key] for m in family)
                        for family in (tuple(pruning), tuple(merging))}
                gaps.append((name, rate, 100 * (best[tuple(pruning)] - best[tuple(merging)])))
        wins = sum(gap > 0 for *_, gap in gaps)
        result.append(_finding(
            f"Pruning ({', '.join(pruning)}) beats merging ({', '.join(merging)}): best of each family",
            wins > len(gaps) / 2,
            f"pruning ahead in {wins} of {len(gaps)} settings; best pruning − best merging, points: "
            + ", ".join(f"{name} {rate:g}: {gap:+.1f}" for name, rate, gap in gaps)))
    return result


def pattern_findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Patterns depend on the keep rate more than on the data; similarity to Top-K / K-Medoids predicts accuracy."""
    dependence = report["pattern_similarity"]["depth_maps"]["dependence"]
    data, rates = dependence["across_data"], dependence["across_keep_rates"]
    result = []
    if data["pairs"] and rates["pairs"] and data["pearson"] is not None and rates["pearson"] is not None:
        result.append(_finding(
            "Reduction patterns depend on the keep rate more than on the data (depth maps)",
            data["pearson"] > rates["pearson"] and data["js_divergence"] < rates["js_divergence"],
            f"mean Pearson between data sets {data['pearson']:.3f} vs between keep rates {rates['pearson']:.3f}; "
            f"JS divergence {data['js_divergence']:.4f} vs {rates['js_divergence']:.4f}"))
    for reference, section in report["correlations"].items():
        measures = section["measures"]
        numbers = []
        for measure in ("pearson", "cka", "iou", "nmi"):
            value = measures[measure]["absolute"]
            if value["spearman"] is not None:
                numbers.append(f"{measure}: Spearman {value['spearman']:+.2f} (p {value['spearman_p']:.2g}), "
                               f"Kendall {value['kendall']:+.2f}, n {value['n']}")
        headline = measures["pearson"]["absolute"]["spearman"]
        result.append(_finding(
            f"Pattern similarity to {reference} predicts accuracy (more similar depth maps, smaller |top-1 "
            "difference|: Spearman ≤ −0.4)",
            None if headline is None else headline <= -0.4, "; ".join(numbers)))
    return result


FINDINGS = (amplitude_findings, noise_finding, overlap_finding, accuracy_findings, pattern_findings)


def findings(report: dict, names: list[str], methods: list[str], keep_rates: list[float]) -> list[dict]:
    """Each finding of the two papers: whether it holds in this run, and the numbers that decide it."""
    return [item for check in FINDINGS for item in check(report, names, methods, keep_rates)]
