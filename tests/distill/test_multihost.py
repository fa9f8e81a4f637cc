"""Two processes on 127.0.0.1 (2 CPU devices each, gloo collectives) distill one student.

Checks the multi-controller path for real: jax.distributed from AD_* variables, per-host data
shards assembled into global batches, orbax checkpoints written jointly, one host logging,
and both hosts ending with the same evaluation.
"""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_distillation(tmp_path, tiny_teacher):
  port = str(_free_port())
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "distill", "multihost_worker.py"), str(i),
                             port, str(tmp_path), tiny_teacher], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=500)
    assert p.returncode == 0, out[-3000:]
    outs.append(out)
  metrics = [json.loads(next(l for l in o.splitlines() if l.startswith("METRICS "))[8:]) for o in outs]
  assert metrics[0]["mesh"] == {"data": 4, "model": 1}
  for k in ("mlm_accuracy", "nsp_accuracy", "masked_tokens", "steps"):
    assert metrics[0][k] == metrics[1][k], k
  with open(tmp_path / "losses.jsonl") as f:
    steps = [json.loads(l)["step"] for l in f]
  assert steps == list(range(7)), "host 0 alone logs every step once"
  assert (tmp_path / "checkpoints" / "7").exists()
