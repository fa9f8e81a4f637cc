"""Pareto masks, non-dominated ranks and exact hypervolume."""

import numpy as np
import pytest

from ad.search import pareto


def test_directions_negate_maximized_objectives():
  y = pareto.to_min([[0.5, 3.0]], ["max", "min"])
  np.testing.assert_array_equal(y, [[-0.5, 3.0]])
  with pytest.raises(ValueError, match="'up'"):
    pareto.signs(["up"])


def test_pareto_mask_and_ranks():
  y = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [2, 2]], dtype=float)
  np.testing.assert_array_equal(pareto.pareto_mask(y), [True, True, True, False, False, True])
  np.testing.assert_array_equal(pareto.pareto_ranks(y), [1, 1, 1, 2, 3, 1])


def test_hypervolume_2d_by_hand():
  y = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5]])
  # Staircase under reference (4, 4): 3*1 + 2*1 + 1*1 = 6 (plus nothing from the dominated point).
  assert pareto.hypervolume(y, np.array([4.0, 4.0])) == pytest.approx(6.0)
  assert pareto.hypervolume(y[:1], np.array([4.0, 4.0])) == pytest.approx(3.0)
  assert pareto.hypervolume(np.array([[5.0, 0.0]]), np.array([4.0, 4.0])) == 0.0  # outside the reference box
  np.testing.assert_allclose(pareto.hypervolume_history(y, np.array([4.0, 4.0])), [3.0, 5.0, 6.0, 6.0])


def test_hypervolume_3d_matches_monte_carlo():
  rng = np.random.default_rng(0)
  y = rng.random((12, 3))
  ref = np.ones(3)
  samples = rng.random((200_000, 3))
  dominated = np.zeros(len(samples), dtype=bool)
  for p in y:
    dominated |= np.all(samples >= p, axis=1)
  assert pareto.hypervolume(y, ref) == pytest.approx(dominated.mean(), abs=4e-3)
