"""The in-process designers (random, AutoTinyBERT's evolutionary, firefly) on the real design space."""

import numpy as np
import pytest

from ad import space as space_lib
from ad.search import designers

DIRECTIONS = ["max", "min"]


def _cands(n=None):
  space = space_lib.DesignSpace()
  archs = space.archs() if n is None else space.archs()[:n]
  return designers.Candidates(archs, space)


def _objectives(arch):
  """Two conflicting analytic objectives: 'accuracy' grows with size, 'latency' too."""
  size = arch.hidden * arch.num_ffn + arch.bottleneck * arch.intermediate / 64
  return [np.log(size) + 0.1 * arch.heads, size / 100 + 2.0 / arch.heads]


def _drive(designer, n, pending=()):
  trials = []
  for _ in range(n):
    designer.update(trials)
    (arch,) = designer.suggest(1, pending=pending)
    trials.append(dict(arch=arch, status="ok", values=_objectives(arch)))
  return trials


MAKERS = {
    "random": lambda c, seed: designers.RandomDesigner(c, DIRECTIONS, seed),
    "evolutionary": lambda c, seed: designers.EvolutionaryDesigner(c, DIRECTIONS, seed, population=6),
    "firefly": lambda c, seed: designers.FireflyDesigner(c, DIRECTIONS, seed, population=5),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_suggestions_stay_in_the_space_and_never_repeat(name):
  cands = _cands()
  pending = [cands.archs[3], cands.archs[100]]
  trials = _drive(MAKERS[name](cands, 0), 40, pending=pending)
  names = [t["arch"].name for t in trials]
  assert len(set(names)) == len(names), "a designer suggested an evaluated architecture again"
  assert not {a.name for a in pending} & set(names), "a designer suggested a pending architecture"
  space = cands.space
  for t in trials:
    space.check(t["arch"])
    assert t["arch"].name in cands.index


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_same_seed_and_history_give_the_same_suggestions(name):
  cands = _cands()
  a = [t["arch"].name for t in _drive(MAKERS[name](cands, 3), 15)]
  b = [t["arch"].name for t in _drive(MAKERS[name](cands, 3), 15)]
  c = [t["arch"].name for t in _drive(MAKERS[name](cands, 4), 15)]
  assert a == b
  assert a != c


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_failed_trials_are_not_suggested_again_and_the_space_can_be_exhausted(name):
  cands = _cands(12)
  d = MAKERS[name](cands, 0)
  trials = []
  for i in range(12):
    d.update(trials)
    (arch,) = d.suggest(1)
    trials.append(dict(arch=arch, status="failed") if i % 3 == 0 else dict(arch=arch, status="ok",
                                                                          values=_objectives(arch)))
  assert sorted(t["arch"].name for t in trials) == sorted(a.name for a in cands.archs)
  d.update(trials)
  with pytest.raises(ValueError, match="0 feasible architectures are left"):
    d.suggest(1)


def test_evolution_mutates_the_previous_generation():
  """After generation 1, children come from roulette + mutation; pe=0 and pm=1 makes every child a
  mutant of a parent (each factor moves with probability 1/5, at least one). Over 40 children most
  lie one factor from a parent; a child drawn uniformly from the space does so about 5% of the time
  (and is within two factors about 55%, which is why one child proves nothing)."""
  nearest = []
  for seed in range(10):
    d = designers.EvolutionaryDesigner(_cands(), DIRECTIONS, seed, population=6, mutation_prob=1.0, explore_prob=0.0)
    trials = _drive(d, 6)
    d.update(trials)
    parents = [t["arch"] for t in trials]
    nearest += [min(sum(getattr(c, f) != getattr(p, f) for f in space_lib.FACTORS) for p in parents)
                for c in d.suggest(4)]
  assert min(nearest) >= 1  # a child is new
  assert np.mean(np.asarray(nearest) <= 1) >= 0.5, f"factors from the nearest parent: {nearest}"


def test_initial_design_is_shared_and_seeded():
  cands = _cands()
  a = designers.initial_design(cands, 4, 0)
  assert a == designers.initial_design(cands, 4, 0) and len({x.name for x in a}) == 4
  assert a != designers.initial_design(cands, 4, 1)


def test_unknown_designer_and_missing_optimizer_environment_are_clear_errors(tmp_path):
  cands = _cands(10)
  with pytest.raises(ValueError, match="search.designer='grid'"):
    designers.make_designer("grid", cands, DIRECTIONS, [0, 10], 0)
  with pytest.raises(designers.OptimizerServiceError, match="make setup"):
    designers.TriesteDesigner(cands, DIRECTIONS, [0, 10], python=str(tmp_path / "no-python"))
