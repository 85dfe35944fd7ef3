#!/usr/bin/env bash
# Installs and builds the real client stacks criguard's tests drive, offline from Debian and
# PyPI, into target/clients/:
#   cri-go-client   grpc-go (Debian's golang-google-grpc-dev 1.33, GOPATH mode), the kubelet's
#                   client stack, dialled as kubelets <= 1.30 and >= 1.31 dial
#   python3         Debian's python3-grpcio (grpc C-core 1.51), /usr/bin/python3
#   venv/           PyPI's current grpcio (grpc C-core) in a virtual environment
#   kubelet-cri-client  k8s.io/cri-client 0.36 (the kubelet 1.36's own CRI client) from Debian
#                   sid's packages, built with sid's Go 1.27 in GOPATH mode; sid's packages are
#                   unpacked into kubelet-1.36/ with a private apt state, never installed
# Idempotent; needs root for apt-get.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=target/clients
mkdir -p "$out"

# shellcheck source=tests/lib/debian.sh
. tests/lib/debian.sh
install_missing_packages golang-go golang-google-grpc-dev python3-grpcio python3-venv containerd

if [ ! -x "$out/cri-go-client" ] || [ tests/clients/go/main.go -nt "$out/cri-go-client" ]; then
  GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS='' GOCACHE="$PWD/$out/go-cache" \
    go build -o "$out/cri-go-client" tests/clients/go/main.go
fi

# The kubelet 1.36's client and what it imports, as Debian packages them (GOPATH trees), with the
# OTLP/gRPC trace exporter a kubelet with tracing on uses.
kubelet_sources=(golang-k8s-cri-client-dev golang-k8s-cri-api-dev golang-k8s-component-base-dev
  golang-k8s-klog-dev golang-k8s-utils-dev golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev golang-golang-x-net-dev
  golang-golang-x-sys-dev golang-golang-x-text-dev golang-opentelemetry-otel-dev
  golang-opentelemetry-contrib-dev golang-github-go-logr-logr-dev golang-github-go-logr-stdr-dev
  golang-github-cespare-xxhash-v2-dev golang-opentelemetry-proto-dev
  golang-github-cenkalti-backoff-v5-dev golang-github-grpc-ecosystem-grpc-gateway-dev
  golang-github-google-uuid-dev)
kubelet=$PWD/$out/kubelet-1.36
if [ ! -x "$out/kubelet-cri-client" ] || [ tests/clients/kubelet/main.go -nt "$out/kubelet-cri-client" ] ||
  [ "$(cat "$kubelet/packages" 2>/dev/null)" != "${kubelet_sources[*]}" ]; then
  if [ "$(cat "$kubelet/packages" 2>/dev/null)" != "${kubelet_sources[*]}" ]; then
    rm -rf "$kubelet.new"
    newer_debian_unpack "$kubelet.new" golang-1.27-go/sid golang-1.27-src/sid \
      "${kubelet_sources[@]/%//sid}"
    echo "${kubelet_sources[*]}" > "$kubelet.new/packages"
    rm -rf "$kubelet" && mv "$kubelet.new" "$kubelet"
  fi
  GOROOT="$kubelet/usr/lib/go-1.27" GO111MODULE=off GOPATH="$kubelet/usr/share/gocode" GOFLAGS='' \
    GOTOOLCHAIN=local GOCACHE="$PWD/$out/go-cache-1.27" \
    "$kubelet/usr/lib/go-1.27/bin/go" build -o "$out/kubelet-cri-client" tests/clients/kubelet/main.go
fi

if ! "$out/venv/bin/python" -c 'import grpc' 2>/dev/null; then
  rm -rf "$out/venv"
  /usr/bin/python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir grpcio
fi
/usr/bin/python3 -c 'import grpc; print("grpcio (Debian)", grpc.__version__)'
"$out/venv/bin/python" -c 'import grpc; print("grpcio (PyPI)", grpc.__version__)'
echo "grpc-go (Debian) $(sed -n 's/^const Version = "\(.*\)"/\1/p' /usr/share/gocode/src/google.golang.org/grpc/version.go)"
echo "k8s.io/cri-client (Debian sid) $(newer_debian_version golang-k8s-cri-client-dev sid), $("$kubelet/usr/lib/go-1.27/bin/go" version | awk '{print $3}')"
