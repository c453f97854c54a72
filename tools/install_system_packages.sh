#!/usr/bin/env bash
# System packages the build and the tests use beyond PyPI:
# - gRPC C++ (libgrpc++-dev, pkg-config), for the server's C++ gRPC transport (cc/grpc_transport.cc);
# - Chromium (chromium) and a font (fonts-dejavu-core), for the tests that render the HTML pages
#   (the report, the A/B test's page) in a headless browser (tests/chromium.py).
# What is missing is installed with apt-get where this runs as root on Debian/Ubuntu (as on the CI
# machines); elsewhere it says what is missing and the build goes on: without gRPC C++ the server
# runs on gRPC Python, without Chromium the page tests skip (and fail where CI is set).
set -uo pipefail
have_grpc() { pkg-config --exists grpc++ 2>/dev/null; }
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
have_font() { [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; }
missing=()
have_grpc || missing+=("libgrpc++-dev pkg-config")
have_chromium || missing+=("chromium")
have_font || missing+=("fonts-dejavu-core")
if [ ${#missing[@]} = 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  updated=""
  for packages in "${missing[@]}"; do   # one group at a time: a package that cannot install blocks no other
    apt-get install -y -q --no-install-recommends $packages >/dev/null 2>&1 \
      || { [ -z "$updated" ] && updated=1 && apt-get update -q >/dev/null \
           && apt-get install -y -q --no-install-recommends $packages >/dev/null; } \
      || echo "install_system_packages: apt-get could not install $packages" >&2
  done
fi
if ! have_grpc; then
  echo "install_system_packages: gRPC C++ (libgrpc++-dev) not found; the server's C++ gRPC transport" \
       "will not be built and the server will use gRPC Python" >&2
fi
if ! have_chromium; then
  echo "install_system_packages: chromium not found; the tests that render the HTML pages will skip" \
       "(and fail where CI is set)" >&2
fi
if ! have_font; then
  echo "install_system_packages: fonts-dejavu-core not found; pages may render without text" >&2
fi
exit 0
