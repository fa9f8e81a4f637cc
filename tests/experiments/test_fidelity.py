"""Bookkeeping of the flash-vs-regular fidelity experiment (experiments/fidelity.py); no training."""

from ad import configs
from ad import space as space_lib
from experiments import fidelity


def test_pairwise_accuracy_counts_agreeing_orders_and_ties():
  assert fidelity.pairwise_accuracy([1, 2, 3], [10, 20, 30]) == 1.0
  assert fidelity.pairwise_accuracy([1, 2, 3], [30, 20, 10]) == 0.0
  # pairs (0,1) agree, (0,2) agree, (1,2): a tie in a only -> disagree
  assert fidelity.pairwise_accuracy([1, 2, 2], [1, 2, 3]) == 2 / 3
  assert fidelity.pairwise_accuracy([1, 1], [5, 5]) == 1.0


def test_choose_spreads_over_the_pareto_region_and_adds_the_baseline():
  rows = [dict(arch=f"{h}_{b}_4_512_4", mlm_accuracy=str(h / 1000 + b / 1e5), latency_ms_median=str(h / 100 + b / 1e3))
          for h in (128, 256, 384, 512) for b in (64, 96, 128, 160)]
  picks = fidelity.choose(rows, 5)
  assert len(picks) == 6 and picks[-1] == space_lib.MOBILEBERT.name
  lat = {r["arch"]: float(r["latency_ms_median"]) for r in rows}
  assert [lat[p] for p in picks[:5]] == sorted(lat[p] for p in picks[:5])
  assert lat[picks[0]] == min(lat.values()) and lat[picks[4]] == max(lat.values())  # the ends of the front


def test_fraction_schedules_scale_the_tables_flash_run():
  cfg = configs.load_config("tabular")
  assert fidelity.schedule_overrides(cfg, 0.05) == [
      f"distill.flash.pretrain_steps={cfg.distill.flash.pretrain_steps}",
      f"distill.flash.warmup_steps={cfg.distill.flash.warmup_steps}"]
  assert fidelity.schedule_overrides(cfg, 0.0125)[0] == "distill.flash.pretrain_steps=5"
  # 5% of the regular pre-training steps, as in 003 4.7
  assert cfg.distill.flash.pretrain_steps == 0.05 * cfg.distill.regular.pretrain_steps
  assert all(t != "flash_0.05" for _, t in fidelity.job_list(cfg, ["a"]))


def test_collect_analyse_and_plot_from_the_run_files(tmp_path):
  """The export path on hand-written run files: the regular run reverses one pair of the flash ranking."""
  import json
  cfg = configs.load_config("tabular")
  archs = ["128_64_4_384_2", "256_64_4_384_2", "384_64_4_384_2", space_lib.MOBILEBERT.name]
  flash = dict(zip(archs, [0.05, 0.06, 0.07, 0.072]))
  regular = dict(zip(archs, [0.09, 0.10, 0.12, 0.11]))
  table_rows = {a: dict(latency_ms_median=str(1.0 + i)) for i, a in enumerate(archs)}
  for a in archs:
    (tmp_path / "table" / "archs" / a).mkdir(parents=True)
    (tmp_path / "fid" / a).mkdir(parents=True)
    (tmp_path / "table" / "archs" / a / "flash.json").write_text(json.dumps(dict(mlm_accuracy=flash[a], steps=30, wall_s=5)))
    (tmp_path / "fid" / a / "regular.json").write_text(json.dumps(dict(mlm_accuracy=regular[a], steps=592, distill_s=60)))
  curve = fidelity.curve_archs(cfg, archs)
  assert curve == [archs[0], archs[1], archs[-1]]
  rows, missing = fidelity.collect(cfg, archs, table_rows, str(tmp_path / "table"), str(tmp_path / "fid"))
  assert sorted(missing) == sorted(f"{a}/flash_{f}" for a in curve for f in (0.0125, 0.025, 0.1))
  for a in curve:
    for f, steps in ((0.0125, 8), (0.025, 15), (0.1, 59)):
      (tmp_path / "fid" / a / f"flash_{f}.json").write_text(json.dumps(dict(mlm_accuracy=0.04, steps=steps, distill_s=3)))
  rows, missing = fidelity.collect(cfg, archs, table_rows, str(tmp_path / "table"), str(tmp_path / "fid"))
  assert not missing
  summary = fidelity.analyse(cfg, rows)
  assert summary["pairwise_accuracy"] == 5 / 6 and round(summary["kendall_tau"], 6) == round(4 / 6, 6)
  assert list(summary["curves"]) == curve and summary["curves"][curve[0]]["regular"]["steps"] == 592
  fidelity.plot(cfg, rows, summary, str(tmp_path))
  assert (tmp_path / "fidelity_steps.png").stat().st_size > 0 and (tmp_path / "fidelity_shift.png").stat().st_size > 0
