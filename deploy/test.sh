#!/usr/bin/env bash
# The project's test command, the same for people and CI:
#
#   sudo ./deploy/test.sh            build every binary, then run every test
#   sudo ./deploy/test.sh ARGS...    ARGS go to `cargo test`, e.g. -- --nocapture
#
# Needs root (the end-to-end tests in tests/ start hosts in network namespaces
# and load nftables rules there; the host's own ruleset is never touched), plus
# nftables and iproute2 (.ci/run installs them on Debian 12) and Rust.
# Benchmarks are not run here: `sudo cargo bench -p palisade-agent --bench ruleset`.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Under sudo, cargo from a rustup install is often not on root's PATH.
if ! command -v cargo >/dev/null 2>&1; then
    for home in "$HOME" /root "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
        if [[ -n $home && -x $home/.cargo/bin/cargo ]]; then
            PATH=$home/.cargo/bin:$PATH
            if [[ -z ${RUSTUP_HOME:-} && ! -d $HOME/.rustup && -d $home/.rustup ]]; then
                export RUSTUP_HOME=$home/.rustup
            fi
            break
        fi
    done
fi
command -v cargo >/dev/null 2>&1 || {
    echo "test.sh: cargo not found: install Rust (https://rustup.rs)" >&2
    exit 1
}
if [[ $EUID -ne 0 ]]; then
    echo "test.sh: warning: not root; the end-to-end tests need root (sudo $0)" >&2
fi

cargo build --workspace --bins && cargo test --workspace "$@"
