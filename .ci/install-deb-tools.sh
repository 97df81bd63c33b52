#!/bin/bash
# Install the tools that build and test the Debian package:
#   debootstrap, systemd-container (systemd-nspawn), lintian from apt,
#   cargo-deb 3.8.0 from crates.io (skipped when that version is already installed).
# Run as root. Idempotent: a second run installs nothing new.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
APT_PACKAGES=(debootstrap systemd-container lintian)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deb-tools: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# `cargo deb --version` prints e.g. "cargo-deb 3.8.0" (an unknown subcommand fails instead).
installed=$(cargo deb --version 2>/dev/null | awk '{print $2}' || true)
if [ "$installed" != "$CARGO_DEB_VERSION" ]; then
    echo "install-deb-tools: cargo install cargo-deb $CARGO_DEB_VERSION (found: ${installed:-none})"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi
echo "install-deb-tools: cargo-deb $(cargo deb --version | awk '{print $2}'), $(dpkg-query -W -f='${Package} ${Version}, ' "${APT_PACKAGES[@]}")done"
