"""The concept learners that bench_real.py compares, each fitted on training rows and judged on
held-out rows.

Every method returns a :class:`Fitted`: its atoms (for stability), its representative held-out
items per concept, its relative reconstruction error ``||Y - Ŷ|| / ||Y||`` on the held-out rows,
and the seconds of its fit. Representative items are the ``n_top`` held-out items with the
largest |coefficient| (dictionaries), the largest activation (the sparse autoencoder), the
nearest to the centroid among the cluster's members (k-means), or the largest and smallest
projection (PCA, two concepts per component).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import scipy.sparse as sp

import daskdict


@dataclass
class Fitted:
    """One fitted method, judged on the held-out rows.

    Attributes
    ----------
    atoms : ndarray of shape (n_atoms, n_features)
        Dictionary atoms, centroids, components or decoder columns (for stability).
    groups : list of ndarray of int
        Held-out row positions representing each concept (at most ``n_top`` each).
    error : float
        ``||Y - Ŷ|| / ||Y||`` on the held-out rows.
    seconds : float
        Wall time of the fit alone.
    info : dict
        Anything else worth recording (the SAE's epochs).
    levels : list of list of ndarray, optional
        For a dictionary with levels, the representative items of each level's concepts
        (``groups`` are the first level's: the concepts a user sees first).
    """

    atoms: np.ndarray
    groups: list[np.ndarray]
    error: float
    seconds: float
    info: dict = field(default_factory=dict)
    levels: list[list[np.ndarray]] | None = None


def relative_error(y: np.ndarray, y_hat: np.ndarray) -> float:
    """``||Y - Ŷ||_F / ||Y||_F``."""
    return float(np.linalg.norm(y - y_hat) / np.linalg.norm(y))


def top_items(scores: np.ndarray | sp.spmatrix, n_top: int) -> list[np.ndarray]:
    """Per concept (column), the rows with the largest nonzero score, largest first.

    Parameters
    ----------
    scores : ndarray or sparse matrix of shape (n_rows, n_concepts)
        Nonnegative scores (|coefficients| or activations); zero means unused.
    n_top : int
    """
    scores = sp.csc_matrix(scores)
    out = []
    for column in range(scores.shape[1]):
        start, stop = scores.indptr[column], scores.indptr[column + 1]
        rows, values = scores.indices[start:stop], scores.data[start:stop]
        keep = values > 0
        rows, values = rows[keep], values[keep]
        out.append(rows[np.argsort(-values, kind="stable")[:n_top]].astype(np.int64))
    return out


def representatives(csr, test, atoms, n_top: int, rule: str = "coefficient",
                    signs: str = "abs") -> list[np.ndarray]:
    """Each concept's representative held-out items under one of explain's rules.

    ``rule``: "coefficient" (largest |coefficient|), "share" (largest share x_ij^2 / |x_i|^2
    of the item's code) or "cosine" (highest |cosine| between the item and the atom, among
    its users). ``signs="split"`` makes each side of a signed atom its own concept (the
    positive sides first, then the negative ones), as explain shows them.
    """
    csr = sp.csr_matrix(csr)
    if rule == "share":
        sq = csr.multiply(csr)
        scores = sp.diags(1.0 / np.maximum(np.asarray(sq.sum(axis=1)).ravel(), 1e-30)) @ sq
    elif rule == "cosine":
        unit = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-30)
        users = csr.copy()
        users.data = np.ones_like(users.data)
        scores = users.multiply(np.abs(unit @ atoms.T))
    else:
        scores = abs(csr)
    scores = sp.csr_matrix(scores)
    if signs != "split":
        return top_items(scores, n_top)
    sides = []
    for sign in (1, -1):
        side = sp.csr_matrix(scores.multiply(sp.csr_matrix(csr).sign() == sign))
        sides += top_items(side, n_top)
    return sides


def fit_daskdict(train, test, n_atoms, seed, settings, positive=False, rule="coefficient",
                 signs="abs", center=False) -> Fitted:
    """daskdict's default fit (its default update, OMP codes) and its held-out codes; the
    representative items by ``rule`` and ``signs`` (see :func:`representatives`)."""
    start = time.perf_counter()
    model = daskdict.fit(train, n_atoms=n_atoms, n_nonzero=settings["n_nonzero"],
                         n_iter=settings["n_iter"], random_state=seed, client="threads",
                         positive=positive, center=center, verbose=False)
    seconds = time.perf_counter() - start
    codes = model.encode(test, client="threads")
    csr = codes.to_csr()
    error = relative_error(test, model.reconstruct(codes))
    groups = representatives(csr, model.centered(test), model.atoms, settings["n_top"], rule,
                             signs)
    return Fitted(model.atoms, groups, error, seconds)


def fit_daskdict_levels(train, test, n_atoms, seed, settings, positive=False,
                        center=False) -> Fitted:
    """daskdict with two levels: ``n_atoms`` coarse concepts with one per item, then
    ``n_atoms`` finer ones with ``n_nonzero - 1`` per item on what the first leaves."""
    k = settings["n_nonzero"]
    start = time.perf_counter()
    model = daskdict.fit(train, n_atoms=[n_atoms, n_atoms], n_nonzero=[1, k - 1],
                         n_iter=settings["n_iter"], random_state=seed, client="threads",
                         positive=positive, center=center, verbose=False)
    seconds = time.perf_counter() - start
    codes = model.encode(test, client="threads")
    csr = codes.to_csr()
    error = relative_error(test, model.reconstruct(codes))
    per_level = [top_items(abs(csr[:, a:b]), settings["n_top"])
                 for a, b in ((0, n_atoms), (n_atoms, 2 * n_atoms))]
    return Fitted(model.atoms[:n_atoms], per_level[0], error, seconds, levels=per_level)


def fit_kmeans(train, test, n_atoms, seed, settings, lloyd=False) -> Fitted:
    """MiniBatchKMeans (``lloyd=True``: KMeans, Lloyd's iterations to convergence); a
    cluster's items are its held-out members nearest the centroid."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    start = time.perf_counter()
    if lloyd:
        model = KMeans(n_clusters=n_atoms, n_init=1, random_state=seed).fit(train)
    else:
        model = MiniBatchKMeans(n_clusters=n_atoms, random_state=seed).fit(train)
    seconds = time.perf_counter() - start
    labels = model.predict(test)
    centers = model.cluster_centers_
    distance = np.linalg.norm(test - centers[labels], axis=1)
    # Nearest first: a score that grows as the distance shrinks, nonzero for every member.
    closeness = 1.0 / (1.0 + distance)
    scores = sp.csr_matrix((closeness, (np.arange(len(test)), labels)),
                           shape=(len(test), n_atoms))
    return Fitted(centers, top_items(scores, settings["n_top"]),
                  relative_error(test, centers[labels]), seconds)


def fit_pca(train, test, n_atoms, seed, settings) -> Fitted:
    """PCA: the top K/2 components, each two concepts (largest and smallest projection)."""
    from sklearn.decomposition import PCA

    n_components = min(n_atoms // 2, train.shape[1])
    start = time.perf_counter()
    model = PCA(n_components=n_components, random_state=seed).fit(train)
    seconds = time.perf_counter() - start
    projection = model.transform(test)
    error = relative_error(test, model.inverse_transform(projection))
    n_top = settings["n_top"]
    groups = []
    for column in projection.T:
        order = np.argsort(column, kind="stable")
        groups.extend([order[::-1][:n_top], order[:n_top]])
    return Fitted(model.components_, groups, error, seconds)


def fit_sklearn(train, test, n_atoms, seed, settings) -> Fitted:
    """scikit-learn's MiniBatchDictionaryLearning, OMP codes with ``n_nonzero`` atoms.

    Its fit codes with the lasso (``alpha``); with alpha=1 on unit-norm rows every code is
    zero and nothing is learned, so alpha is a tenth of the median row norm.
    """
    from sklearn.decomposition import MiniBatchDictionaryLearning

    alpha = 0.1 * float(np.median(np.linalg.norm(train, axis=1)))
    start = time.perf_counter()
    model = MiniBatchDictionaryLearning(
        n_components=n_atoms, alpha=alpha, batch_size=256, max_iter=settings["sklearn_iter"],
        transform_algorithm="omp", transform_n_nonzero_coefs=settings["n_nonzero"],
        random_state=seed).fit(train)
    seconds = time.perf_counter() - start
    codes = model.transform(test)
    error = relative_error(test, codes @ model.components_)
    return Fitted(model.components_, top_items(np.abs(codes), settings["n_top"]), error,
                  seconds)


def aksvd_available() -> str | None:
    """None when dictlearn imports, else why the AK-SVD method is skipped."""
    try:
        import dictlearn  # noqa: F401
    except ImportError as exc:
        return f"dictlearn is not installed ({exc})"
    return None


def fit_aksvd(train, test, n_atoms, seed, settings) -> Fitted:
    """dictlearn's approximate K-SVD (Rubinstein, Zibulevsky, Elad 2008) with OMP codes."""
    from dictlearn import DictionaryLearning

    start = time.perf_counter()
    model = DictionaryLearning(n_components=n_atoms, fit_algorithm="aksvd",
                               n_nonzero_coefs=settings["n_nonzero"],
                               max_iter=settings["aksvd_iter"], random_state=seed).fit(train)
    seconds = time.perf_counter() - start
    codes = model.transform(test)
    error = relative_error(test, codes @ model.components_)
    return Fitted(model.components_, top_items(np.abs(codes), settings["n_top"]), error,
                  seconds)


def fit_sae(train, test, n_atoms, seed, settings) -> Fitted:
    """A TopK sparse autoencoder (pre-bias, linear + ReLU encoder keeping the top k, unit-norm
    decoder columns), trained with Adam until the held-out error improves by less than 0.1 %
    over an epoch."""
    import torch

    # Its matrices are small: more threads than one only contend with each other (and with
    # whatever else runs on the machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_sae(torch, train, test, n_atoms, seed, settings)
    finally:
        torch.set_num_threads(threads)


def _train_sae(torch, train, test, n_atoms, seed, settings) -> Fitted:
    """The training loop of :func:`fit_sae`."""
    torch.manual_seed(seed)
    k, n_features = settings["n_nonzero"], train.shape[1]
    x_train, x_test = torch.from_numpy(train), torch.from_numpy(test)
    b_pre = torch.nn.Parameter(x_train.mean(0).clone())
    decoder = torch.nn.functional.normalize(torch.randn(n_atoms, n_features), dim=1)
    w_dec = torch.nn.Parameter(decoder.clone())
    w_enc = torch.nn.Parameter(decoder.T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(n_atoms))
    optimizer = torch.optim.Adam([b_pre, w_dec, w_enc, b_enc], lr=settings["sae_lr"])

    def encode(x):
        pre = torch.relu((x - b_pre) @ w_enc + b_enc)
        values, index = pre.topk(k, dim=1)
        return torch.zeros_like(pre).scatter_(1, index, values)

    def held_out_error():
        with torch.no_grad():
            return float((encode(x_test) @ w_dec + b_pre - x_test).norm() / x_test.norm())

    generator = torch.Generator().manual_seed(seed)
    start, previous, epochs = time.perf_counter(), held_out_error(), 0
    while epochs < settings["sae_max_epochs"]:
        epochs += 1
        for batch in torch.randperm(len(x_train), generator=generator).split(256):
            x = x_train[batch]
            loss = ((encode(x) @ w_dec + b_pre - x) ** 2).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                w_dec /= w_dec.norm(dim=1, keepdim=True)
        current = held_out_error()
        if previous - current < 1e-3 * previous:
            break
        previous = current
    seconds = time.perf_counter() - start
    with torch.no_grad():
        activations = encode(x_test).numpy()
    return Fitted(w_dec.detach().numpy().copy(), top_items(activations, settings["n_top"]),
                  held_out_error(), seconds, {"epochs": epochs})


METHODS = {
    "daskdict": fit_daskdict,
    "daskdict-levels": fit_daskdict_levels,
    "daskdict+positive": partial(fit_daskdict, positive=True),
    "daskdict+split": partial(fit_daskdict, signs="split"),
    "daskdict+share": partial(fit_daskdict, rule="share"),
    "daskdict+cosine": partial(fit_daskdict, rule="cosine"),
    "daskdict+centred": partial(fit_daskdict, center=True),
    "daskdict-levels+centred": partial(fit_daskdict_levels, center=True),
    "daskdict-levels+positive": partial(fit_daskdict_levels, positive=True),
    "kmeans": fit_kmeans,
    "kmeans-lloyd": partial(fit_kmeans, lloyd=True),
    "pca": fit_pca,
    "sklearn-mbdl": fit_sklearn,
    "aksvd": fit_aksvd,
    "topk-sae": fit_sae,
}
