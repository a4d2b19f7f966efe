#!/bin/sh
# Installs the Debian 12 packages zipnnfs needs to build and test. Run as root.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config clang \
  libzstd-dev zstd libfuse3-dev fuse3 liblmdb-dev libspdlog-dev libgtest-dev \
  libxxhash-dev libcli11-dev nlohmann-json3-dev libbenchmark-dev python3 \
  squashfuse squashfs-tools gnuplot-nox python3-numpy
