"""Top-1 accuracy against labels and agreement with a reference model's predictions, as an `evaluate` metric.

Shipped as a local script because `evaluate.load("accuracy")` fetches its script from the Hub.
"""

import datasets
import evaluate


class Top1Agreement(evaluate.Metric):
    """`compute(predictions=..., references=..., reference_predictions=...)`: references may be -1 (unknown)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Top-1 accuracy on labelled examples and agreement with a reference model's predictions.",
            citation="",
            inputs_description="predictions, references (-1 where unknown) and reference_predictions: int lists",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "reference_predictions": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, reference_predictions) -> dict:
        labelled = [(p, r) for p, r in zip(predictions, references) if r >= 0]
        agreement = sum(p == q for p, q in zip(predictions, reference_predictions)) / max(len(predictions), 1)
        result = {"agreement": agreement, "num_labelled": len(labelled)}
        if labelled:
            result["top1"] = sum(p == r for p, r in labelled) / len(labelled)
        return result
