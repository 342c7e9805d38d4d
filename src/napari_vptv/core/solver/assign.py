"""Exact-capacity assignment of pixels to classes (no napari, no Qt, no torch).

``auction_assign``
    The membership auction with eps-scaling (Jacobs, Merkurjev & Esedoglu 2018,
    Algorithms 2 and 3): the assignment step of auction dynamics (ADVP, in
    :mod:`napari_vptv.core.scoring.baselines`) and the exact rounding of the VPTV solver's
    soft labels to the prescribed volumes (:func:`napari_vptv.core.solver.segment.round_to_volumes`).
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
    a, cap = _checked_problem(benefit, capacities, scaling)
    k, n = a.shape
    active = np.flatnonzero(cap > 0)
    if active.size == 1:  # one class takes every item
        return np.full(n, active[0], dtype=np.int64), _copy_prices(prices, k)
    # classes with capacity 0 never receive items: restrict the problem to the others
    sub = a[active]
    p = np.zeros(active.size) if prices is None else np.asarray(prices, dtype=np.float64)[active].copy()
    eps, eps_min = _epsilon_range(sub, epsilon_min, epsilon_start, scaling)
    while True:  # eps-scaling: each phase restarts with every item unassigned, keeping the prices
        owner = _auction_phase(sub, cap[active], p, eps, max_rounds)
        if eps <= eps_min:
            break
        eps = max(eps / scaling, eps_min)
    out_p = _copy_prices(prices, k)
    out_p[active] = p
    return active[owner], out_p


def _copy_prices(prices, k):
    """A float64 copy of the warm-start prices (zeros without them)."""
    return np.zeros(k) if prices is None else np.asarray(prices, dtype=np.float64).copy()


def _checked_problem(benefit, capacities, scaling):
    """The benefit ``(K, P)`` as float64 and the capacities as int64, or a one-line ValueError."""
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
    return a, cap


def _epsilon_range(sub, epsilon_min, epsilon_start, scaling):
    """First and final bid increments ``(eps_start, eps_min)``, relative to the benefit spread."""
    n = sub.shape[1]
    spread = float(sub.max() - sub.min())
    if spread == 0:
        spread = 1.0
    eps_min = spread / (4.0 * n) if epsilon_min is None else float(epsilon_min)
    if eps_min <= 0:
        raise ValueError(f"epsilon_min must be > 0, got {epsilon_min}")
    eps = max(spread / scaling if epsilon_start is None else float(epsilon_start), eps_min)
    return eps, eps_min


def _auction_phase(sub, capacities, p, eps, max_rounds):
    """One auction at a fixed ``eps``, from all items unassigned until every item is held.

    ``sub`` is the benefit ``(K, P)`` of the classes with a positive capacity;
    the prices ``p`` are raised in place. Returns the owner class of every item.
    """
    kk, n = sub.shape
    owner = np.full(n, -1, dtype=np.int64)  # index into the rows of sub
    held_idx = [np.empty(0, np.int64) for _ in range(kk)]
    held_bid = [np.empty(0, np.float64) for _ in range(kk)]
    unassigned = np.arange(n)
    rounds = 0
    while unassigned.size:
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError(f"auction did not finish within {max_rounds} rounds (eps={eps:g})")
        best, bids = _bids(sub, p, unassigned, eps)
        for i in range(kk):
            sel = best == i
            if not sel.any():
                continue
            held_idx[i], held_bid[i] = _take_bids(
                held_idx[i], held_bid[i], bids[sel], unassigned[sel], i, capacities[i], owner
            )
            if held_idx[i].size == capacities[i]:  # full: the price is the lowest held bid
                p[i] = max(p[i], float(held_bid[i][0]))
        unassigned = np.flatnonzero(owner < 0)
    return owner


def _bids(sub, p, unassigned, eps):
    """Every unassigned item's best class and bid ``p_{i*} + (w - w2) + eps`` (Jacobi round)."""
    vals = sub[:, unassigned] - p[:, None]
    cols = np.arange(unassigned.size)
    best = vals.argmax(axis=0)
    w = vals[best, cols]
    if sub.shape[0] == 2:
        w2 = vals.min(axis=0)
    else:
        vals[best, cols] = -np.inf
        w2 = vals.max(axis=0)
    return best, p[best] + (w - w2) + eps


def _take_bids(held_idx, held_bid, new_bid, new_idx, cls, capacity, owner):
    """Class ``cls``'s held items after new bids: keep the ``capacity`` highest, release the rest.

    Held bids are kept sorted (ascending): the new bids are merged in and the lowest
    ones beyond the capacity are released (``owner`` is updated in place).
    """
    order = np.argsort(new_bid, kind="stable")
    new_bid, new_idx = new_bid[order], new_idx[order]
    pos = np.searchsorted(held_bid, new_bid, side="right")
    cand_bid = np.insert(held_bid, pos, new_bid)
    cand_idx = np.insert(held_idx, pos, new_idx)
    owner[new_idx] = cls
    extra = cand_idx.size - capacity
    if extra > 0:
        owner[cand_idx[:extra]] = -1
        cand_idx, cand_bid = cand_idx[extra:], cand_bid[extra:]
    return cand_idx, cand_bid
