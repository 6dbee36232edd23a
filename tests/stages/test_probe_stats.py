"""Tests of the probe's statistics on constructed per-item rows: the bootstrap interval, the main score's paired test
(exact McNemar, the sign-flip test), Holm's correction, the minimum detectable effect and the verdicts.

The known cases of issue 23 are pinned: 4 wins and no loss of 80 multiple-choice items is no verdict (p = 0.125),
though its interval excludes zero; 6 and none is a gain on its own (p = 0.031); a planted 20-point drop on 200 items
is forgetting. p-values are held to scipy's binomial test and to hand-counted sign patterns.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stages.probe import significance as _sig
from stages.probe import stats as _stats

ALPHA, THRESHOLD = 0.05, 0.02


def _rows(scores: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [{"item": i, "prediction": "", "reference": "", "scores": s} for i, s in enumerate(scores)]


def _mc(acc: list[int]) -> list[dict[str, Any]]:
    return _rows([{"acc": a, "acc_norm": a} for a in acc])


def _mc_pair(n: int, won: int, lost: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n items: `won` wrong -> right, `lost` right -> wrong, the rest right on both (odd ones) or wrong on both."""
    rest = [i % 2 for i in range(n - won - lost)]
    return _mc([0] * won + [1] * lost + rest), _mc([1] * won + [0] * lost + rest)


def _cmp(task_type: str, base: list[dict[str, Any]], adapted: list[dict[str, Any]], task: str = "t", **kw: Any):
    opts = {"seed": 1234, "resamples": 500, "confidence": 0.95, "permutation_resamples": 2000} | kw
    return {"type": task_type} | _stats.compare(task, task_type, base, adapted, **{"mde_alpha": ALPHA, **opts})


def _family(entries: dict[str, dict[str, Any]], threshold: float = THRESHOLD) -> dict[str, dict[str, Any]]:
    _sig.decide(entries, alpha=ALPHA, threshold=threshold)
    return entries


def _unchanged(task: str, m: int) -> dict[str, Any]:
    """A multiple-choice task of 80 items where nothing changed, tested at mde level ALPHA / m."""
    return _cmp("multiple_choice", *_mc_pair(80, 0, 0), task=task, mde_alpha=ALPHA / m)


# --- the known cases --------------------------------------------------------------------------------------------------


def test_four_wins_of_80_is_no_verdict_though_its_interval_excludes_zero() -> None:
    from scipy.stats import binomtest

    t = _cmp("multiple_choice", *_mc_pair(80, 4, 0))
    assert t["acc"]["delta"] == 0.05 and t["acc"]["ci_low"] > 0  # the interval alone would call a gain
    assert t["test"] == "mcnemar" and (t["n"], t["changed"]) == (80, 4)
    assert t["p"] == 0.125 == round(binomtest(4, 4, 0.5).pvalue, 6)
    out = _family({"general_mc": t})["general_mc"]
    assert (out["p_adjusted"], out["gain"], out["forgetting"]) == (0.125, 0, 0)
    assert out["mde"] > 0.05  # 80 items cannot detect a 5-point change
    five = _family({"general_mc": _cmp("multiple_choice", *_mc_pair(80, 5, 0))})["general_mc"]
    assert (five["p"], five["gain"]) == (0.0625, 0)


def test_six_wins_of_80_is_a_gain_alone_and_not_among_five_tasks() -> None:
    t = _cmp("multiple_choice", *_mc_pair(80, 6, 0))
    assert t["p"] == 0.03125
    alone = _family({"general_mc": dict(t)})["general_mc"]
    assert (alone["p_adjusted"], alone["gain"], alone["forgetting"]) == (0.03125, 1, 0)
    # one of five tasks, the others unchanged (p = 1): Holm multiplies the smallest p by 5
    five = _family({"general_mc": dict(t), **{f"other{i}": _unchanged(f"other{i}", 5) for i in range(4)}})
    assert five["general_mc"]["p_adjusted"] == pytest.approx(5 * 0.03125) and five["general_mc"]["gain"] == 0
    assert all(five[f"other{i}"]["p_adjusted"] == 1.0 for i in range(4))


def test_a_planted_20_point_drop_on_200_items_is_forgetting() -> None:
    # 200 items, 140 right before: 46 lost, 6 won -> 100 right after, a drop of 0.20
    t = _cmp("multiple_choice", *_mc_pair(200, 6, 46))
    assert t["acc"]["delta"] == pytest.approx(-0.2) and t["p"] < 1e-6
    out = _family({"general_mc": t, **{f"other{i}": _unchanged(f"other{i}", 5) for i in range(4)}})
    assert (out["general_mc"]["forgetting"], out["general_mc"]["gain"]) == (1, 0)
    assert sum(e["forgetting"] + e["gain"] for e in out.values()) == 1
    # the same drop on a score averaged over items (knowledge: contains), tested by sign flips
    base = [{"exact": 0.0, "contains": c, "rougeL": c} for c in [1.0] * 140 + [0.0] * 60]
    adapted = [dict(s) for s in base]
    for i in range(40):  # 40 of the right answers lost: 140 -> 100 right
        adapted[i] = {"exact": 0.0, "contains": 0.0, "rougeL": 0.0}
    k = _cmp("knowledge", _rows(base), _rows(adapted))
    assert k["test"] == "sign_flip" and k["contains"]["delta"] == pytest.approx(-0.2)
    assert k["p"] == pytest.approx(2 * 0.5**40, rel=1e-5)  # exact: every changed item moved by 1
    assert _family({"k": k})["k"]["forgetting"] == 1


def test_a_significant_change_within_the_threshold_is_no_verdict() -> None:
    t = _cmp("multiple_choice", *_mc_pair(2000, 40, 0))  # +0.02: p tiny, the change not beyond 0.02
    assert t["p"] < 1e-9 and t["acc"]["delta"] == pytest.approx(0.02)
    out = _family({"t": t}, threshold=0.02)["t"]
    assert (out["gain"], out["forgetting"]) == (0, 0)
    assert _family({"t": dict(t)}, threshold=0.01)["t"]["gain"] == 1


# --- the tests themselves ---------------------------------------------------------------------------------------------


def test_mcnemar_equals_scipys_binomial_test() -> None:
    from scipy.stats import binomtest

    for won, lost in ((0, 0), (1, 0), (3, 7), (10, 10), (1, 8), (25, 12), (0, 30)):
        want = 1.0 if won + lost == 0 else binomtest(won, won + lost, 0.5).pvalue
        assert _sig.mcnemar_p(won, lost) == pytest.approx(want, rel=1e-12), (won, lost)


def test_sign_flip_exact_on_a_tiny_case_and_random_patterns_beyond() -> None:
    # |0.5 - 0.2 + 0.3 + 0.1| = 0.7; of the 16 sign patterns, 6 give |sum| >= 0.7 (flipped sum <= 0.2 or >= 0.9)
    assert _sig.sign_flip_p(np.array([0.5, -0.2, 0.3, 0.1, 0.0]), None, 0) == 6 / 16
    assert _sig.sign_flip_p(np.zeros(5), None, 0) == 1.0
    # every changed item moved by the same amount: the binomial, at any number of items (McNemar for 0/1)
    d = np.array([0.25] * 30 + [-0.25] * 12 + [0.0] * 8)
    assert _sig.sign_flip_p(d, None, 0) == pytest.approx(_sig.mcnemar_p(30, 12))
    # 18 changed items of unequal size: random sign patterns agree with all 2^18 patterns, and are seeded
    d = np.random.default_rng(7).normal(0.15, 0.5, 18)
    signs = ((np.arange(2**18)[:, None] >> np.arange(18)) & 1) * 2.0 - 1.0
    exact = float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12))
    mc = _sig.sign_flip_p(d, np.random.default_rng(1), 20000)
    assert mc == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 20000))
    assert _sig.sign_flip_p(d, np.random.default_rng(1), 20000) == mc
    with pytest.raises(ValueError, match="pass rng"):
        _sig.sign_flip_p(d, None, 100)


def test_perplexity_is_tested_on_the_per_item_nll_and_its_sum_is_the_delta() -> None:
    def ppl(nll: list[float]) -> list[dict[str, Any]]:
        return _rows([{"nll": x, "tokens": 10.0, "bytes": 40.0} for x in nll])

    base, adapted = [30.0, 32.0, 31.0, 29.0, 33.0], [20.0, 21.0, 22.0, 19.0, 23.5]
    t = _cmp("perplexity", ppl(base), ppl(adapted))
    assert t["bits_per_byte"]["delta"] == pytest.approx(round((105.5 - 155) / 200 / math.log(2), 6))
    assert t["bits_per_byte"]["ci_high"] < 0
    assert t["test"] == "sign_flip_nll" and t["changed"] == 5 and t["p"] == 2 / 32  # exact: all five improved
    assert "mcnemar_p" not in t
    # five items cannot go below p = 1/16: no verdict, however large the drop
    assert (_family({"t": t})["t"]["gain"], t["forgetting"]) == (0, 0)
    many = _cmp("perplexity", ppl(base * 4), ppl(adapted * 4))  # 20 items: random sign patterns
    assert many["p"] == pytest.approx(1 / 2001, abs=1e-6)  # no pattern but the all-positive ones reach it
    assert (_family({"t": many})["t"]["gain"], many["forgetting"]) == (1, 0)
    worse = _family({"t": _cmp("perplexity", ppl(adapted * 4), ppl(base * 4))})["t"]
    assert (worse["forgetting"], worse["gain"]) == (1, 0)
    pair = _sig.paired(
        "perplexity", _stats._arrays("perplexity", ppl(base)), _stats._arrays("perplexity", ppl(adapted))
    )
    assert pair.scale * pair.d.sum() == pytest.approx(t["bits_per_byte"]["delta"], abs=1e-6)


def test_interval_and_p_are_deterministic_and_per_task() -> None:
    rng = np.random.default_rng(3)
    b = rng.uniform(0, 1, 60).round(6)
    a = (b + rng.normal(0.05, 0.2, 60)).clip(0, 1).round(6)
    rows = (
        _rows([{"rougeL": x, "bleu": 0.0, "bertscore_f1": 0.5} for x in b]),
        _rows([{"rougeL": x, "bleu": 0.0, "bertscore_f1": 0.5} for x in a]),
    )
    for r in rows:  # corpus BLEU's segment statistics are computed from the texts
        for row in r:
            row["prediction"] = row["reference"] = "the cat sat"
    first = _cmp("generation", *rows, task="qa")
    assert first["test"] == "sign_flip" and first["changed"] == 60 and 0 < first["p"] < 1
    assert _cmp("generation", *rows, task="qa") == first
    other = _cmp("generation", *rows, task="qa2")  # another task's stream: another draw, about the same p
    assert other["p"] == pytest.approx(first["p"], abs=0.03)


# --- Holm, the minimum detectable effect ------------------------------------------------------------------------------


def test_holm_on_known_p_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> non-decreasing: 0.06 for the last
    assert _sig.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert _sig.holm([0.01, 0.02, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    assert _sig.holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # at most 1, never below an earlier one
    assert _sig.holm([0.9, 0.6]) == [1.0, 1.0]
    assert _sig.holm([0.03]) == [0.03] and _sig.holm([]) == []


def test_mde_decreases_with_n_and_follows_its_formula() -> None:
    z = _sig.z_sum(ALPHA / 5)
    assert z == pytest.approx(2.5758 + 0.8416, abs=1e-3)
    sizes = []
    for n in (40, 80, 200, 1000):
        t = _cmp("multiple_choice", *_mc_pair(n, 0, 0), mde_alpha=ALPHA / 5)
        assert t["mde"] == pytest.approx(z * z / n, abs=1e-6)  # nothing changed: the floor, n * mde discordant
        sizes.append(t["mde"])
    assert sizes == sorted(sizes, reverse=True)
    # many discordant items: z * sqrt(discordant) / n, above the floor
    t = _cmp("multiple_choice", *_mc_pair(80, 12, 12), mde_alpha=ALPHA / 5)
    assert t["mde"] == pytest.approx(z * math.sqrt(24) / 80, abs=1e-6)
    # continuous: z * sqrt(sum d^2) / n, shrinking as 1 / sqrt(n) for the same spread
    d = np.tile([0.1, -0.3, 0.2, 0.0], 50)
    pair = _sig.Paired("sign_flip", d, 1 / len(d), binary=False)
    assert _sig.mde(pair, ALPHA) == pytest.approx(_sig.z_sum(ALPHA) * math.sqrt(np.sum(d**2)) / 200)
    bigger = _sig.Paired("sign_flip", np.tile(d, 4), 1 / 800, binary=False)
    assert _sig.mde(bigger, ALPHA) == pytest.approx(_sig.mde(pair, ALPHA) / 2)
    assert _sig.mde(_sig.Paired("sign_flip", np.zeros(9), 1 / 9, binary=False), ALPHA) is None
    # a stricter level needs a larger change
    assert _sig.mde(pair, ALPHA / 5) > _sig.mde(pair, ALPHA)


def test_knowledge_mc_is_tested_on_p_right_by_sign_flips() -> None:
    # 40 items: the probability on the right option rises by 0.15 on 30 of them and falls by 0.05 on 10
    base = [{"acc": 0.0, "acc_norm": 0.0, "p_right": 0.3} for _ in range(40)]
    adapted = [{"acc": 0.0, "acc_norm": 0.0, "p_right": 0.45 if i < 30 else 0.25} for i in range(40)]
    t = _cmp("knowledge_mc", _rows(base), _rows(adapted), mde_alpha=ALPHA / 7)
    assert t["test"] == "sign_flip" and t["changed"] == 40 and t["p_right"]["delta"] == pytest.approx(0.1)
    assert t["p"] == pytest.approx(1 / 2001, abs=1e-6)  # z = 4.8: none of 2000 random sign patterns reaches it
    assert t["mde"] == pytest.approx(_sig.z_sum(ALPHA / 7) * math.sqrt(30 * 0.15**2 + 10 * 0.05**2) / 40, abs=1e-6)
    assert _family({"knowledge_mc": t})["knowledge_mc"]["gain"] == 1
