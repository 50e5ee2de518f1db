#!/usr/bin/env bash
# Installs, through apt, only the system packages uds needs that are missing:
# a C compiler and the Python headers (for the cffi wire module and llfuse),
# libfuse 2 headers with pkg-config (llfuse), fusermount (fuse3), and venv;
# for the worker's sandbox: bubblewrap, setpriv and mount (util-linux) and
# mkfs.ext4 (e2fsprogs); for the tests' network hosts: ip (iproute2),
# nft (nftables) and nsenter (util-linux); for the dashboard's browser tests:
# chromium and chromedriver (chromium-driver).
# Usage: scripts/install-system-deps.sh PYTHON
set -euo pipefail
python=${1:-python3}
missing=()

command -v gcc >/dev/null || missing+=(gcc)
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists fuse 2>/dev/null || missing+=(libfuse-dev)
command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || missing+=(fuse3)
"$python" - <<'PY' || missing+=(python3-dev)
import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
PY
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v setpriv >/dev/null || missing+=(util-linux)
PATH="$PATH:/sbin:/usr/sbin" command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
PATH="$PATH:/sbin:/usr/sbin" command -v ip >/dev/null || missing+=(iproute2)
PATH="$PATH:/sbin:/usr/sbin" command -v nft >/dev/null || missing+=(nftables)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)

if ((${#missing[@]} == 0)); then
    exit 0
fi
echo "installing system packages: ${missing[*]}"
sudo=""
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
