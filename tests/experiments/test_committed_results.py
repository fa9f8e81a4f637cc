"""Results committed to the repository name no place on the machine that produced them."""

import os
import re

from ad import files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# an absolute path of a machine: a quoted or spaced /home/..., /root/..., /tmp/..., /work/..., /Users/...
MACHINE_PATH = re.compile(r"""(^|["'\s(=])/(home|root|tmp|work|Users|mnt|var)/""")


def test_no_committed_result_holds_an_absolute_path_of_the_machine_it_ran_on():
  results = os.path.join(ROOT, "experiments", "results")
  found = []
  for d, _, names in os.walk(results):
    for n in names:
      if n.endswith((".json", ".csv", ".md")):
        with open(os.path.join(d, n), errors="replace") as f:
          found += [f"{os.path.relpath(os.path.join(d, n), ROOT)}:{i}" for i, line in enumerate(f, 1)
                    if MACHINE_PATH.search(line)]
  assert not found, f"absolute paths in committed results (write them with files.portable): {found[:10]}"


def test_portable_paths_are_relative_to_the_repository_the_cache_and_home(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
  repo = str(tmp_path / "repo")
  got = files.portable(dict(run=f"{repo}/runs/a", teacher=f"{tmp_path}/home/.cache/autodistill-jax/teachers/t",
                            notes=[f"{tmp_path}/home/notes.txt", "/etc/hosts", "relative/x", 3]), repo)
  assert got == dict(run="runs/a", teacher="<cache>/teachers/t", notes=["~/notes.txt", "/etc/hosts", "relative/x", 3])
