"""What a Codex command line tells us about a run: model and its parameters, prompt, working
directory, resumed thread.

`parse_codex_command` is a pure function of argv. The file reads (config.toml, the npm
package.json, .git) are separate functions, called after Codex has been started so they never
delay it. Nothing here runs a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

# Options that take a value, from `codex --help`, `codex exec --help` and `codex exec
# resume|fork|review --help` of Codex 0.169.0 (clap, codex-rs/exec/src/cli.rs and
# codex-rs/utils/cli). Any other option is taken to be a flag: an unknown future option that takes
# a separate value would make us read its value as the prompt (the run itself is not affected).
LONG_OPTIONS_WITH_VALUE = frozenset({
    "--config", "--enable", "--disable", "--remote", "--remote-auth-token-env", "--image", "--model",
    "--local-provider", "--profile", "--sandbox", "--cd", "--add-dir", "--ask-for-approval",
    "--thread-source", "--cyber-access-program", "--output-schema", "--color", "--output-last-message",
    "--base", "--commit", "--title",
})
SHORT_OPTIONS_WITH_VALUE = {
    "c": "--config", "i": "--image", "m": "--model", "p": "--profile", "s": "--sandbox",
    "C": "--cd", "a": "--ask-for-approval", "o": "--output-last-message",
}
# Codex settings shown as the generations' model parameters: config key -> parameter name.
MODEL_PARAMETER_KEYS = {
    "model_reasoning_effort": "reasoning_effort",
    "model_reasoning_summary": "reasoning_summary",
    "service_tier": "service_tier",
    "sandbox_mode": "sandbox_mode",
    "approval_policy": "approval_policy",
}
EXEC_COMMANDS = frozenset({"exec", "e"})
EXEC_SUBCOMMANDS = frozenset({"resume", "fork", "review", "help"})
_CODEX_EXECUTABLES = frozenset({"codex", "codex.js", "codex.exe", "codex.cmd"})
_NPM_PLATFORM_SUFFIX = re.compile(r"-(linux|darwin|win32)-(x64|arm64)$")


@dataclass
class CodexCommand:
    """The parts of a `codex exec ...` command line that matter for a trace."""

    executable: str | None = None        # argv element that is Codex itself
    is_exec: bool = False                # `codex exec` / `codex e` (else: something we do not trace specially)
    subcommand: str | None = None        # None, "resume", "fork", "review" or "help"
    model: str | None = None             # -m / --model
    config_model: str | None = None      # -c model=... (TOML value)
    profile: str | None = None           # -p / --profile, or -c profile=...
    prompt: str | None = None            # the PROMPT argument (None when absent or "-")
    prompt_from_stdin: bool = False      # Codex reads its prompt from stdin (when stdin is not a TTY)
    cwd: str | None = None               # -C / --cd
    resume_session_id: str | None = None  # `resume SESSION_ID` or `fork SESSION_ID`
    resume_last: bool = False            # `resume --last`
    ignore_user_config: bool = False     # --ignore-user-config
    config_overrides: list[str] = field(default_factory=list)
    # reasoning effort and summary, service tier, sandbox and approval policy, as the arguments say
    # them (flags over -c overrides); resolve_model_parameters adds what the config files say
    model_parameters: dict[str, str] = field(default_factory=dict)


def parse_config_override(raw: str) -> tuple[str, Any] | None:
    """`key=value` of `-c`: the value parsed as TOML, else the raw string without surrounding
    quotes (what Codex does)."""
    key, equals, value = raw.partition("=")
    key, value = key.strip(), value.strip()
    if not equals or not key:
        return None
    try:
        return key, tomllib.loads(f"_x_ = {value}")["_x_"]
    except tomllib.TOMLDecodeError:
        return key, value.strip("\"'")


def codex_executable_index(argv: Sequence[str]) -> int:
    """Where Codex is in argv: the first element named like it (`env X=1 codex ...`,
    `npx @openai/codex ...`, `node .../codex.js ...`), else the first element."""
    for index, arg in enumerate(argv):
        if os.path.basename(arg) in _CODEX_EXECUTABLES or arg.startswith("@openai/codex"):
            return index
    return 0


def parse_codex_command(argv: Sequence[str]) -> CodexCommand:
    command = CodexCommand()
    if not argv:
        return command
    start = codex_executable_index(argv)
    command.executable = argv[start]
    level = "root"  # root -> exec -> resume/fork/review/help
    positionals: list[str] = []
    only_positionals = False
    index = start + 1
    from_flags: dict[str, str] = {}       # -s, -a, --full-auto, --dangerously-bypass-...: win over -c
    from_overrides: dict[str, str] = {}

    def take_value(name: str, value: str | None) -> None:
        if value is None:
            return
        if name == "--sandbox":
            from_flags["sandbox_mode"] = value
        elif name == "--ask-for-approval":
            from_flags["approval_policy"] = value
        elif name == "--model":
            command.model = value
        elif name == "--profile":
            command.profile = value
        elif name == "--cd":
            command.cwd = value
        elif name == "--config":
            command.config_overrides.append(value)
            parsed = parse_config_override(value)
            if parsed and isinstance(parsed[1], str):
                if parsed[0] == "model":
                    command.config_model = parsed[1]
                elif parsed[0] == "profile" and command.profile is None:
                    command.profile = parsed[1]
                elif parsed[0] in MODEL_PARAMETER_KEYS:
                    from_overrides[MODEL_PARAMETER_KEYS[parsed[0]]] = parsed[1]

    while index < len(argv):
        arg = argv[index]
        index += 1
        if only_positionals or arg == "-" or not arg.startswith("-"):
            if level == "root":
                if arg not in EXEC_COMMANDS or only_positionals:
                    return command  # interactive codex or another subcommand: nothing to trace specially
                level = "exec"
                command.is_exec = True
            elif level == "exec" and not positionals and not only_positionals and arg in EXEC_SUBCOMMANDS:
                level = arg
                command.subcommand = arg
            else:
                positionals.append(arg)
            continue
        if arg == "--":
            only_positionals = True
            continue
        if arg.startswith("--"):
            name, equals, value = arg.partition("=")
            if name in LONG_OPTIONS_WITH_VALUE:
                if not equals:
                    value = argv[index] if index < len(argv) else None
                    index += 1
                take_value(name, value)
                if name == "--image" and level in ("root", "exec"):
                    index = _skip_more_values(argv, index)
            elif name == "--last":
                command.resume_last = True
            elif name == "--ignore-user-config":
                command.ignore_user_config = True
            elif name == "--dangerously-bypass-approvals-and-sandbox":
                from_flags.update(sandbox_mode="danger-full-access", approval_policy="never")
            elif name == "--full-auto":  # up to Codex 0.98: "-a on-request, --sandbox workspace-write"
                from_flags.update(sandbox_mode="workspace-write", approval_policy="on-request")
            continue
        # short options: a cluster of flags, possibly ending in one that takes a value (-mgpt-5, -m=x)
        for position in range(1, len(arg)):
            name = SHORT_OPTIONS_WITH_VALUE.get(arg[position])
            if name is None:
                continue
            rest = arg[position + 1:]
            if rest:
                value = rest[1:] if rest.startswith("=") else rest
            else:
                value = argv[index] if index < len(argv) else None
                index += 1
            take_value(name, value)
            if name == "--image" and level in ("root", "exec"):
                index = _skip_more_values(argv, index)
            break

    command.model_parameters = {**from_overrides, **from_flags}
    if not command.is_exec:
        return command
    prompt: str | None = None
    if level == "exec":
        prompt = positionals[0] if positionals else None
        command.prompt_from_stdin = prompt is None or prompt == "-"
    elif level == "resume":
        if command.resume_last and len(positionals) == 1:
            prompt = positionals[0]
        else:
            command.resume_session_id = positionals[0] if positionals else None
            prompt = positionals[1] if len(positionals) > 1 else None
        command.prompt_from_stdin = prompt is None or prompt == "-"
    elif level == "fork":
        command.resume_session_id = positionals[0] if positionals else None
        prompt = positionals[1] if len(positionals) > 1 else None
        command.prompt_from_stdin = prompt is None or prompt == "-"
    elif level == "review":
        prompt = positionals[0] if positionals else None
        command.prompt_from_stdin = prompt == "-"  # without a prompt, review has its own default
    command.prompt = None if prompt == "-" else prompt
    return command


def _skip_more_values(argv: Sequence[str], index: int) -> int:
    # `-i/--image` of `codex` and `codex exec` takes one or more values (clap `num_args = 1..`)
    while index < len(argv) and (argv[index] == "-" or not argv[index].startswith("-")):
        index += 1
    return index


# ---- file reads (call after Codex was started) ----

def codex_home(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("CODEX_HOME") or os.path.join(os.path.expanduser("~"), ".codex"))


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def resolve_model(command: CodexCommand, environ: Mapping[str, str] | None = None) -> str | None:
    """The model Codex will use: -m, then -c model=..., then the profile's model (the file
    `$CODEX_HOME/<profile>.config.toml` of Codex >= 0.16x, else `[profiles.<profile>]` of
    config.toml), then `model` of `$CODEX_HOME/config.toml`."""
    if command.model:
        return command.model
    if command.config_model:
        return command.config_model
    home = codex_home(environ)
    config = {} if command.ignore_user_config else _read_toml(home / "config.toml")
    profile = command.profile or (config.get("profile") if isinstance(config.get("profile"), str) else None)
    if profile:
        profile_model = _read_toml(home / f"{profile}.config.toml").get("model")
        if not isinstance(profile_model, str):
            profiles = config.get("profiles")
            table = profiles.get(profile) if isinstance(profiles, dict) else None
            profile_model = table.get("model") if isinstance(table, dict) else None
        if isinstance(profile_model, str) and profile_model:
            return profile_model
    model = config.get("model")
    return model if isinstance(model, str) and model else None


def resolve_model_parameters(command: CodexCommand, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The run's model parameters: what the arguments say, then the profile's settings (its
    `$CODEX_HOME/<profile>.config.toml`, else `[profiles.<profile>]`), then `config.toml`'s."""
    home = codex_home(environ)
    config = {} if command.ignore_user_config else _read_toml(home / "config.toml")
    layers = [config]
    profile = command.profile or (config.get("profile") if isinstance(config.get("profile"), str) else None)
    if profile:
        profiles = config.get("profiles")
        table = profiles.get(profile) if isinstance(profiles, dict) else None
        layers.append(table if isinstance(table, dict) else {})
        layers.append(_read_toml(home / f"{profile}.config.toml"))
    parameters: dict[str, str] = {}
    for layer in layers:  # later layers win
        for key, name in MODEL_PARAMETER_KEYS.items():
            if isinstance(layer.get(key), str) and layer[key]:
                parameters[name] = layer[key]
    parameters.update(command.model_parameters)
    return parameters


def codex_version(executable: str | None, path: str | None = None) -> str | None:
    """Codex's version from the npm package it was installed from (no subprocess): walk up from the
    resolved executable to a package.json named @openai/codex. None for other installs."""
    if not executable:
        return None
    found = shutil.which(executable, path=path)
    if found is None:
        return None
    directory = os.path.dirname(os.path.realpath(found))
    while True:
        manifest = os.path.join(directory, "package.json")
        if os.path.isfile(manifest):
            try:
                with open(manifest, encoding="utf-8") as file:
                    package = json.load(file)
            except (OSError, ValueError):
                package = None
            if isinstance(package, dict) and package.get("name") == "@openai/codex" and isinstance(package.get("version"), str):
                # the native binary lives in a platform package versioned like 0.169.0-linux-x64
                return _NPM_PLATFORM_SUFFIX.sub("", package["version"])
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def git_repository(directory: str | os.PathLike) -> dict | None:
    """{"url", "branch", "commit"} of the git checkout containing `directory`, read from the files in
    .git (no subprocess). Credentials in the remote URL are removed. None outside a checkout."""
    git_dir = _find_git_dir(Path(os.path.abspath(directory)))
    if git_dir is None:
        return None
    common_dir = git_dir
    common = _read_text(git_dir / "commondir")
    if common:
        common_dir = (git_dir / common.strip()).resolve()
    head = (_read_text(git_dir / "HEAD") or "").strip()
    branch = commit = None
    if head.startswith("ref:"):
        ref = head[4:].strip()
        branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else ref
        commit = _resolve_ref(git_dir, common_dir, ref)
    elif re.fullmatch(r"[0-9a-f]{40,64}", head):
        commit = head
    remotes, branch_remotes = _parse_git_config(_read_text(common_dir / "config") or "")
    remote_name = branch_remotes.get(branch) if branch else None
    if remote_name not in remotes:
        remote_name = "origin" if "origin" in remotes else next(iter(remotes), None)
    repository = {
        "url": _without_credentials(remotes[remote_name]) if remote_name else None,
        "branch": branch,
        "commit": commit,
    }
    repository = {key: value for key, value in repository.items() if value}
    return repository or None


def _find_git_dir(directory: Path) -> Path | None:
    for candidate in (directory, *directory.parents):
        dot_git = candidate / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():
            content = _read_text(dot_git) or ""
            if content.startswith("gitdir:"):
                return (candidate / content[len("gitdir:"):].strip()).resolve()
            return None
    return None


def _resolve_ref(git_dir: Path, common_dir: Path, ref: str) -> str | None:
    for base in (git_dir, common_dir):
        value = _read_text(base / ref)
        if value and re.fullmatch(r"[0-9a-f]{40,64}", value.strip()):
            return value.strip()
    for line in (_read_text(common_dir / "packed-refs") or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == ref:
            return parts[0]
    return None


def _parse_git_config(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """remote name -> url, and branch name -> its remote, from a .git/config text."""
    remotes: dict[str, str] = {}
    branch_remotes: dict[str, str] = {}
    section: tuple[str, str] | None = None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        header = re.fullmatch(r'\[\s*(remote|branch)\s+"(.+)"\s*\]', line)
        if header:
            section = (header.group(1), header.group(2))
            continue
        if line.startswith("["):
            section = None
            continue
        if section is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"')
        if section[0] == "remote" and key == "url" and section[1] not in remotes:
            remotes[section[1]] = value
        elif section[0] == "branch" and key == "remote":
            branch_remotes[section[1]] = value
    return remotes, branch_remotes


def _without_credentials(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or "@" not in parts.netloc:
        return url  # scp-like git@host:path carries no secret
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
