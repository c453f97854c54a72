#!/usr/bin/env bash
# System packages the build uses beyond PyPI: gRPC C++ (libgrpc++-dev), for the server's C++
# gRPC transport (cc/grpc_transport.cc). Installed with apt-get where this runs as root on
# Debian/Ubuntu (as on the CI machines); elsewhere it says what is missing and the build goes on
# without the transport (the server then runs on gRPC Python).
set -uo pipefail
if pkg-config --exists grpc++ 2>/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  packages="libgrpc++-dev pkg-config"
  apt-get install -y -q --no-install-recommends $packages >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $packages >/dev/null; } \
    || echo "install_system_packages: apt-get could not install $packages" >&2
fi
if ! pkg-config --exists grpc++ 2>/dev/null; then
  echo "install_system_packages: gRPC C++ (libgrpc++-dev) not found; the server's C++ gRPC transport" \
       "will not be built and the server will use gRPC Python" >&2
fi
exit 0
