"""The optimizer environment (.venv-opt: trieste, TF 2.18, numpy<2) runs one real EHVI step."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT_PYTHON = os.path.join(ROOT, ".venv-opt", "bin", "python")


def test_trieste_ehvi_step_in_the_optimizer_environment():
  assert os.path.exists(OPT_PYTHON), f"{OPT_PYTHON} missing: run `make setup` to create the optimizer environment"
  proc = subprocess.run([OPT_PYTHON, os.path.join(ROOT, "ad", "search", "trieste_check.py")],
                        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["trieste"] == "4.6.1" and r["tensorflow"].startswith("2.18") and r["numpy"].startswith("1.")
  assert r["in_space"] and len(r["suggestion"]) == 1
