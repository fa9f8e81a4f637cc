"""Bookkeeping of the flash-vs-regular fidelity experiment (experiments/fidelity.py); no training."""

import json

import numpy as np

from ad import configs, stats
from ad import space as space_lib
from experiments import fidelity


def test_pairwise_accuracy_counts_agreeing_orders_and_ties():
  assert stats.pairwise_accuracy([1, 2, 3], [10, 20, 30]) == 1.0
  assert stats.pairwise_accuracy([1, 2, 3], [30, 20, 10]) == 0.0
  # pairs (0,1) agree, (0,2) agree, (1,2): a tie in a only -> disagree
  assert stats.pairwise_accuracy([1, 2, 2], [1, 2, 3]) == 2 / 3
  assert stats.pairwise_accuracy([1, 1], [5, 5]) == 1.0


def test_choose_spreads_over_cost_varies_heads_and_adds_the_baseline():
  cfg = configs.load_config("fidelity")
  picks = fidelity.choose(cfg, 12)
  assert len(picks) == 13 == len(set(picks)) and picks[-1] == space_lib.MOBILEBERT.name
  archs = [space_lib.Arch.parse(p) for p in picks[:-1]]
  assert {a.hidden for a in archs} == {128, 256, 384, 512} and len({a.heads for a in archs}) >= 3
  from ad.search import objectives
  flops = [objectives.screening(a, cfg.model, 128)["flops"] for a in archs]
  assert flops == sorted(flops)  # evenly spaced quantiles, cheapest first


def test_fraction_schedules_scale_the_flash_run_keeping_its_proportions():
  cfg = configs.load_config("fidelity")
  f = cfg.distill.flash
  assert fidelity.schedule_overrides(cfg, 0.05) == [
      f"distill.flash.steps_per_block={f.steps_per_block}", f"distill.flash.pretrain_steps={f.pretrain_steps}",
      f"distill.flash.warmup_steps={f.warmup_steps}"]
  assert fidelity.schedule_overrides(cfg, 0.2)[1] == f"distill.flash.pretrain_steps={4 * f.pretrain_steps}"
  # 5% of the regular schedule, as in 003 4.7
  assert f.pretrain_steps == 0.05 * cfg.distill.regular.pretrain_steps
  assert f.steps_per_block == 0.05 * cfg.distill.regular.steps_per_block


def test_collect_analyse_and_plot_from_the_run_files(tmp_path):
  """The export path on hand-written run files: flash 5% reverses one pair of the regular ranking."""
  cfg = configs.load_config("fidelity")
  archs = ["128_64_4_384_2", "256_64_4_384_2", "384_64_4_384_2", space_lib.MOBILEBERT.name]
  accs = {"regular": [0.09, 0.10, 0.12, 0.11]}
  for f in cfg.fidelity.fractions:
    accs[f"flash_{f}"] = [0.05, 0.06, 0.07, 0.072]
  rng = np.random.default_rng(0)
  masked = rng.integers(4, 10, 50).tolist()
  for i, a in enumerate(archs):
    (tmp_path / a).mkdir()
    for tag, vals in accs.items():
      correct = [int(m * vals[i] + (k % 3 == 0)) for k, m in enumerate(masked)]
      (tmp_path / a / f"{tag}.json").write_text(json.dumps(dict(
          mlm_accuracy=vals[i], mlm_accuracy_se=0.004, steps=100, distill_s=3.0,
          per_sequence=dict(masked=masked, mlm_correct=correct))))
  rows, per_seq, missing = fidelity.collect(cfg, archs, {a: 1.0 + i for i, a in enumerate(archs)}, str(tmp_path))
  assert not missing and rows[0]["regular_se"] == 0.004
  summary = fidelity.analyse(cfg, rows, per_seq)
  s = summary["fractions"]["0.05"]
  assert s["pairwise_accuracy"] == 5 / 6 and round(s["kendall_tau"], 6) == round(4 / 6, 6)
  assert s["kendall_tau_ci95"][0] <= s["kendall_tau"] <= s["kendall_tau_ci95"][1]
  assert summary["regular_pairs_resolved_beyond_2se"].endswith("/6")
  # Training-free proxies: parameters grow with the width here, so they reverse the same one pair.
  assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
  assert summary["training_free"]["params"]["pairwise_accuracy"] == 5 / 6
  # on the pairs regular resolves, both reverse the same one (if it is resolved) and agree on the rest
  resolved = int(summary["regular_pairs_resolved_beyond_2se"].split("/")[0])
  assert resolved >= 3
  assert summary["training_free"]["params"]["agreeing_on_resolved_pairs"] == s["agreeing_on_resolved_pairs"]
  assert s["agreeing_on_resolved_pairs"] in (f"{resolved}/{resolved}", f"{resolved - 1}/{resolved}")
  fidelity.plot(cfg, rows, summary, str(tmp_path))
  assert (tmp_path / "fidelity_steps.png").stat().st_size > 0 and (tmp_path / "fidelity_shift.png").stat().st_size > 0
  (tmp_path / archs[0] / "flash_0.1.json").unlink()
  assert fidelity.collect(cfg, archs, {a: 1.0 for a in archs}, str(tmp_path))[2] == [f"{archs[0]}/flash_0.1"]


def test_workers_get_whole_students_the_baseline_first_and_every_run_once():
  cfg = configs.load_config("fidelity")
  archs = ["128_64_4_384_2", "256_64_4_384_2", "384_64_4_384_2", space_lib.MOBILEBERT.name]
  shares = [fidelity.job_list(cfg, archs, k, 2) for k in range(2)]
  assert shares[0][0] == (space_lib.MOBILEBERT.name, "regular")
  every = sorted(j for share in shares for j in share)
  assert every == sorted((a, t) for a in archs for t in fidelity.tags(cfg))
  for share in shares:  # a worker finishes one student's runs before it starts the next student's
    students = [a for a, _ in share]
    assert students == sorted(students, key=students.index)
