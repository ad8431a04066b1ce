"""Build the TypeScript example (examples/typescript) outside the repository, for the tests.

``built_example()`` copies the example into ``<cache>/<digest of its package-lock.json>``,
installs its npm packages there once (``npm ci``, from the committed lock file), compiles it with
its own TypeScript whenever its sources changed (``tsc``: a type error fails the test) and returns
the directory, whose
``dist/main.js`` node runs. The cache is ``$CODEX_LANGFUSE_CACHE`` (or ``~/.cache/codex-langfuse``)
``/examples``; a lock file keeps parallel test processes from installing at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "typescript"
INSTALL_TIMEOUT_SECONDS = 600


class ExampleBuildError(RuntimeError):
    pass


def cache_root() -> Path:
    configured = os.environ.get("CODEX_LANGFUSE_CACHE")
    base = Path(configured).expanduser().parent if configured else Path.home() / ".cache" / "codex-langfuse"
    return base / "examples"


def _run(command: list[str], cwd: Path) -> None:
    executable = shutil.which(command[0])
    if executable is None:
        raise ExampleBuildError(f"{command[0]} is not installed (Node.js >= 20.6 with npm runs the example)")
    done = subprocess.run([executable, *command[1:]], cwd=cwd, capture_output=True, timeout=INSTALL_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise ExampleBuildError(f"{' '.join(command)} failed ({done.returncode}):\n"
                                f"{done.stdout.decode(errors='replace')[-3000:]}{done.stderr.decode(errors='replace')[-3000:]}")


def built_example() -> Path:
    lock = (EXAMPLE / "package-lock.json").read_bytes()
    target = cache_root() / f"typescript-{hashlib.sha256(lock).hexdigest()[:16]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        target.mkdir(exist_ok=True)
        for name in ("package.json", "package-lock.json", "tsconfig.json"):
            shutil.copyfile(EXAMPLE / name, target / name)
        shutil.rmtree(target / "src", ignore_errors=True)
        shutil.copytree(EXAMPLE / "src", target / "src")
        if not (target / "node_modules" / ".package-lock.json").exists():
            _run(["npm", "ci", "--no-audit", "--no-fund"], target)
        stamp = target / "dist" / ".source-digest"
        if not stamp.exists() or stamp.read_text() != _source_digest():  # compile (and type-check) once per change
            shutil.rmtree(target / "dist", ignore_errors=True)
            _run(["npm", "run", "--silent", "build"], target)
            stamp.write_text(_source_digest())
    return target


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([EXAMPLE / "tsconfig.json", *(EXAMPLE / "src").rglob("*.ts")]):
        digest.update(path.relative_to(EXAMPLE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
