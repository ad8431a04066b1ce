"""The sdist is complete: built, unpacked elsewhere and installed, its own tests run there against
the installed package (not this checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

from tests.support.stack import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Pure, unit and one whole-pipeline test: enough to show the tests, their fixtures and support
# code travel with the sdist and run against what it installs.
SAMPLE = ["tests/test_settings.py", "tests/test_late_and_reused.py", "tests/test_fold.py",
          "tests/test_pipeline.py::test_one_run_becomes_its_trace_exactly_once"]


def test_the_sdist_carries_tests_that_run_against_what_it_installs(tmp_path):
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [sdist] = (tmp_path / "dist").glob("codex_langfuse-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    [source] = (tmp_path / "unpacked").iterdir()
    assert (source / "tests" / "fixtures" / "codex" / "real_run_0.169.0_full.jsonl").is_file()
    assert (source / "ingest" / "prices.json").is_file()

    target = tmp_path / "installed"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                                str(sdist)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import codex_langfuse.ingest as i; print(i.__file__)"],
                           cwd=source, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SAMPLE], cwd=source, env=env,
                           capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0, tests.stdout[-4000:]
    assert " passed" in tests.stdout.splitlines()[-1] and "failed" not in tests.stdout.splitlines()[-1]
