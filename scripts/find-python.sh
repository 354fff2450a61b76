#!/usr/bin/env sh
# Prints a command that runs Python 3.12+, or explains what is missing.
# Order: $PYTHON, python3.12/3.13/3.14 on PATH, then pyenv versions (whose shims
# only answer when PYENV_VERSION names an installed version).
ok() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
if [ -n "${PYTHON:-}" ] && ok $PYTHON; then echo "$PYTHON"; exit 0; fi
for exe in python3.12 python3.13 python3.14 python3; do
  if command -v "$exe" >/dev/null 2>&1 && ok "$exe"; then command -v "$exe"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | sort -V); do
    case "$v" in 3.1[2-9]*|3.[2-9][0-9]*)
      for exe in python3.12 python3.13 python3.14; do
        if PYENV_VERSION="$v" ok "$exe"; then echo "env PYENV_VERSION=$v $exe"; exit 0; fi
      done;;
    esac
  done
fi
echo "bidistream needs Python 3.12 or newer and found none." >&2
echo "Tried: \$PYTHON, python3.12+ on PATH, pyenv versions 3.12+." >&2
echo "Install one (e.g. 'pyenv install 3.12', or your OS package python3.12) or set PYTHON=/path/to/python3.12." >&2
exit 1
