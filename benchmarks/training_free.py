"""The training-free frequency-aware model against every training-free baseline, at equal MACs, and the ablation
that led to `freqtr_hf.TRAINING_FREE_FREQ`: top-1 and agreement with the unreduced model, per data set and keep rate.

    python benchmarks/training_free.py [--table ablation comparison] [--keep-rates 0.9 0.7 0.5]
        [--model ../shared/assets/deit-tiny-patch16-224]
        [--data ../shared/assets/imagenette/val ../shared/assets/imagewoof_train_sample] [--every 4 1]
        [--output benchmarks/training_free.json]

Every model of a data set (all keep rates, all rows) runs on each batch in turn, beside one unreduced reference.
The ablation switches each option of `TRAINING_FREE_FREQ` on alone, then all together; the comparison puts the
preset beside `topk`, `evit`, `tome` per stage and per layer (`tome_r` at the r whose GMACs match, see
`benchmarks/methods.py`), `kmedoids`, `ats` and the paper's `freq`. A table cell reads `top-1 / agreement` (%); the
best of a column is starred (what the goal asks of the preset); a column's header gives the range of its rows' GMACs
(`freq` carries its w² DC tokens and EViT its fused token: up to 1.5% above Top-K's).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoImageProcessor

sys.path.insert(0, str(Path(__file__).parent))
from methods import add_shared_data_arguments, matched_tome_r  # noqa: E402

from freqtr_hf import TRAINING_FREE_FREQ  # noqa: E402
from freqtr_hf.evaluation import build_models, compare_methods, label_mapping, load_images  # noqa: E402


# each option of the preset alone, then together; one more row: the preset with the paper's attention-free score
ABLATION = {
    "freq (paper)": {},
    "+ proportional attention": {"proportional_attention": True},
    "+ nearest merge": {"low_frequency_merge": "nearest"},
    "+ nearest merge on keys, proportional attention": {
        "low_frequency_merge": "nearest", "merge_features": "keys", "proportional_attention": True,
    },
    "TRAINING_FREE_FREQ": TRAINING_FREE_FREQ,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_data_arguments(parser, keep_rates=[0.9, 0.7, 0.5])
    parser.add_argument("--table", nargs="+", choices=["ablation", "comparison"], default=["ablation", "comparison"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", help="write all rows as JSON here")
    args = parser.parse_args()
    if len(args.every) != len(args.data):
        parser.error("--every: give one value per --data")

    processor = AutoImageProcessor.from_pretrained(args.model)
    rows = []
    for data, every in zip(args.data, args.every):
        dataset = load_images(data, every=every)
        models = {"none": build_models(args.model, [], 1.0)["none"]}
        for table in args.table:
            for keep_rate in args.keep_rates:
                models |= {(table, name, keep_rate): model
                           for name, model in table_models(args.model, table, keep_rate).items()}
        labels = label_mapping(dataset.features["label"].names, models["none"].config.id2label, args.synsets)
        results, _ = compare_methods(models, dataset, processor, labels, batch_size=args.batch_size)
        data_rows = [
            {"data": data, "images": len(dataset), "table": key[0], "row": key[1], "keep_rate": key[2],
             "top1": result.top1, "agreement": result.agreement, "gmacs": result.gmacs}
            for key, result in zip(models, results) if key != "none"
        ]
        unreduced = results[0]
        for table in args.table:
            print(f"\n{table}: {data}, {len(dataset)} images; unreduced top-1 {100 * unreduced.top1:.1f} "
                  f"({unreduced.gmacs:.2f} GMACs); cells: top-1 / agreement with unreduced (%)")
            print(format_grid([row for row in data_rows if row["table"] == table], args.keep_rates), flush=True)
        rows += data_rows
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
