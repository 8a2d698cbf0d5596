#!/usr/bin/env bash
# Installs every system package that the build, the tests and the default
# corpus need (Debian 12). Idempotent: installs only what is missing and says
# nothing when everything is already there. Needs root (or sudo).
# usage: scripts/setup.sh [--tests]   --tests: also TEST_PACKAGES (scripts/test.sh)
set -euo pipefail

PACKAGES=(
  # toolchain and libraries
  build-essential cmake pkg-config git
  libabsl-dev libprotobuf-dev protobuf-compiler
  openmpi-bin libopenmpi-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev nlohmann-json3-dev libzstd-dev
  # tests and tools: node runs GPT-2's reference encoder; numpy reads exports
  python3 python3-numpy python3-matplotlib gnuplot-nox
  # launcher tests: nodes in network namespaces (ip, ss) and a one-node Slurm
  # cluster (tests/scripts/: the multinode and slurm labels)
  iproute2 slurm-wlm munge
  # default corpus (scripts/corpus.sh)
  r-cran-janeaustenr bible-kjv bible-kjv-text fortunes fortunes-min jargon-text
  linux-doc-6.1
)

# Only for the test suite (scripts/test.sh passes --tests), not the default
# job: Debian's CPU PyTorch 1.13 (~0.5 GB with its dependencies) runs the
# trainer-vs-PyTorch reference checks of label python (tests/launch/
# same_init_test.py), which skip without it.
TEST_PACKAGES=(python3-torch)
[ "${1:-}" = "--tests" ] && PACKAGES+=("${TEST_PACKAGES[@]}")

missing=()
# node and npm may come from another source (nodesource bundles npm): only
# ask Debian for them when they are absent.
command -v node >/dev/null && command -v npm >/dev/null || PACKAGES+=(nodejs npm)
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Package scripts must not start the daemons they install (munge, slurmctld
# and slurmd would start with the system's config, or fail the install for
# want of one): the tests start their own. Debian's switch is policy-rc.d.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
