#!/bin/bash
# Build the rtask Debian package (target/debian/rtask_<version>-1_<arch>.deb).
#
#   packaging/build-deb.sh
#
# Needs cargo-deb 3.8.0 (.ci/install-deb-tools.sh installs it). The path of the
# .deb is the last line printed on stdout; everything else goes to stderr.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != 3.8.0 ]; then
    echo "build-deb: cargo-deb 3.8.0 is required; run .ci/install-deb-tools.sh" >&2
    exit 1
fi

cargo build --release --locked >&2

binary=${CARGO_TARGET_DIR:-target}/release/rtask
# Cargo.toml's [package.metadata.deb] assets name these paths.
assets=target/packaging-assets
rm -rf "$assets"
mkdir -p "$assets"

# -n leaves the name and timestamp out of the gzip header, so the compressed man
# page does not change between builds of the same source.
"$binary" man | gzip -9n >"$assets/rtask.1.gz"
"$binary" completions bash >"$assets/rtask.bash"
"$binary" completions zsh >"$assets/_rtask"
"$binary" completions fish >"$assets/rtask.fish"

for file in "$assets"/rtask.bash "$assets"/_rtask "$assets"/rtask.fish; do
    if [ ! -s "$file" ]; then
        echo "build-deb: $binary produced an empty $file" >&2
        exit 1
    fi
done
if [ "$(gzip -dc "$assets/rtask.1.gz" | wc -c)" -eq 0 ]; then
    echo "build-deb: '$binary man' printed nothing" >&2
    exit 1
fi

# cargo-deb prints the path of the package on stdout.
cargo deb --no-build
