"""Exact one-sided tests of "this arm makes fewer errors than that one", for the canary trial.

Exact rather than normal-approximation tests because the counts that matter are small: a good
canary at 1-2 % error has only a handful of errors in its first few hundred labelled events, where
a z-test's tail probabilities are off by a factor of several.

- `fisher_fewer_errors`: independent arms (canary mode: different entities on each variant).
  Fisher's exact test on the 2x2 table (errors, correct) x (arm A, arm B), one-sided: the p-value
  of A's error rate being lower, P(X <= errors_a) under the hypergeometric null.
- `mcnemar_fewer_errors`: paired arms (shadow mode: both models score the same events). The exact
  McNemar test: only the discordant events count; the p-value of A being right more often when
  the two disagree, P(X >= a_right_b_wrong) with X ~ Binomial(discordant, 1/2).

Both sum log-probabilities from `math.lgamma`, so they stay exact to ~1e-12 at any count and need
no scipy at run time (the tests check them against scipy).
"""

from __future__ import annotations

import math


def fisher_fewer_errors(errors_a: int, n_a: int, errors_b: int, n_b: int) -> float:
    """One-sided p-value that arm A's error rate is below arm B's (1.0 when either arm is empty)."""
    if n_a == 0 or n_b == 0:
        return 1.0
    total, errors = n_a + n_b, errors_a + errors_b
    lowest = max(0, n_a - (total - errors))
    log_norm = _log_choose(total, n_a)
    terms = [
        _log_choose(errors, k) + _log_choose(total - errors, n_a - k) - log_norm for k in range(lowest, errors_a + 1)
    ]
    return _sum_probabilities(terms)


def mcnemar_fewer_errors(a_right_b_wrong: int, a_wrong_b_right: int) -> float:
    """One-sided p-value that A errs less than B on paired events (1.0 when they never disagree)."""
    discordant = a_right_b_wrong + a_wrong_b_right
    if discordant == 0:
        return 1.0
    half = discordant * math.log(2)
    terms = [_log_choose(discordant, k) - half for k in range(a_right_b_wrong, discordant + 1)]
    return _sum_probabilities(terms)


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _sum_probabilities(log_terms: list[float]) -> float:
    if not log_terms:
        return 0.0
    top = max(log_terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in log_terms))
