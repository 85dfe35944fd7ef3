#!/usr/bin/env bash
# criguard's whole test suite, on a fresh machine: installs what it needs (Debian packages,
# Rust components), then runs formatting, lints, unit and integration tests, and the
# end-to-end runs against real containerd 2.1, 1.7 and 1.6. Needs root (containerd, iptables,
# apt-get).
#
#   tests/run.sh            everything
#   CRIGUARD_E2E=0 tests/run.sh   everything but the containerd runs
#   CRIGUARD_E2E_CONTAINERDS="2.1" tests/run.sh   the containerd runs on these generations only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing what the tests need"
# shellcheck source=tests/lib/debian.sh
. tests/lib/debian.sh
install_missing_packages systemd gcc g++ libc6-dev python3 prometheus logrotate shellcheck
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "shellcheck: the installer and the test scripts"
shellcheck -x deploy/kubernetes/criguard-install tests/run.sh tests/e2e/containerd-lab.sh \
  tests/clients/install.sh tests/lib/debian.sh tests/fuzz.sh .ci/run

step "src/: imports run one way, from main down to the proxy core and the leaves"
python3 tests/lib/import_direction.py src

step "deploy/: promtool checks the Prometheus config and alert rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/criguard-alerts.yml
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' deploy/grafana/criguard-dashboard.json

step "unit and integration tests"
cargo test --locked

step "real client stacks: grpc-go (Debian), grpc C-core (Debian's and PyPI's grpcio), the kubelet 1.36's cri-client"
tests/clients/install.sh
cargo test --locked --test clients --test tracing -- --ignored --skip containerd_

step "fuzz/: every fuzz target for ${CRIGUARD_FUZZ_SECONDS:-60} s (the caller's HTTP/2 edge and the audit JSON writer against their references, the policies, the traceparent reader)"
tests/fuzz.sh

step "policies/: every shipped policy against its test cases"
cargo run --locked --quiet -- policy test policies

step "deploy/systemd: systemd-analyze verify (any warning fails)"
units=$(mktemp -d)
cp deploy/systemd/criguard.socket deploy/systemd/criguard.service "$units/"
sed -i "s|/usr/local/bin/criguard|$PWD/target/debug/criguard|" "$units/criguard.service"
verify=$(systemd-analyze verify "$units/criguard.socket" "$units/criguard.service" 2>&1) || { echo "$verify"; exit 1; }
[ -z "$verify" ] || { echo "$verify"; exit 1; }
rm -rf "$units"

step "deploy/logrotate: logrotate parses the audit log rotation"
rotation=$(logrotate --debug --state /dev/null deploy/logrotate/criguard-audit 2>&1) || { echo "$rotation"; exit 1; }
if grep -q '^error' <<<"$rotation" || ! grep -q 'rotating pattern: /var/log/criguard/audit.log' <<<"$rotation"; then
  echo "$rotation"; exit 1
fi

if [ "${CRIGUARD_E2E:-1}" != 0 ]; then
  trap 'tests/e2e/containerd-lab.sh down || true' EXIT
  # Every generation a node runs today, newest first; each gets every end-to-end test.
  for generation in ${CRIGUARD_E2E_CONTAINERDS:-2.1 1.7 1.6}; do
    step "end to end on containerd $generation: criguard in front of it, scraped by a real Prometheus"
    endpoint=$(tests/e2e/containerd-lab.sh up "$generation")
    bin=$(tests/e2e/containerd-lab.sh bin "$generation")
    export CRIGUARD_E2E_CONTAINERD=$generation CRIGUARD_E2E_ENDPOINT=$endpoint
    cargo test --locked --test containerd -- --ignored --test-threads 1 --nocapture
    step "end to end on containerd $generation: the real client stacks (the kubelet 1.36's among them) and its ctr through criguard"
    PATH="$bin:$PATH" cargo test --locked --test clients -- --ignored --test-threads 1 containerd_
    tests/e2e/containerd-lab.sh down
  done
fi

step "all tests passed"
