"""The device check: on CPU it has nothing to check; its steps are runnable commands."""

import importlib.util
import json

from ad import configs
from profiling import device_check


def test_on_cpu_there_is_nothing_to_check(tmp_path, capsys):
  assert device_check.main(["--out", str(tmp_path)]) == 0
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["backend"] == "cpu" and "nothing to check" in report["note"] and report["steps"] == {}
  assert "nothing to check" in capsys.readouterr().out


def test_every_step_names_a_real_module_and_valid_config_overrides(tmp_path):
  for name, cmd, limit in device_check.steps("python", "ad", str(tmp_path)):
    assert 0 < limit <= 300, name
    if "-m" in cmd:
      module = cmd[cmd.index("-m") + 1]
      assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
    if "--set" in cmd:
      overrides = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
      configs.load_config("quickstart", overrides)  # a mistyped key raises here
    if "-c" in cmd:
      compile(cmd[cmd.index("-c") + 1], name, "exec")
  assert sum(limit for _, _, limit in device_check.steps("python", "ad", str(tmp_path))) <= 600  # at most 10 minutes in all
