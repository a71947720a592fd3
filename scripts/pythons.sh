# Finding the Pythons the environments need; sourced by scripts/setup and scripts/lock.
#   find_python 3.14 2   prints the path of a working Python 3.14.x with x >= 2, or nothing (status 1)
# Looks, in this order: pythonX.Y on PATH, pyenv's versions, then (3.14 only) the python3.14 tool of an enclosing
# workspace (shared/tools/python3.14 beside an ancestor folder) or, without one, our copy of it
# (scripts/python3.14-debian, on Debian x86_64), which installs CPython 3.14 from Debian's packages
# into a cache folder in about 10 s and prints its path.

_python_ok() { # PATH MINOR MIN_PATCH
  [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
  # A pyenv shim can be on PATH without the version being installed or active: check that it really runs.
  "$1" -c "import sys, venv, ensurepip; sys.exit(0 if sys.version_info[:2] == (3, $2) and sys.version_info[2] >= $3 else 1)" \
    >/dev/null 2>&1
}

_python_tool() { # the python3.14 tool of an enclosing workspace, if any
  local dir
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  [ -n "${OFFSITE_PYTHON314_TOOL:-}" ] && { echo "$OFFSITE_PYTHON314_TOOL"; return 0; }
  while [ "$dir" != / ]; do
    dir=$(dirname "$dir")
    if [ -x "$dir/shared/tools/python3.14" ]; then echo "$dir/shared/tools/python3.14"; return 0; fi
  done
  # No workspace around this clone: our copy of that tool (Debian on x86_64 only; it needs apt).
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  if command -v apt-get >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then echo "$dir/python3.14-debian"; return 0; fi
  return 1
}

find_python() { # MAJOR.MINOR MIN_PATCH
  local version=$1 min_patch=$2 minor=${1#3.} candidate tool pyenv_root
  if _python_ok "python$version" "$minor" "$min_patch"; then command -v "python$version"; return 0; fi
  pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  if command -v pyenv >/dev/null 2>&1; then pyenv_root=$(pyenv root 2>/dev/null || echo "$pyenv_root"); fi
  for candidate in $(ls -d "$pyenv_root/versions/$version".* 2>/dev/null | sort -V -r); do
    if _python_ok "$candidate/bin/python" "$minor" "$min_patch"; then echo "$candidate/bin/python"; return 0; fi
  done
  if [ "$version" = 3.14 ] && tool=$(_python_tool); then
    echo "no Python 3.14 on PATH or in pyenv: installing one with $tool" >&2
    if candidate=$("$tool" | tail -n 1) && _python_ok "$candidate" "$minor" "$min_patch"; then
      echo "$candidate"; return 0
    fi
    echo "$tool did not give a working Python 3.14" >&2
  fi
  return 1
}
