"""Exact-capacity assignment of pixels to classes (no napari, no Qt, no torch).

``auction_assign``
    The membership auction with eps-scaling (Jacobs, Merkurjev & Esedoglu 2018,
    Algorithms 2 and 3): the assignment step of auction dynamics (ADVP, in
    :mod:`napari_vptv.core.baselines`) and the exact rounding of the VPTV solver's
    soft labels to the prescribed volumes (:func:`napari_vptv.core.segment.round_to_volumes`).
    Written for this package: no maintained Python library provides it.
``volume_counts``
    Integer pixel counts closest to given class fractions.

Its own module so that the solver and the baselines both import it downwards
(no ``segment`` <-> ``baselines`` cycle).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["auction_assign", "volume_counts"]


def volume_counts(fractions, n_pixels: int) -> np.ndarray:
    """Integer pixel counts ``V_i`` with ``sum V_i = n_pixels`` closest to ``fractions``.

    Largest-remainder rounding of ``fractions * n_pixels`` (ties to the lower class
    index), so the counts differ from the exact products by less than one pixel.
    """
    f = np.asarray(fractions, dtype=np.float64)
    f = f / f.sum()
    raw = f * n_pixels
    counts = np.floor(raw).astype(np.int64)
    rest = int(n_pixels - counts.sum())
    if rest > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:rest]] += 1
    return counts


def auction_assign(
    benefit,
    capacities,
    *,
    epsilon_min: Optional[float] = None,
    epsilon_start: Optional[float] = None,
    scaling: float = 5.0,
    prices=None,
    max_rounds: int = 100000,
):
    """Assign items to classes with exact capacities, maximising the total benefit.

    Solves ``max sum_x benefit[l(x), x]`` over labelings ``l`` with
    ``#{x : l(x) = i} = capacities[i]`` -- the assignment step of auction dynamics
    (a transport problem between pixels and classes) -- by the membership auction
    of Jacobs, Merkurjev & Esedoglu (2018, Algorithms 2 and 3) with eps-scaling.
    Written for this package; no maintained library provides it.

    Every class ``i`` has a price ``p_i``. In each round *all* unassigned items bid
    at once (Jacobi auction): item ``x`` bids for its best class
    ``i* = argmax_i benefit[i, x] - p_i`` the amount
    ``p_{i*} + (w - w2) + eps`` (``w``, ``w2``: best and second-best value). A class
    keeps its ``capacities[i]`` highest bids (held ones and new ones), releases the
    rest, and, once full, its price becomes its lowest held bid. The auction ends
    when every item is assigned (capacities sum to the number of items). The prices
    then satisfy eps-complementary slackness, so the assignment is optimal within
    ``n_items * eps``. eps-scaling: the auction is run with
    ``eps = spread / scaling, spread / scaling**2, ...`` down to ``epsilon_min``,
    each run starting from the previous prices with all items unassigned.

    Parameters
    ----------
    benefit : ndarray ``(K, P)``
        Value of assigning item ``x`` to class ``i`` (e.g. ``-cost``).
    capacities : sequence of int ``(K,)``
        Items per class, non-negative, summing to ``P``.
    epsilon_min : float, optional
        Final bid increment. Default ``spread / (4 P)``, which makes the result
        optimal within a quarter of the benefit spread (exactly optimal when the
        benefits are integers scaled by ``4 P / spread``).
    epsilon_start : float, optional
        First bid increment (default ``spread / scaling``). With good warm-start
        prices a smaller start saves bidding rounds; the result's guarantee only
        depends on ``epsilon_min``.
    scaling : float
        Factor by which eps decreases between phases (> 1).
    prices : ndarray ``(K,)``, optional
        Warm-start prices (e.g. from the previous auction-dynamics step).
    max_rounds : int
        Safety limit on bidding rounds per phase (a ``RuntimeError`` if reached).

    Returns
    -------
    labels : int64 ndarray ``(P,)``
    prices : float64 ndarray ``(K,)``

    References
    ----------
    M. Jacobs, E. Merkurjev, S. Esedoglu, "Auction dynamics: a volume constrained
    MBO scheme", J. Comput. Phys. 354 (2018) 288-310. D. P. Bertsekas, "The auction
    algorithm for assignment and other network flow problems" (1989).
    """
    a = np.asarray(benefit, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"benefit must have shape (K, P), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("benefit contains NaN or infinite values")
    k, n = a.shape
    cap = np.asarray(capacities)
    if cap.shape != (k,) or not np.all(cap == np.round(cap)) or np.any(cap < 0):
        raise ValueError(f"capacities must be {k} non-negative integers, got {np.asarray(capacities).tolist()}")
    cap = cap.astype(np.int64)
    if int(cap.sum()) != n:
        raise ValueError(f"capacities must sum to the number of items ({n}), got {int(cap.sum())}")
    if scaling <= 1:
        raise ValueError(f"scaling must be > 1, got {scaling}")

    labels = np.full(n, -1, dtype=np.int64)
    active = np.flatnonzero(cap > 0)
    if active.size == 1:
        labels[:] = active[0]
        return labels, (np.zeros(k) if prices is None else np.asarray(prices, dtype=np.float64).copy())
    # classes with capacity 0 never receive items: restrict the problem to the others
    sub = a[active]
    kk = active.size
    p = np.zeros(kk) if prices is None else np.asarray(prices, dtype=np.float64)[active].copy()
    spread = float(sub.max() - sub.min())
    if spread == 0:
        spread = 1.0
    eps_min = spread / (4.0 * n) if epsilon_min is None else float(epsilon_min)
    if eps_min <= 0:
        raise ValueError(f"epsilon_min must be > 0, got {epsilon_min}")
    eps = max(spread / scaling if epsilon_start is None else float(epsilon_start), eps_min)
    c_active = cap[active]
    cols = np.arange(n)
    while True:
        owner = np.full(n, -1, dtype=np.int64)  # index into active classes
        held_idx = [np.empty(0, np.int64) for _ in range(kk)]
        held_bid = [np.empty(0, np.float64) for _ in range(kk)]
        unassigned = cols
        rounds = 0
        while unassigned.size:
            rounds += 1
            if rounds > max_rounds:
                raise RuntimeError(f"auction did not finish within {max_rounds} rounds (eps={eps:g})")
            vals = sub[:, unassigned] - p[:, None]
            best = vals.argmax(axis=0)
            w = vals[best, np.arange(unassigned.size)]
            if kk == 2:
                w2 = vals.min(axis=0)
            else:
                vals[best, np.arange(unassigned.size)] = -np.inf
                w2 = vals.max(axis=0)
            bids = p[best] + (w - w2) + eps
            for i in range(kk):
                sel = best == i
                if not sel.any():
                    continue
                # held bids are kept sorted (ascending): merge the new bids in, then
                # release the lowest ones beyond the capacity
                nb, ni = bids[sel], unassigned[sel]
                order = np.argsort(nb, kind="stable")
                nb, ni = nb[order], ni[order]
                pos = np.searchsorted(held_bid[i], nb, side="right")
                cand_bid = np.insert(held_bid[i], pos, nb)
                cand_idx = np.insert(held_idx[i], pos, ni)
                owner[ni] = i
                extra = cand_idx.size - c_active[i]
                if extra > 0:
                    owner[cand_idx[:extra]] = -1
                    cand_idx, cand_bid = cand_idx[extra:], cand_bid[extra:]
                held_idx[i], held_bid[i] = cand_idx, cand_bid
                if cand_idx.size == c_active[i]:
                    p[i] = max(p[i], float(cand_bid[0]))
            unassigned = np.flatnonzero(owner < 0)
        if eps <= eps_min:
            break
        eps = max(eps / scaling, eps_min)
    labels = active[owner]
    out_p = np.zeros(k) if prices is None else np.asarray(prices, dtype=np.float64).copy()
    out_p[active] = p
    return labels, out_p
