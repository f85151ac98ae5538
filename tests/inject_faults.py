"""Proof that the suite catches the faults of issue 12: each plausible slip below is put into a
scratch copy of src/, the tests meant to catch it run against that copy (they must fail) and
against the real src/ (they must pass). Run: python tests/inject_faults.py (about a minute)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WT = str(Path(__file__).resolve().parents[1])
FAULTS = [
    ("eps ignored by exact norms", "mamlkit/exact_norm.py",
     "return centered * torch.rsqrt(var + eps)", "return centered * torch.rsqrt(var + 1e-5)",
     "tests/test_gradients.py", "eps"),
    ("baseline fitted on rewards", "mamlkit/rl/advantages.py",
     "fit_linear_baseline(episodes, returns)", "fit_linear_baseline(episodes, rewards)",
     "tests/test_rl.py", "advantages"),
    ("normalised by variance", "mamlkit/rl/advantages.py",
     "adv = (adv - mean) / (var.sqrt() + 1e-8) * mask", "adv = (adv - mean) / (var + 1e-8) * mask",
     "tests/test_rl.py", "advantages or normalised"),
    ("adapt defaults to inner_steps", "mamlkit/maml.py",
     "steps = self.eval_inner_steps if steps is None else check_steps(steps, \"steps\")\n        constants",
     "steps = self.inner_steps if steps is None else check_steps(steps, \"steps\")\n        constants",
     "tests/test_api.py", "eval_inner_steps_by_default"),
    ("MAML++ weights anneal at the wrong rate", "mamlkit/algorithms/mamlpp.py",
     "decay = 1.0 / steps / msl_epochs", "decay = 1.0 / msl_epochs",
     "tests/test_variants.py", "importance or current_epoch or mamlpp"),
    ("evaluate uses the wrong per-step BN set", "mamlkit/functional.py",
     "        prediction = at(s)(params, query_x)", "        prediction = at(0)(params, query_x)",
     "tests/test_variants.py", "own_batchnorm or evaluate"),
]

for name, path, old, new, test, selector in FAULTS:
    scratch = os.path.join(tempfile.mkdtemp(), "src")
    shutil.copytree(f"{WT}/src", scratch)
    text = open(f"{scratch}/{path}").read()
    assert text.count(old) == 1, (name, text.count(old))
    open(f"{scratch}/{path}", "w").write(text.replace(old, new))
    env = {**os.environ, "PYTHONPATH": scratch, "OMP_NUM_THREADS": "1"}
    faulty = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", selector],
                            cwd=WT, env=env, capture_output=True, text=True)
    clean = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", selector],
                           cwd=WT, env={**env, "PYTHONPATH": f"{WT}/src"}, capture_output=True, text=True)
    shutil.rmtree(os.path.dirname(scratch))
    failed = [sum(line.startswith("FAILED") for line in run.stdout.splitlines()) for run in (faulty, clean)]
    print(f"{name:42s} failing tests with the fault: {failed[0]}, without: {failed[1]}")
    assert failed[0] > 0 and failed[1] == 0 and clean.returncode == 0, name
