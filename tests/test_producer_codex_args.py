"""What the CLI learns from Codex's own command line, config and installation."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from codex_langfuse.producer.codex_args import (
    LONG_OPTIONS_WITH_VALUE, codex_version, git_repository, parse_codex_command, parse_config_override, resolve_model,
    resolve_model_parameters,
)

REAL_CODEX = Path("/root/.cache/codex-langfuse/npm/0.169.0/node_modules/.bin/codex")


def parse(command: str):
    import shlex

    return parse_codex_command(shlex.split(command))


def test_prompt_argument_and_options_with_values():
    command = parse("codex exec --json -m gpt-5 -C /tmp/w -o last.txt -s workspace-write --color never 'fix the bug'")
    assert command.is_exec and command.subcommand is None
    assert (command.model, command.cwd, command.prompt, command.prompt_from_stdin) == ("gpt-5", "/tmp/w", "fix the bug", False)


@pytest.mark.parametrize("command", ["codex exec --json", "codex exec --json -", "codex e -"])
def test_prompt_from_stdin(command):
    parsed = parse(command)
    assert parsed.is_exec and parsed.prompt is None and parsed.prompt_from_stdin


def test_every_option_that_takes_a_value_is_skipped_with_its_value():
    parsed = parse(
        "codex -c a=1 --enable x --disable y --remote ws://h --remote-auth-token-env T -i img.png -m m1 "
        "--local-provider ollama -p prof -s read-only -C dir --add-dir d2 -a never exec --thread-source s "
        "--cyber-access-program standard --output-schema s.json --color always -o out --oss --json "
        "--skip-git-repo-check --ephemeral PROMPT"
    )
    assert parsed.prompt == "PROMPT" and parsed.model == "m1" and parsed.profile == "prof" and parsed.cwd == "dir"


@pytest.mark.parametrize("command,model", [
    ("codex exec -mgpt-5-mini p", "gpt-5-mini"),
    ("codex exec -m=o3 p", "o3"),
    ("codex exec --model=o4-mini p", "o4-mini"),
    ("codex -m o3 exec --model gpt-5 p", "gpt-5"),
])
def test_model_option_spellings(command, model):
    assert parse(command).model == model


@pytest.mark.parametrize("override,expected", [
    ('model="o3"', ("model", "o3")),
    ("model=o3", ("model", "o3")),
    ("model=gpt-5-codex", ("model", "gpt-5-codex")),
    (" model = 'o4-mini' ", ("model", "o4-mini")),
    ("sandbox_permissions=[\"disk-full-read-access\"]", ("sandbox_permissions", ["disk-full-read-access"])),
    ("retries=3", ("retries", 3)),
    ("novalue", None),
])
def test_config_override_values_are_toml_or_literal(override, expected):
    assert parse_config_override(override) == expected


def test_config_overrides_for_model_and_profile():
    parsed = parse("codex exec -c 'model=\"o3\"' --config profile=fast -c other=1 p")
    assert (parsed.config_model, parsed.profile, parsed.prompt) == ("o3", "fast", "p")
    assert parsed.config_overrides == ['model="o3"', "profile=fast", "other=1"]


def test_images_take_several_values_at_exec_level():
    parsed = parse("codex exec -i a.png b.png -- 'the prompt'")
    assert parsed.prompt == "the prompt"
    assert parse("codex exec --image a.png,b.png 'p'").prompt is None  # clap would take 'p' as an image too


@pytest.mark.parametrize("command,session,prompt,from_stdin,last", [
    ("codex exec resume 0199a-thread 'continue'", "0199a-thread", "continue", False, False),
    ("codex exec resume 0199a-thread", "0199a-thread", None, True, False),
    ("codex exec resume --last 'continue'", None, "continue", False, True),
    ("codex exec resume --last", None, None, True, True),
    ("codex exec --json resume --last -i shot.png -m o3 next", None, "next", False, True),
    ("codex exec fork 0199a-thread 'try again'", "0199a-thread", "try again", False, False),
    ("codex exec resume 0199a-thread -", "0199a-thread", None, True, False),
])
def test_resume_and_fork(command, session, prompt, from_stdin, last):
    parsed = parse(command)
    assert (parsed.resume_session_id, parsed.prompt, parsed.prompt_from_stdin, parsed.resume_last) == (session, prompt, from_stdin, last)


def test_review_reads_stdin_only_for_dash():
    assert parse("codex exec review --uncommitted").prompt_from_stdin is False
    assert parse("codex exec review -").prompt_from_stdin is True
    assert parse("codex exec review --base main 'focus on tests'").prompt == "focus on tests"


def test_a_subcommand_word_after_double_dash_is_the_prompt():
    parsed = parse("codex exec -- resume")
    assert parsed.subcommand is None and parsed.prompt == "resume"


@pytest.mark.parametrize("command,executable", [
    ("env FOO=1 /opt/bin/codex exec p", "/opt/bin/codex"),
    ("npx @openai/codex exec p", "@openai/codex"),
    ("node /x/bin/codex.js exec p", "/x/bin/codex.js"),
    ("/usr/local/bin/my-codex-wrapper exec p", "/usr/local/bin/my-codex-wrapper"),
])
def test_codex_is_found_behind_launchers(command, executable):
    parsed = parse(command)
    assert parsed.executable == executable and parsed.is_exec and parsed.prompt == "p"


def test_interactive_and_other_subcommands_are_not_exec():
    assert not parse("codex 'hello'").is_exec
    assert not parse("codex login").is_exec
    assert not parse("codex").is_exec


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_model_resolution_order(tmp_path):
    environ = {"CODEX_HOME": str(tmp_path)}
    write(tmp_path / "config.toml", 'model = "base-model"\n[profiles.legacy]\nmodel = "legacy-model"\n')
    write(tmp_path / "fast.config.toml", 'model = "fast-model"\n')
    assert resolve_model(parse("codex exec p"), environ) == "base-model"
    assert resolve_model(parse("codex exec -p legacy p"), environ) == "legacy-model"
    assert resolve_model(parse("codex exec -p fast p"), environ) == "fast-model"
    assert resolve_model(parse("codex exec -p fast -c model=o3 p"), environ) == "o3"
    assert resolve_model(parse("codex exec -p fast -c model=o3 -m gpt-5 p"), environ) == "gpt-5"
    assert resolve_model(parse("codex exec --ignore-user-config p"), environ) is None
    write(tmp_path / "config.toml", 'profile = "legacy"\nmodel = "base-model"\n[profiles.legacy]\nmodel = "legacy-model"\n')
    assert resolve_model(parse("codex exec p"), environ) == "legacy-model"


def test_model_resolution_survives_missing_or_broken_config(tmp_path):
    assert resolve_model(parse("codex exec p"), {"CODEX_HOME": str(tmp_path / "absent")}) is None
    write(tmp_path / "config.toml", "model = [unclosed\n")
    assert resolve_model(parse("codex exec p"), {"CODEX_HOME": str(tmp_path)}) is None


def test_codex_version_from_the_npm_layout(tmp_path):
    package = tmp_path / "node_modules" / "@openai" / "codex"
    write(package / "package.json", json.dumps({"name": "@openai/codex", "version": "0.169.0"}))
    launcher = write(package / "bin" / "codex.js", "#!/usr/bin/env node\n")
    launcher.chmod(0o755)
    bin_dir = tmp_path / "node_modules" / ".bin"
    bin_dir.mkdir()
    (bin_dir / "codex").symlink_to(launcher)
    assert codex_version("codex", path=str(bin_dir)) == "0.169.0"

    platform = tmp_path / "node_modules" / "@openai" / "codex-linux-x64"
    write(platform / "package.json", json.dumps({"name": "@openai/codex", "version": "0.169.0-linux-x64"}))
    native = write(platform / "vendor" / "x86_64-unknown-linux-musl" / "bin" / "codex", "")
    native.chmod(0o755)
    assert codex_version(str(native)) == "0.169.0"

    elsewhere = write(tmp_path / "other" / "codex", "")
    elsewhere.chmod(0o755)
    write(tmp_path / "other" / "package.json", json.dumps({"name": "not-codex", "version": "9"}))
    assert codex_version(str(elsewhere)) is None
    assert codex_version("definitely-not-installed-anywhere") is None


def test_git_repository_from_files(tmp_path):
    sha = "a" * 40
    git = tmp_path / "repo" / ".git"
    write(git / "HEAD", "ref: refs/heads/feature/x\n")
    write(git / "refs" / "heads" / "feature" / "x", sha + "\n")
    write(git / "config", '[core]\n\tbare = false\n[remote "origin"]\n\turl = https://bot:s3cret@github.com/org/repo.git\n'
                          '[remote "fork"]\n\turl = git@github.com:me/repo.git\n[branch "feature/x"]\n\tremote = fork\n')
    nested = tmp_path / "repo" / "src" / "pkg"
    nested.mkdir(parents=True)
    assert git_repository(nested) == {"url": "git@github.com:me/repo.git", "branch": "feature/x", "commit": sha}

    write(git / "HEAD", "ref: refs/heads/main\n")
    write(git / "packed-refs", f"# pack-refs with: peeled\n{'b' * 40} refs/heads/main\n")
    assert git_repository(nested) == {"url": "https://github.com/org/repo.git", "branch": "main", "commit": "b" * 40}

    write(git / "HEAD", "c" * 40 + "\n")
    assert git_repository(nested)["commit"] == "c" * 40 and "branch" not in git_repository(nested)
    assert git_repository(tmp_path) is None


def test_git_repository_matches_git_itself(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "checkout"
    environment = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=environment).stdout.strip()

    repo.mkdir()
    git("init", "-q", "-b", "trunk")
    git("remote", "add", "origin", "https://token@example.com/team/project.git")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "first")
    assert git_repository(repo) == {"url": "https://example.com/team/project.git", "branch": "trunk", "commit": git("rev-parse", "HEAD")}
    worktree = tmp_path / "worktree"
    git("worktree", "add", "-q", "-b", "side", str(worktree))
    assert git_repository(worktree) == {"url": "https://example.com/team/project.git", "branch": "side", "commit": git("rev-parse", "HEAD")}


@pytest.mark.codex
def test_option_table_matches_the_real_codex_help():
    if not REAL_CODEX.exists():
        pytest.skip(f"Codex 0.169.0 is not installed at {REAL_CODEX}")
    taking_value, flags = set(), set()
    for args in ([], ["exec"], ["exec", "resume"], ["exec", "fork"], ["exec", "review"]):
        help_text = subprocess.run([str(REAL_CODEX), *args, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
        for match in re.finditer(r"^\s+(?:-\w, )?(--[\w-]+)( <[^>]+>)?", help_text, re.MULTILINE):
            (taking_value if match.group(2) else flags).add(match.group(1))
    assert taking_value <= LONG_OPTIONS_WITH_VALUE
    assert not flags & LONG_OPTIONS_WITH_VALUE
    assert codex_version(str(REAL_CODEX)) == "0.169.0"


# ---- model parameters: what the generations show besides the model ----

@pytest.mark.parametrize("command, parameters", [
    ("codex exec --json -c model_reasoning_effort=high -c model_reasoning_summary=detailed -c service_tier=flex hi",
     {"reasoning_effort": "high", "reasoning_summary": "detailed", "service_tier": "flex"}),
    ("codex exec --json -s read-only hi", {"sandbox_mode": "read-only"}),
    ("codex exec --json --sandbox=workspace-write hi", {"sandbox_mode": "workspace-write"}),
    ("codex -a on-request exec --json hi", {"approval_policy": "on-request"}),
    ("codex exec --json --ask-for-approval never hi", {"approval_policy": "never"}),
    ("codex exec --json -c sandbox_mode=read-only -c 'approval_policy=\"untrusted\"' hi",
     {"sandbox_mode": "read-only", "approval_policy": "untrusted"}),
    ("codex exec --json --full-auto hi", {"sandbox_mode": "workspace-write", "approval_policy": "on-request"}),
    ("codex exec --json --dangerously-bypass-approvals-and-sandbox hi",
     {"sandbox_mode": "danger-full-access", "approval_policy": "never"}),
    # a flag wins over a -c override of the same setting, as in Codex
    ("codex exec --json -c sandbox_mode=read-only -s danger-full-access hi", {"sandbox_mode": "danger-full-access"}),
    ("codex exec --json hi", {}),
])
def test_model_parameters_from_the_arguments(command, parameters):
    parsed = parse(command)
    assert parsed.model_parameters == parameters
    assert parsed.prompt == "hi"


def test_model_parameters_from_config_and_profile_under_the_arguments(tmp_path):
    (tmp_path / "config.toml").write_text(
        'model_reasoning_effort = "low"\nservice_tier = "flex"\nsandbox_mode = "read-only"\n'
        'approval_policy = "never"\nprofile = "ci"\n[profiles.ci]\nmodel_reasoning_summary = "concise"\n'
        'model_reasoning_effort = "medium"\n')
    (tmp_path / "ci.config.toml").write_text('model_reasoning_effort = "high"\n')
    environ = {"CODEX_HOME": str(tmp_path)}
    assert resolve_model_parameters(parse("codex exec --json -s workspace-write hi"), environ) == {
        "reasoning_effort": "high",          # the profile's own file over its table over config.toml
        "reasoning_summary": "concise",
        "service_tier": "flex",
        "sandbox_mode": "workspace-write",   # the argument over the config
        "approval_policy": "never",
    }
    assert resolve_model_parameters(parse("codex exec --json --ignore-user-config hi"), environ) == {}
