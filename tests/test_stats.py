"""Standard errors of the evaluation's ratios, checked by hand and against a bootstrap."""

import math

import numpy as np
import pytest

from ad import stats


def test_sequence_level_standard_error_matches_a_hand_computation():
  correct = [2, 0, 3, 1]
  masked = [4, 2, 5, 3]
  p = 6 / 14
  resid = [2 - p * 4, 0 - p * 2, 3 - p * 5, 1 - p * 3]
  hand = math.sqrt(4 / 3 * sum(r * r for r in resid)) / 14
  assert stats.ratio(correct, masked) == pytest.approx(p)
  assert stats.ratio_se(correct, masked) == pytest.approx(hand, rel=1e-12)
  assert stats.binomial_se(p, 14) == pytest.approx(math.sqrt(p * (1 - p) / 14))


def test_cluster_standard_error_is_what_a_bootstrap_over_sequences_estimates():
  rng = np.random.default_rng(0)
  masked = rng.integers(3, 12, 800)
  hardness = rng.beta(2, 5, 800)  # tokens of one sequence share its difficulty
  correct = rng.binomial(masked, hardness)
  se = stats.ratio_se(correct, masked)
  assert stats.bootstrap_se(correct, masked, resamples=2000) == pytest.approx(se, rel=0.1)
  # Correlated tokens: the binomial standard error is too small.
  assert stats.binomial_se(stats.ratio(correct, masked), masked.sum()) < 0.9 * se


def test_paired_difference_cancels_shared_difficulty():
  rng = np.random.default_rng(1)
  masked = rng.integers(3, 12, 500)
  hardness = rng.beta(2, 5, 500)
  a = rng.binomial(masked, hardness)
  b = np.minimum(masked, a + rng.binomial(1, 0.3, 500))  # b: a plus a few extra hits
  diff, se = stats.paired_difference(b, a, masked)
  assert diff == pytest.approx(stats.ratio(b, masked) - stats.ratio(a, masked))
  unpaired = stats.difference_se(stats.ratio_se(a, masked), stats.ratio_se(b, masked))
  assert se < 0.5 * unpaired and diff > 2 * se
  with pytest.raises(ValueError, match="same sequences|per-sequence"):
    stats.paired_difference(a[:10], b, masked)
