"""Is a task's change real: a paired test of its main score, Holm's correction over a variant's tasks, the minimum
detectable effect, and the forgetting / gain verdicts.

The test, by the type's main score (its registry entry, ``stages/probe/types.py``):

* ``mcnemar`` (``paired_test: mcnemar`` and a main score that is 0/1 per item: multiple-choice ``acc``): the exact
  McNemar test, a two-sided binomial test of the items won against the items lost (the discordant pairs) at one
  half.
* ``sign_flip`` (a score averaged over items: ROUGE-L, contains, BERTScore, chat_ok, ...): a paired sign-flip
  permutation test of the per-item differences d = adapted - base, statistic |sum d|. Under no change each d is as
  likely to have the other sign. Exact when at most :data:`MAX_EXACT` items changed (every sign pattern of the
  nonzero d), or when every nonzero |d| is the same (0/1 scores: the binomial, so McNemar's test); otherwise
  ``probe.permutation_resamples`` random sign patterns seeded with ``common.seed`` and the task name, p =
  (1 + hits) / (1 + resamples). A corpus BLEU main score would be tested on the per-item sentence BLEU.
* ``sign_flip_nll`` (perplexity, main ``bits_per_byte``, a ratio of sums): the same test on the per-item summed
  negative log-likelihood. Base and adapted read the same bytes, so sum d / (task bytes * ln 2) is exactly the delta
  of bits per byte: the statistic is the main score's own change, long items weighing as they do in the score
  (a per-byte rate per item would weigh a short item like a long one).

The family is the main scores of one variant's tasks (one ``probe@<variant>`` run, m tasks); Holm's step-down
adjustment gives ``p_adjusted``. A verdict needs ``p_adjusted < probe.alpha`` and a change of the main score beyond
``probe.forgetting_threshold``: ``forgetting`` the worse way, ``gain`` the better. The bootstrap interval
(``stages/probe/stats.py``) is the range of the effect; it decides nothing.

The minimum detectable effect (``mde``) is the change of the main score the test finds with power
:data:`POWER` at level alpha / m, two-sided: the level a task's p must meet to give a verdict whatever the other
tasks show (Holm's first step; Bonferroni's level), so a stated mde holds for every task of the run. Normal
approximation: ``mde = (z(1 - alpha / 2m) + z(POWER)) * scale * sqrt(sum d^2)``, where ``scale * sum d`` is the
main score's delta (``1 / n`` for a mean of n items) and ``sqrt(sum d^2)`` the statistic's standard deviation under
no change (the sign-flip null: the spread of the paired differences about zero, observed on this run; it ignores
the smaller spread under the alternative, which errs large). For 0/1 scores (McNemar) sum d^2 is the number of
discordant items, and a change of delta needs at least n * |delta| of them: the discordance is taken as at least
the effect itself, which gives the floor ``(z(1 - alpha / 2m) + z(POWER))^2 / n`` (with no or few items changed).
None when no item changed and the scores are not 0/1 (no spread to size the test by).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from stages.core.verdicts import holm  # the one Holm adjustment (rule precision uses it too)
from stages.probe import types as _types
from stages.probe.tables import round_score

# the power at which the minimum detectable effect is stated
POWER = 0.8
# at most this many changed items: the sign-flip test enumerates all 2^k sign patterns (65,536 at 16)
MAX_EXACT = 16
# random sign patterns drawn at a time (memory: CHUNK x changed items floats)
CHUNK = 1000
_PERPLEXITY = ("token_perplexity", "bits_per_byte", "byte_perplexity")


@dataclass(frozen=True)
class Paired:
    """What a task's test runs on.

    Attributes:
        test: ``mcnemar``, ``sign_flip`` or ``sign_flip_nll`` (module docstring).
        d: per-item differences, adapted - base, of what is tested, shape (n,).
        scale: the main score's delta is ``scale * d.sum()`` (``1 / n`` for a mean; ``1 / (bytes * ln 2)`` for bits
            per byte; None for a main score not linear in it, which has no mde).
        binary: every per-item score, base and adapted, is 0 or 1.
    """

    test: str
    d: np.ndarray
    scale: float | None
    binary: bool


def paired(task_type: str, base: dict[str, np.ndarray], adapted: dict[str, np.ndarray]) -> Paired:
    """The test of a task type's main score and its per-item differences, from the per-item arrays of
    ``stats._arrays`` (base and adapted, the same items in the same order)."""
    spec = _types.get(task_type)
    main = spec.metric(spec.main)
    if main.aggregate in _PERPLEXITY:
        # delta bits_per_byte = sum d / (bytes * ln 2); the perplexities are not linear in sum d: no mde
        nbytes = float(base["bytes"].sum())
        scale = 1.0 / (nbytes * math.log(2)) if main.aggregate == "bits_per_byte" and nbytes else None
        return Paired("sign_flip_nll", adapted["nll"] - base["nll"], scale, False)
    key = spec.main if main.aggregate == "mean" else "bleu"  # corpus BLEU: the per-item sentence BLEU
    b, a = base[key], adapted[key]
    binary = bool(np.isin(b, (0.0, 1.0)).all() and np.isin(a, (0.0, 1.0)).all())
    test = "mcnemar" if spec.paired_test == "mcnemar" and binary else "sign_flip"
    return Paired(test, a - b, 1.0 / max(len(a), 1), binary)


def _binomial_p(k: int, pos: int) -> float:
    """Two-sided p of `pos` of `k` signs positive under fair signs: P(|2X - k| >= |2 pos - k|), X ~ Bin(k, 1/2)."""
    far = abs(2 * pos - k)
    return sum(math.comb(k, j) for j in range(k + 1) if abs(2 * j - k) >= far) / 2**k


def mcnemar_p(won: int, lost: int) -> float:
    """Exact McNemar p-value, two-sided: `won` and `lost` items (the discordant pairs); 1.0 when none changed."""
    return _binomial_p(won + lost, won)


def sign_flip_p(d: np.ndarray, rng: np.random.Generator | None, resamples: int) -> float:
    """Two-sided p of the paired sign-flip test of the differences `d` (statistic |sum d|).

    Exact when every nonzero |d| is equal (the binomial) or at most :data:`MAX_EXACT` are nonzero (all sign
    patterns); otherwise `resamples` random patterns from `rng`, p = (1 + hits) / (1 + resamples). Zero differences
    are left out: their sign changes nothing.
    """
    d = np.asarray(d, dtype=np.float64)
    d = d[d != 0]
    k = len(d)
    if k == 0:
        return 1.0
    mag = np.abs(d)
    if np.allclose(mag, mag[0], rtol=1e-9, atol=0):
        return _binomial_p(k, int((d > 0).sum()))
    observed = abs(float(d.sum()))
    tol = 1e-9 * float(mag.sum())  # the same sum in another order must count as a hit
    if k <= MAX_EXACT:
        signs = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1) * 2.0 - 1.0  # (2^k, k)
        return float(np.mean(np.abs(signs @ d) >= observed - tol))
    if rng is None:
        raise ValueError(f"sign_flip_p: {k} changed items need random sign patterns; pass rng")
    hits, left = 0, resamples
    while left:
        b = min(CHUNK, left)
        signs = rng.integers(0, 2, size=(b, k)) * 2.0 - 1.0  # (b, k)
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
        left -= b
    return (1 + hits) / (1 + resamples)


def z_sum(alpha: float, power: float = POWER) -> float:
    """z(1 - alpha / 2) + z(power): the two-sided critical value plus the power's quantile."""
    return NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)


def mde(p: Paired, alpha: float, power: float = POWER) -> float | None:
    """The minimum detectable change of the main score at level `alpha` (two-sided) with `power` (module docstring).

    Returns:
        ``z * scale * sqrt(sum d^2)``, at least ``z^2 * scale`` for 0/1 scores (z = :func:`z_sum`); None when no
        item changed and the scores are not 0/1, or the main score is not linear in sum d (``scale`` None).
    """
    if p.scale is None:
        return None
    z = z_sum(alpha, power)
    spread = math.sqrt(float(np.sum(p.d**2)))
    if p.binary:
        return p.scale * max(z * spread, z * z)  # discordant items >= n * |effect|: spread^2 >= n |effect|
    return None if spread == 0 else p.scale * z * spread


def round_p(p: float) -> float:
    """A p-value to 6 significant digits (6 decimals would write a small one as 0)."""
    return float(f"{p:.6g}")


def _rng(seed: int, task: str) -> np.random.Generator:
    # one stream per task, apart from the bootstrap's ([seed, crc]): adding a task moves no other task's p
    return np.random.default_rng([seed, zlib.crc32(task.encode()), 1])


def assess(task: str, pair: Paired, *, seed: int, resamples: int, mde_alpha: float) -> dict[str, Any]:
    """The test of one task: ``test``, ``n`` (items), ``changed`` (items whose tested score changed), ``p`` and
    ``mde`` (at level `mde_alpha`, two-sided; None when it cannot be sized); p to 6 significant digits
    (:func:`round_p`), mde to 6 decimals."""
    changed = int(np.count_nonzero(pair.d))
    if pair.test == "mcnemar":
        p = mcnemar_p(int(np.sum(pair.d > 0)), int(np.sum(pair.d < 0)))
    else:
        p = sign_flip_p(pair.d, _rng(seed, task), resamples)
    size = mde(pair, mde_alpha) if len(pair.d) else None
    return {
        "test": pair.test,
        "n": len(pair.d),
        "changed": changed,
        "p": round_p(p),
        "mde": None if size is None else round_score(size),
    }


def decide(results: dict[str, dict[str, Any]], *, alpha: float, threshold: float) -> None:
    """Add ``p_adjusted`` (Holm over the tasks of `results`, one variant's) and the verdicts to each task's entry.

    Each entry holds its ``type``, ``p`` and the main score's ``delta`` (:func:`stages.probe.stats.compare`).
    ``forgetting``: p_adjusted < `alpha` and the main score worse by more than `threshold`; ``gain``: the same,
    better.
    """
    names = sorted(results)
    adjusted = holm([results[t]["p"] for t in names])
    for t, p_adj in zip(names, adjusted, strict=True):
        entry = results[t]
        spec = _types.get(entry["type"])
        sign = 1.0 if spec.metric(spec.main).higher_is_better else -1.0  # sign * delta > 0: better
        better = sign * entry[spec.main]["delta"]
        entry["p_adjusted"] = round_p(p_adj)  # the verdict reads the written number: the JSON re-derives it
        significant = entry["p_adjusted"] < alpha
        entry["forgetting"] = int(significant and -better > threshold)
        entry["gain"] = int(significant and better > threshold)
