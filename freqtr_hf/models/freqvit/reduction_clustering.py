"""Clustering-family reductions (K-Medoids, DPC-KNN) as plain functions on tensors.

Shapes: B batch, t tokens, C channels, k clusters.
"""

import torch


def pairwise_distances(tokens: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, t, t) between the tokens (B, t, C), computed in fp32: exactly symmetric, with an
    exactly zero diagonal.

    cdist's fast matrix-product form leaves rounding noise on the diagonal (~1e-2 on DeiT's tokens) and between
    d(i, j) and d(j, i); a two-token cluster's medoid is a tie, which that noise would break by the hardware's
    rounding, and the order of the nearest neighbours would put a token behind its neighbours."""
    tokens = tokens.float()
    distances = torch.cdist(tokens, tokens)
    distances = (distances + distances.transpose(1, 2)) / 2
    distances.diagonal(dim1=1, dim2=2).zero_()
    return distances


def k_medoids(distances: torch.Tensor, initial: torch.LongTensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A few k-medoids iterations from the initial medoids (B, k) on distances (B, t, t).

    Each token joins its nearest medoid; each cluster's medoid moves to the member with the least summed distance to
    the other members if that is less than the current medoid's (a tie keeps it, as in the usual alternating
    k-medoids). Returns the medoids (B, k) and every token's cluster (B, t), the nearest of those medoids.
    """
    medoids = initial
    num_clusters = medoids.shape[1]
    for _ in range(iterations + 1):
        assignment = assign_to_nearest(distances, medoids)
        membership = torch.nn.functional.one_hot(assignment, num_clusters).to(distances.dtype)  # (B, t, k)
        cost = distances @ membership  # summed distance of each token to each cluster's members
        cost = torch.where(membership > 0, cost, torch.inf)
        best_cost, best = cost.min(dim=1)
        current_cost = cost.gather(1, medoids[:, None, :]).squeeze(1)  # finite: a medoid is in its own cluster
        medoids = torch.where(best_cost < current_cost, best, medoids)
    return medoids, assign_to_nearest(distances, medoids)


def assign_to_nearest(distances: torch.Tensor, centres: torch.LongTensor) -> torch.LongTensor:
    """(B, t): for every token the cluster (0 … k-1) of the nearest of the centres (B, k); a centre is its own."""
    assignment = distances.gather(2, centres[:, None, :].expand(-1, distances.shape[1], -1)).argmin(dim=-1)
    return assignment.scatter(1, centres, torch.arange(centres.shape[1], device=centres.device).expand_as(centres))


def density_peak_centres(
    distances: torch.Tensor, num_clusters: int, neighbours: int
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """DPC-KNN: density from the k nearest neighbours, distance to the nearest denser token, centres where their
    product is highest; every other token joins its nearest centre.

    distances: (B, t, t). Returns the centres (B, k) and every token's cluster (B, t).
    """
    count = distances.shape[1]
    scale = distances.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    nearest = distances.topk(min(neighbours + 1, count), dim=-1, largest=False).values[..., 1:]
    density = (-(nearest / scale).pow(2).mean(dim=-1)).exp()
    density = density + 1e-6 * torch.linspace(1, 0, count, device=distances.device)  # break ties by position
    denser = density[:, None, :] > density[:, :, None]
    to_denser = torch.where(denser, distances, torch.inf).amin(dim=-1)
    to_denser = torch.where(torch.isinf(to_denser), distances.amax(dim=-1), to_denser)
    centres = (density * to_denser).topk(num_clusters, dim=-1).indices.sort(dim=-1).values
    return centres, assign_to_nearest(distances, centres)
