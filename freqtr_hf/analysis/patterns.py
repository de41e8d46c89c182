"""The reduction-pattern metrics of "Which Tokens to Use?" (Haurum et al., ICCV 2023 workshops), computed from the
`TokenProvenance` every method reports.

Shapes: B images, P original patches (row-major on the patch grid), N images in a feature matrix, C channels.
"""

import numpy as np
import torch
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import normalized_mutual_info_score

from ..models.freqvit.token_state import TokenProvenance


def owns_token(patch_to_token: torch.LongTensor) -> torch.BoolTensor:
    """(B, P) -> (B, P): the patches that are still a token of their own, i.e. carried by a token that carries no
    other patch. A dropped patch, or one merged with others (DC token, fused token, cluster), is not."""
    carried = patch_to_token >= 0
    index = patch_to_token.clamp_min(0)
    counts = torch.zeros(patch_to_token.shape[0], int(index.max()) + 1, dtype=torch.long, device=index.device)
    counts.scatter_add_(1, index, carried.long())
    return carried & (counts.gather(1, index) == 1)


def departure_depth(provenance: tuple[TokenProvenance, ...], num_layers: int, num_patches: int) -> torch.Tensor:
    """(B, P) float: the depth at which every patch leaves the sequence, as a 1-based block number (a patch reduced
    after block `layer` (0-based) leaves at `layer + 1`), or `num_layers` if it is still a token of its own at the
    end. Pruned patches leave when dropped; merged patches leave when merged with others (see `owns_token`)."""
    if not provenance:
        raise ValueError("departure_depth: the model reported no reduction stage (method 'none'?)")
    batch = provenance[0].patch_to_token.shape[0]
    device = provenance[0].patch_to_token.device
    depth = torch.full((batch, num_patches), float(num_layers), device=device)
    present = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    for stage in provenance:
        stays = owns_token(stage.patch_to_token)
        depth = torch.where(present & ~stays, float(stage.layer + 1), depth)
        present &= stays
    return depth


def set_iou(first: torch.BoolTensor, second: torch.BoolTensor) -> torch.Tensor:
    """Per row, the intersection over union of two sets given as masks (B, P) -> (B,); two empty sets give 1."""
    intersection = (first & second).sum(-1).float()
    union = (first | second).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), 1.0)


def assignment_nmi(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per row, the normalised mutual information (arithmetic normalisation, scikit-learn's default) of two
    assignments of the same patches to tokens: (B, P) labels -> (B,). Dropped patches (-1) form one group."""
    return np.array([normalized_mutual_info_score(a, b) for a, b in zip(first, second)])


def compare_maps(first: np.ndarray, second: np.ndarray) -> dict[str, float | None]:
    """How alike two non-negative maps (e.g. 14×14 depth maps) are: Pearson and Spearman correlation of their
    values, and, of the maps normalised to sum 1, the Jensen–Shannon divergence (base 2, in [0, 1]) and the
    histogram intersection `Σ min(p, q)` (1 for equal maps). A correlation with a constant map is None."""
    a, b = np.asarray(first, dtype=np.float64).ravel(), np.asarray(second, dtype=np.float64).ravel()
    if a.min() < 0 or b.min() < 0 or a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("compare_maps: the maps must be non-negative with a positive sum")
    p, q = a / a.sum(), b / b.sum()
    constant = np.ptp(a) == 0 or np.ptp(b) == 0
    return {
        "pearson": None if constant else float(stats.pearsonr(a, b).statistic),
        "spearman": None if constant else float(stats.spearmanr(a, b).statistic),
        "js_divergence": float(jensenshannon(p, q, base=2) ** 2),
        "histogram_intersection": float(np.minimum(p, q).sum()),
    }


def linear_cka(first: np.ndarray, second: np.ndarray) -> float:
    """Linear centred kernel alignment of two feature matrices of the same N examples, (N, C1) and (N, C2):
    `‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)` on column-centred features (Kornblith et al., 2019). 1 for equal features, and
    invariant to orthogonal transforms and isotropic scaling of either."""
    x = np.asarray(first, dtype=np.float64)
    y = np.asarray(second, dtype=np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"linear_cka: need the same N >= 2 examples, got {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def rank_correlations(x: list[float], y: list[float]) -> dict[str, float | int | None]:
    """Spearman's ρ and Kendall's τ (with their two-sided p-values) between paired values, as the study
    correlates pattern similarity with accuracy difference. None where fewer than 3 pairs or a constant side."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"rank_correlations: {n} x values but {len(y)} y values")
    result = {"n": n, "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return result
    spearman, kendall = stats.spearmanr(x, y), stats.kendalltau(x, y)
    result.update(
        spearman=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
        kendall=float(kendall.statistic),
        kendall_p=float(kendall.pvalue),
    )
    return result
