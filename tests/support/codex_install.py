"""Install released Codex CLI versions from npm into a cache outside the repository, once.

``ensure_codex("0.169.0")`` returns the ``codex`` launcher (``node_modules/.bin/codex``) of
``<cache>/<version>``, installing ``@openai/codex@<version>`` there first unless the launcher
already answers ``--version`` with that version. The cache is ``$CODEX_LANGFUSE_CACHE`` or
``~/.cache/codex-langfuse/npm``. A lock file per version keeps parallel test processes from
installing the same version twice.

After 0.98.0 the package is a small launcher whose native binary is in an optional platform
package (``@openai/codex@<version>-linux-x64``); npm skips optional dependencies when told to
(``--omit=optional``, ``npm_config_omit``), so when the launcher cannot start after the install
the platform package is installed explicitly under the alias the launcher looks for.
Up to 0.98 one tarball holds the binaries of every platform.

CLI (run by CI before the tests): ``python -m tests.support.codex_install 0.169.0 0.42.0``.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PACKAGE = "@openai/codex"
INSTALL_TIMEOUT_SECONDS = 900

# The launcher's own mapping (bin/codex.js): npm platform suffix -> alias it resolves.
_PLATFORM_SUFFIX = {
    ("linux", "x86_64"): "linux-x64",
    ("linux", "aarch64"): "linux-arm64",
    ("linux", "arm64"): "linux-arm64",
    ("darwin", "x86_64"): "darwin-x64",
    ("darwin", "arm64"): "darwin-arm64",
}


class CodexInstallError(RuntimeError):
    pass


def cache_root() -> Path:
    configured = os.environ.get("CODEX_LANGFUSE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "codex-langfuse" / "npm"


def launcher_path(version: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / version / "node_modules" / ".bin" / "codex"


def installed_version(launcher: Path) -> str | None:
    """The version the launcher reports (``codex-cli 0.169.0`` -> ``0.169.0``), or None if it cannot run."""
    if not launcher.exists():
        return None
    try:
        completed = subprocess.run(
            [str(launcher), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    words = completed.stdout.split()
    return words[-1] if words else None


@contextmanager
def _version_lock(prefix: Path) -> Iterator[None]:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f".{prefix.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _npm(*args: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise CodexInstallError("npm is not installed (Node.js >= 16 with npm is needed to install Codex)")
    completed = subprocess.run(
        [npm, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    if completed.returncode != 0:
        raise CodexInstallError(
            f"`npm {' '.join(args)}` failed with exit code {completed.returncode}:\n{completed.stderr[-4000:]}"
        )


def _platform_suffix() -> str:
    key = (sys.platform, platform.machine().lower())
    try:
        return _PLATFORM_SUFFIX[key]
    except KeyError:
        raise CodexInstallError(f"no Codex platform package for {key}") from None


def _install(version: str, prefix: Path) -> None:
    if prefix.exists():
        shutil.rmtree(prefix)  # a half-finished or broken install: start clean
    prefix.mkdir(parents=True)
    spec = f"{PACKAGE}@{version}"
    # --include=optional wins over an inherited npm_config_omit=optional; --save-exact pins the
    # version in the prefix's package.json so no later npm call there can move it.
    _npm("install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact", "--include=optional", spec)
    if installed_version(launcher_path(version, prefix.parent)) == version:
        return
    suffix = _platform_suffix()
    alias = f"{PACKAGE}-{suffix}@npm:{PACKAGE}@{version}-{suffix}"
    _npm("install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact", alias)


def ensure_codex(version: str) -> Path:
    """The ``codex`` launcher of ``version``, installed into the cache if it is not there yet."""
    launcher = launcher_path(version)
    if installed_version(launcher) == version:
        return launcher
    prefix = launcher.parents[2]
    with _version_lock(prefix):
        if installed_version(launcher) == version:  # another process installed it while we waited
            return launcher
        _install(version, prefix)
        reported = installed_version(launcher)
        if reported != version:
            raise CodexInstallError(f"installed {PACKAGE}@{version} into {prefix}, but `codex --version` says {reported!r}")
    return launcher


def main(argv: list[str] | None = None) -> int:
    versions = argv if argv is not None else sys.argv[1:]
    if not versions:
        print("usage: python -m tests.support.codex_install VERSION [VERSION ...]", file=sys.stderr)
        return 2
    for version in versions:
        started = time.monotonic()
        try:
            launcher = ensure_codex(version)
        except CodexInstallError as error:
            print(f"codex {version}: {error}", file=sys.stderr)
            return 1
        print(f"codex {version}: {launcher} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
