"""The training-free frequency-aware model against every training-free baseline, at equal MACs, and the ablation
that led to `freqtr_hf.TRAINING_FREE_FREQ`: top-1 and agreement with the unreduced model, per data set and keep rate.

    python benchmarks/training_free.py [--table ablation comparison] [--keep-rates 0.9 0.7 0.5]
        [--model ../shared/assets/deit-tiny-patch16-224]
        [--data ../shared/assets/imagenette/val ../shared/assets/imagewoof_train_sample] [--every 4 1]
        [--state-dir runs/training_free] [--restart] [--output benchmarks/training_free.json]

Every model of a data set (all keep rates, all rows) runs on each batch in turn, beside one unreduced reference.
The ablation switches each option of `TRAINING_FREE_FREQ` on alone, then all together; the comparison puts the
preset beside `topk`, `evit`, `tome` per stage and per layer (`tome_r` at the r whose GMACs match, see
`benchmarks/methods.py`), `kmedoids`, `ats` and the paper's `freq`. A table cell reads `top-1 / agreement` (%); the
best of a column is starred (what the goal asks of the preset); a column's header gives the range of its rows' GMACs
(`freq` carries its w² DC tokens and EViT its fused token: up to 1.5% above Top-K's).

Below the comparison, the preset against the best other method of each column, image by image: on how many images
only one of the two is right (agrees), and the two-sided exact McNemar p-value of that split (a binomial test of
the discordant images), so a gap of a few images is not read as a difference. A best top-1 at or above the
unreduced model's is named as such: agreeing with the unreduced model on every image would not beat it.

Progress is saved after every batch in `--state-dir` (one file per data set, named after its path); an interrupted run resumes there, and
a state of another run (other rows, weights or images) is refused by name.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoImageProcessor

sys.path.insert(0, str(Path(__file__).parent))
from methods import add_shared_data_arguments, check_shared_data_arguments, matched_tome_r  # noqa: E402

from freqtr_hf import TRAINING_FREE_FREQ  # noqa: E402
from freqtr_hf.fingerprint import slug  # noqa: E402
from freqtr_hf.data import label_mapping, label_names, load_images  # noqa: E402
from freqtr_hf.evaluation import EvaluationState, build_models, compare_methods, run_fingerprint  # noqa: E402
from freqtr_hf.runs import BENCHMARK_KIND, check_output_file, write_json  # noqa: E402
from freqtr_hf.cli import positive_int  # noqa: E402


# each option of the preset alone, then together (and all but the last one added); then the preset with one choice
# changed (features, score)
ABLATION = {
    "freq (paper)": {},
    "+ proportional attention": {"proportional_attention": True},
    "+ proportional attention, DC keys size^0.5": {"proportional_attention": True, "dc_key_weight_exponent": 0.5},
    "+ nearest merge": {"low_frequency_merge": "nearest"},
    "+ nearest merge, proportional attention": {"low_frequency_merge": "nearest", "proportional_attention": True},
    "+ redundancy pool 0.25": {"low_frequency_pool": 0.25},
    "TRAINING_FREE_FREQ without the redundancy pool": {**TRAINING_FREE_FREQ, "low_frequency_pool": 0.0},
    "TRAINING_FREE_FREQ": TRAINING_FREE_FREQ,
    "TRAINING_FREE_FREQ, merged on keys": {**TRAINING_FREE_FREQ, "merge_features": "keys"},
    "TRAINING_FREE_FREQ, logit scores": {**TRAINING_FREE_FREQ, "score_source": "logits"},
}
BASELINES = ("topk", "evit", "tome", "kmedoids", "ats")


def table_models(model: str, table: str, keep_rate: float) -> dict[str, torch.nn.Module]:
    """The reduced models of one table at one keep rate, by row name."""
    if table == "ablation":
        return {row: build_models(model, ["freq"], keep_rate, overrides=fields)["freq"]
                for row, fields in ABLATION.items()}
    models = {method: build_models(model, [method], keep_rate)[method] for method in BASELINES}
    tome_r = matched_tome_r(model, keep_rate)
    if tome_r is not None:
        models["tome per layer"] = build_models(model, ["tome"], keep_rate, overrides={"tome_r": tome_r})["tome"]
    models["freq (paper)"] = build_models(model, ["freq"], keep_rate)["freq"]
    models["TRAINING_FREE_FREQ"] = build_models(model, ["freq"], keep_rate, overrides=TRAINING_FREE_FREQ)["freq"]
    return models


def format_grid(rows: list[dict], keep_rates: list[float]) -> str:
    """One line per row name, one `top-1 / agreement` column per keep rate (with GMACs); the best top-1 and the best
    agreement of each column starred."""
    names = list(dict.fromkeys(row["row"] for row in rows))
    cell = {(row["row"], row["keep_rate"]): row for row in rows}
    best = {(keep, key): max(r[key] for r in rows if r["keep_rate"] == keep) for keep in keep_rates
            for key in ("top1", "agreement")}
    gmacs = {keep: [r["gmacs"] for r in rows if r["keep_rate"] == keep] for keep in keep_rates}
    spans = {keep: sorted({f"{min(g):.2f}", f"{max(g):.2f}"}) for keep, g in gmacs.items()}
    header = f"| {'method':<48} |" + "".join(f" keep {keep} ({'–'.join(spans[keep])} GMACs) |" for keep in keep_rates)
    lines = [header, "|" + "---|" * (len(keep_rates) + 1)]
    for name in names:
        line = f"| {name:<48} |"
        for keep in keep_rates:
            row = cell.get((name, keep))
            if row is None:
                line += " – |"
                continue
            marks = ["*" if row[key] == best[(keep, key)] else "" for key in ("top1", "agreement")]
            line += f" {100 * row['top1']:.1f}{marks[0]} / {100 * row['agreement']:.1f}{marks[1]} |"
        lines.append(line)
    return "\n".join(lines)


def paired_test(first: list[bool], second: list[bool]) -> tuple[int, int, float]:
    """Images where only the first is right, where only the second is, and the two-sided exact McNemar p-value of
    that split (1.0 when the two never differ)."""
    from scipy.stats import binomtest

    only_first = sum(a and not b for a, b in zip(first, second))
    only_second = sum(b and not a for a, b in zip(first, second))
    if only_first + only_second == 0:
        return 0, 0, 1.0
    return only_first, only_second, binomtest(only_first, only_first + only_second).pvalue


def images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def preset_against_best(rows: list[dict], state: EvaluationState, keep_rates: list[float]) -> str:
    """For every keep rate and measure (top-1, agreement), the preset against the best other comparison row, image by
    image (see `paired_test`)."""
    reference = state.predictions["none"]
    lines = []
    for keep in keep_rates:
        column = [row for row in rows if row["table"] == "comparison" and row["keep_rate"] == keep]
        preset = next(row for row in column if row["row"] == "TRAINING_FREE_FREQ")
        for key, truth, name, verb in (("top1", state.labels, "top-1", "right"),
                                       ("agreement", reference, "agreement", "agrees")):
            best = max((row for row in column if row is not preset), key=lambda row: row[key])
            right = {r["row"]: [p == t for p, t in zip(state.predictions[r["key"]], truth)] for r in (preset, best)}
            only_preset, only_best, p_value = paired_test(right[preset["row"]], right[best["row"]])
            line = (
                f"keep {keep} {name}: preset {100 * preset[key]:.1f} vs {best['row']} {100 * best[key]:.1f}; "
                f"only the preset {verb} on {images(only_preset)}, only {best['row']} on {images(only_best)}: "
                f"McNemar p = {p_value:.2g}"
            )
            if key == "top1" and best["top1"] >= best["unreduced_top1"]:
                # its disagreements with the unreduced model happen to be right more often than wrong
                line += (f"; {best['row']} is at or above the unreduced model's {100 * best['unreduced_top1']:.1f}, "
                         "which a model agreeing with it on every image would not beat")
            lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_data_arguments(parser, keep_rates=[0.9, 0.7, 0.5])
    parser.add_argument("--table", nargs="+", choices=["ablation", "comparison"], default=["ablation", "comparison"])
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--state-dir", default="runs/training_free", help="progress, one file per data set")
    parser.add_argument("--restart", action="store_true", help="ignore saved progress and start afresh")
    parser.add_argument("--output", help="write all rows as JSON here")
    args = parser.parse_args()
    if args.output:  # before any work: never a file this project did not write
        check_output_file(args.output, "--output", BENCHMARK_KIND)
    check_shared_data_arguments(parser, args)

    processor = AutoImageProcessor.from_pretrained(args.model)
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for data, every in zip(args.data, args.every):
        dataset = load_images(data, every=every)
        models = {"none": build_models(args.model, [], 1.0)["none"]}
        for table in args.table:
            for keep_rate in args.keep_rates:
                models |= {f"{table}|{name}|{keep_rate}": model
                           for name, model in table_models(args.model, table, keep_rate).items()}
        labels = label_mapping(label_names(dataset), models["none"].config.id2label, args.synsets)
        fingerprint = run_fingerprint(args.model, models, dataset, data, every=every, synsets=args.synsets,
                                      batch_size=args.batch_size, tables=args.table, keep_rates=args.keep_rates)
        state_file = str(Path(args.state_dir) / f"{slug(str(Path(data).resolve()).strip('/'))}.json")
        try:
            results, _ = compare_methods(models, dataset, processor, labels, batch_size=args.batch_size,
                                         state_file=state_file, fingerprint=fingerprint, restart=args.restart)
        except ValueError as error:  # a state of another run, or a damaged one: named, with what to do
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        unreduced = results[0]
        data_rows = []
        for key, result in zip(models, results):
            if key == "none":
                continue
            table, row, keep_rate = key.split("|")
            data_rows.append({"data": data, "images": len(dataset), "table": table, "row": row, "key": key,
                              "keep_rate": float(keep_rate), "top1": result.top1, "agreement": result.agreement,
                              "gmacs": result.gmacs, "unreduced_top1": unreduced.top1})
        for table in args.table:
            print(f"\n{table}: {data}, {len(dataset)} images; unreduced top-1 {100 * unreduced.top1:.1f} "
                  f"({unreduced.gmacs:.2f} GMACs); cells: top-1 / agreement with unreduced (%)")
            print(format_grid([row for row in data_rows if row["table"] == table], args.keep_rates), flush=True)
        if "comparison" in args.table:
            state = EvaluationState.load(state_file, fingerprint, list(models), len(dataset))
            print(f"\nthe preset against the best other method, image by image ({data}):")
            print(preset_against_best(data_rows, state, args.keep_rates), flush=True)
        rows += data_rows
    if args.output:
        write_json(args.output, {"rows": rows}, BENCHMARK_KIND)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: run the same command again to resume from the progress saved in --state-dir")
