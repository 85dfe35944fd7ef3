#!/usr/bin/env bash
# Installs and builds the real client stacks criguard's tests drive, offline from Debian and
# PyPI, into target/clients/:
#   cri-go-client   grpc-go (Debian's golang-google-grpc-dev 1.33, GOPATH mode), the kubelet's
#                   client stack, dialled as kubelets <= 1.30 and >= 1.31 dial
#   python3         Debian's python3-grpcio (grpc C-core 1.51), /usr/bin/python3
#   venv/           PyPI's current grpcio (grpc C-core) in a virtual environment
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

if ! "$out/venv/bin/python" -c 'import grpc' 2>/dev/null; then
  rm -rf "$out/venv"
  /usr/bin/python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir grpcio
fi
/usr/bin/python3 -c 'import grpc; print("grpcio (Debian)", grpc.__version__)'
"$out/venv/bin/python" -c 'import grpc; print("grpcio (PyPI)", grpc.__version__)'
echo "grpc-go (Debian) $(sed -n 's/^const Version = "\(.*\)"/\1/p' /usr/share/gocode/src/google.golang.org/grpc/version.go)"
