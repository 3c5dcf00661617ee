"""Metrics the project reports: coverage of the real data by selected demonstrations, and distances between
real and synthetic embedding distributions (MMD², Wasserstein-1, sliced Wasserstein), vocabulary, duplicates.
"""

from __future__ import annotations

import hashlib

import numpy as np

# ------------------------------------------------------------------------------------- coverage (selection)
# Rows per chunk of the real×real distance pass in knn_radii: bounds its scratch to CHUNK × N floats.
_COVERAGE_CHUNK_ROWS = 2048
# Squared distances within this of a squared k-NN radius count as on the ball: two float64 roundings of one
# squared distance differ by ~1e-16.
_BALL_SLACK = 1e-9


def tsne_map(embeddings: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of the embeddings (scikit-learn, PCA init, seeded): the map the hull coverage is measured on."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (x.shape[0] - 1) / 3.0), init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float64)


def _hull(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Counter-clockwise hull vertices and area; collinear or repeated points give a segment or point, area 0."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = ConvexHull(points)
        return points[hull.vertices], float(hull.volume)
    except (QhullError, ValueError):
        centred = points - points.mean(axis=0)
        direction = centred[np.argmax(np.einsum("ij,ij->i", centred, centred))]
        along = centred @ direction
        return points[np.unique([np.argmin(along), np.argmax(along)])], 0.0


def _hulls_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons (segments and points included): True unless an axis splits them."""
    axes = [b.mean(axis=0) - a.mean(axis=0)]
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        axes.extend(edges)
        axes.extend(edges[:, ::-1] * np.array([1.0, -1.0]))
    for axis in axes:
        if not axis.any():
            continue
        pa_, pb_ = a @ axis, b @ axis
        if pa_.max() < pb_.min() or pb_.max() < pa_.min():
            return False
    return True


def random_groups(emb: np.ndarray, labels: list | np.ndarray | None, count: int, k: int, seed: int) -> list[list[int]]:
    """The random baseline of every coverage comparison: `count` uniform random anchors (no repeats), each with its k
    most cosine-similar other rows of the same label (of any row without labels); row positions, anchor first."""
    rng = np.random.default_rng(seed)
    n = emb.shape[0]
    label_arr = np.asarray(labels) if labels is not None else np.zeros(n, dtype=np.int64)
    groups = []
    for anchor in rng.choice(n, size=min(count, n), replace=False):
        same = np.flatnonzero((label_arr == label_arr[anchor]) & (np.arange(n) != anchor))
        groups.append([int(anchor)] + same[np.argsort(-(emb[same] @ emb[anchor]), kind="stable")[:k]].tolist())
    return groups


def convex_hull_coverage(points_2d: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """The paper's convex-hull coverage curve (Appendix A.2.3), one value per sampling step.

    Step i takes anchor i and its k nearest neighbours on the 2-D map (k-d tree), forms their convex hull and
    merges it with every overlapping hull in the buffer (repeatedly, as a merged hull can reach new ones). The
    value is the total area of the buffer's hulls over the area of the hull of all points.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points_2d, dtype=np.float64)
    total_area = _hull(points)[1]
    if total_area <= 0.0:
        raise ValueError("the points span no area: convex-hull coverage is undefined")
    _, neighbours = cKDTree(points).query(points[np.asarray(anchors)], k=k + 1)
    buffer: list[tuple[np.ndarray, float]] = []
    curve = np.empty(len(anchors))
    for step, group in enumerate(np.atleast_2d(neighbours)):
        vertices, area = _hull(points[group])
        merged = True
        while merged:
            merged = False
            for j, (other, _) in enumerate(buffer):
                if _hulls_overlap(vertices, other):
                    buffer.pop(j)
                    vertices, area = _hull(np.vstack([vertices, other]))
                    merged = True
                    break
        buffer.append((vertices, area))
        curve[step] = sum(a for _, a in buffer) / total_area
    return curve


def knn_radii(real: np.ndarray, k: int = 5) -> np.ndarray:
    """Each real row's Euclidean distance to its k-th nearest other real row (chunked, O(chunk·N) memory)."""
    x = np.asarray(real, dtype=np.float64)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} rows, got {k}")
    sq_norm = np.einsum("ij,ij->i", x, x)
    radii = np.empty(x.shape[0])
    for start in range(0, x.shape[0], _COVERAGE_CHUNK_ROWS):
        block = x[start:start + _COVERAGE_CHUNK_ROWS]
        sq = sq_norm[start:start + block.shape[0], None] + sq_norm[None, :] - 2.0 * (block @ x.T)
        sq[np.arange(block.shape[0]), np.arange(start, start + block.shape[0])] = -np.inf  # self sorts first
        radii[start:start + block.shape[0]] = np.partition(sq, k, axis=1)[:, k]
    return np.sqrt(np.maximum(radii, 0.0))


def knn_radius_coverage(real: np.ndarray, selected: np.ndarray, k: int = 5, radii: np.ndarray | None = None) -> float:
    """Share of real rows with a selected row inside their closed k-NN ball (coverage of Naeem et al., 2020).

    Deterministic and computed in embedding space; pass `radii` from knn_radii to reuse them across calls. The ball
    is closed, with _BALL_SLACK of rounding room, because selected rows are often real rows: one that is exactly a
    row's k-th neighbour sits on the boundary, and a row with k duplicates has radius 0 yet covers itself.
    """
    x = np.asarray(real, dtype=np.float64)
    s = np.asarray(selected, dtype=np.float64)
    if s.shape[0] == 0:
        return 0.0
    if radii is None:
        radii = knn_radii(x, k)
    s_sq = np.einsum("ij,ij->i", s, s)
    covered = np.empty(x.shape[0], dtype=bool)
    for start in range(0, x.shape[0], _COVERAGE_CHUNK_ROWS):
        block = x[start:start + _COVERAGE_CHUNK_ROWS]
        sq = np.einsum("ij,ij->i", block, block)[:, None] + s_sq[None, :] - 2.0 * (block @ s.T)
        ball_sq = radii[start:start + block.shape[0]] ** 2
        covered[start:start + block.shape[0]] = sq.min(axis=1) <= ball_sq + _BALL_SLACK
    return float(covered.mean())


def knn_radii_of(real: np.ndarray, rows: np.ndarray, ks: list[int]) -> np.ndarray:
    """(len(ks), len(rows)): the distance from each of `rows` (positions in `real`) to its k-th nearest other real
    row, for every k in `ks`; float64, chunked (O(chunk·N) memory). With rows = all of them and one k, knn_radii."""
    x = np.asarray(real, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    ks = [int(k) for k in ks]
    if not all(1 <= k < x.shape[0] for k in ks):
        raise ValueError(f"every k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} rows, got {ks}")
    sq_norm = np.einsum("ij,ij->i", x, x)
    out = np.empty((len(ks), rows.shape[0]))
    for start in range(0, rows.shape[0], _COVERAGE_CHUNK_ROWS):
        block_rows = rows[start:start + _COVERAGE_CHUNK_ROWS]
        sq = sq_norm[block_rows, None] + sq_norm[None, :] - 2.0 * (x[block_rows] @ x.T)
        sq[np.arange(block_rows.shape[0]), block_rows] = -np.inf  # self sorts first
        out[:, start:start + block_rows.shape[0]] = np.partition(sq, ks, axis=1)[:, ks].T
    return np.sqrt(np.maximum(out, 0.0))


def nearest_selected_distance(real: np.ndarray, rows: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """Euclidean distance from each of `rows` (positions in `real`) to its nearest `selected` point (float64)."""
    x = np.asarray(real, dtype=np.float64)
    s = np.asarray(selected, dtype=np.float64)
    s_sq = np.einsum("ij,ij->i", s, s)
    out = np.empty(len(rows))
    for start in range(0, len(rows), _COVERAGE_CHUNK_ROWS):
        block = x[np.asarray(rows[start:start + _COVERAGE_CHUNK_ROWS])]
        sq = np.einsum("ij,ij->i", block, block)[:, None] + s_sq[None, :] - 2.0 * (block @ s.T)
        out[start:start + block.shape[0]] = sq.min(axis=1)
    return np.sqrt(np.maximum(out, 0.0))


def coverage_profile(real: np.ndarray, selected: np.ndarray, rows: np.ndarray, radii: np.ndarray,
                     distances: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of `rows` (positions in `real`) by `selected` at every scale: (k-NN-radius coverage for each row of
    `radii` from knn_radii_of, share of rows within each fixed distance of a selected point).

    The k-NN ball is closed with _BALL_SLACK of room, as in knn_radius_coverage; small k and small distances measure
    the bulk (are dense rows near a selected one), large ones the reach (does every region have one).
    """
    nearest = nearest_selected_distance(real, rows, selected)
    nearest_sq = nearest ** 2
    knn = (nearest_sq[None, :] <= np.asarray(radii) ** 2 + _BALL_SLACK).mean(axis=1)
    fixed = np.array([(nearest <= d).mean() for d in distances])
    return knn, fixed


# ------------------------------------------------------------------------- distribution distances (alignment)
def median_sample(n: int, max_rows: int = 1000, seed: int = 0) -> np.ndarray:
    """The rows median_pairwise_distance uses of n: all, or a seeded sorted sample of max_rows (callers whose rows
    live on shards gather just these)."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def median_pairwise_distance(x: np.ndarray, max_rows: int = 1000, seed: int = 0) -> float:
    """Median Euclidean distance between distinct rows of a seeded subsample of at most max_rows rows: the RBF
    bandwidth heuristic (alignment) and the GP length scale's base (selection's τ auto)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError("the median heuristic needs at least 2 rows")
    x = x[median_sample(x.shape[0], max_rows, seed)]
    sq = squared_distances(x, x)
    return float(np.median(np.sqrt(sq[np.triu_indices(x.shape[0], k=1)])))


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of x and of y, clipped at 0 against rounding."""
    sq = np.einsum("ij,ij->i", x, x)[:, None] + np.einsum("ij,ij->i", y, y)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(sq, 0.0, out=sq)


def mmd2_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None, seed: int = 0) -> float:
    """Unbiased MMD² with k(a, b) = exp(-‖a-b‖² / (2ℓ²)); ℓ defaults to the median heuristic on x ∪ y."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("unbiased MMD² needs at least 2 rows on each side")
    if bandwidth is None:
        bandwidth = median_pairwise_distance(np.vstack([x, y]), seed=seed)
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)
    kxx = np.exp(-gamma * squared_distances(x, x))
    kyy = np.exp(-gamma * squared_distances(y, y))
    kxy = np.exp(-gamma * squared_distances(x, y))
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def wasserstein1(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Wasserstein-1 (Euclidean ground cost) between two equal-size uniform samples, by POT's EMD."""
    import ot

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"exact Wasserstein-1 here takes equal-size samples, got {x.shape[0]} and {y.shape[0]}")
    cost = np.sqrt(squared_distances(x, y))
    uniform = np.full(x.shape[0], 1.0 / x.shape[0])
    return float(ot.emd2(uniform, uniform, cost, numItermax=10_000_000))


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, projections: int = 200, seed: int = 0) -> float:
    """Sliced Wasserstein-2 over seeded random directions (POT)."""
    import ot

    return float(ot.sliced_wasserstein_distance(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                                                n_projections=projections, seed=seed))


def vocabulary(texts: list[str]) -> set[str]:
    """The distinct lower-cased whitespace tokens over all texts."""
    return {tok for t in texts for tok in t.lower().split()}


def vocabulary_size(texts: list[str]) -> int:
    """Distinct lower-cased whitespace tokens over all texts (the paper's Table 3 measure)."""
    return len(vocabulary(texts))


def text_keys(texts: list[str]) -> np.ndarray:
    """64 bits of each text (uint64), so that shards can count duplicates together without sending the texts; two
    different texts share a key with probability 2^-64 per pair."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
                        for t in texts), dtype=np.uint64, count=len(texts))


def duplicate_rate(texts: list[str]) -> float:
    """Share of rows whose text repeats an earlier row."""
    return 1.0 - len(set(texts)) / len(texts) if texts else 0.0
