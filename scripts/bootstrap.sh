# Sourced by ./demo.sh and ./test.sh: everything a fresh machine needs, done once.
# - a virtualenv in .venv with this package (editable) and its test dependencies
# - redis-server (Debian/Ubuntu package, when running as root) for the local Redis
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.codex-langfuse-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing codex-langfuse and its dependencies into .venv" >&2
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' > .venv/install.log 2>&1; then
        cat .venv/install.log >&2
        exit 1
    fi
    touch "$stamp"
fi

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server (apt-get)" >&2
        apt-get install -y -qq redis-server >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && apt-get install -y -qq redis-server >/dev/null; }
    else
        echo "redis-server is needed: install it (e.g. 'sudo apt-get install -y redis-server' or 'brew install redis')" >&2
        exit 1
    fi
fi
export PATH="$PWD/.venv/bin:$PATH"
