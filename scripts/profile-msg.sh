#!/bin/bash
# Profiles the message hook's warm request (the bench's warm row) without this machine's noise:
# the 6.12 guest of the kernel matrix runs under QEMU's cache simulator (its TCG `cache` plugin:
# L1 I and D of 32 KiB, 8-way; L2 of 512 KiB, 8-way), with `imds-guard-bench --requests
# --warm-only N` inside, and scripts/profile/report.py counts what one run of imdsg_msg executes
# in its JIT image: x86 instructions and L1 instruction misses, per source line and per 64-byte
# code line. The counts repeat (two runs of one build: the same instructions, misses within 0.1
# a request), so two builds compare by them where their timings on this VM cannot
# (docs/BENCHMARKS.md, "A warm request counted, not timed"). As root:
#
#   scripts/profile-msg.sh [BATCHES]        (default 5 batches of 200 requests; ~20 minutes)
#
# The plugin is built once, into target/vm/plugin/, from the source of the QEMU this machine
# runs (Debian's qemu source package, fetched with a private apt sources list; it needs gcc and
# libglib2.0-dev, installed here if missing), patched to count each instruction's executions
# and to key them by guest virtual address (scripts/profile/cache-plugin.patch).
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-5}
[ "$(id -u)" = 0 ] || { echo "profile-msg: run as root (it runs the kernel matrix's guest)" >&2; exit 1; }
plugin_dir=$PWD/target/vm/plugin
plugin=$plugin_dir/libcache-execs.so

build_plugin() {
  local apt=$plugin_dir/apt codename version upstream
  . /etc/os-release
  codename=$VERSION_CODENAME
  version=$(dpkg-query -W -f '${source:Upstream-Version}' qemu-system-x86)
  upstream=${version%%+*}
  need=()
  command -v gcc > /dev/null || need+=(gcc)
  pkg-config --exists glib-2.0 2> /dev/null || need+=(libglib2.0-dev pkg-config)
  if [ ${#need[@]} -gt 0 ]; then
    echo "profile-msg: apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
  fi
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$plugin_dir/src"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $codename main" \
    > "$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root -qq)
  apt-get "${opts[@]}" update
  (cd "$plugin_dir/src" && apt-get "${opts[@]}" source --download-only qemu)
  local orig
  orig=$(ls "$plugin_dir"/src/qemu_*.orig.tar.xz | head -1)
  case $orig in
    *"qemu_$upstream"*) ;;
    *) echo "profile-msg: $orig is not QEMU $upstream, which this machine runs: the plugin API may differ" >&2 ;;
  esac
  rm -rf "$plugin_dir/src/qemu"
  mkdir -p "$plugin_dir/src/qemu"
  tar -xJf "$orig" -C "$plugin_dir/src/qemu" --strip-components=1 --wildcards \
    '*/contrib/plugins/cache.c' '*/include/qemu/qemu-plugin.h'
  patch -s -d "$plugin_dir/src/qemu" -p1 < scripts/profile/cache-plugin.patch
  # shellcheck disable=SC2046
  gcc -O2 -shared -fPIC -I"$plugin_dir/src/qemu/include/qemu" $(pkg-config --cflags glib-2.0) \
    "$plugin_dir/src/qemu/contrib/plugins/cache.c" -o "$plugin" $(pkg-config --libs glib-2.0)
}

[ -f "$plugin" ] || build_plugin
cargo build --release --bin imds-guard-bench
# Under the plugin the guest verifies the hook for minutes: the harness's start timeout is raised.
# The line table is read while the daemon runs (the bench ends it).
cmd="python3 /imdsg/files/jit_lines.py imdsg_msg 3000 > /tmp/lines.out & lines=\$!
IMDSG_START_TIMEOUT_S=3000 IMDS_GUARD_BIN=/imdsg/bin/imds-guard /imdsg/files/imds-guard-bench --requests --warm-only $batches
rc=\$?; kill \$lines 2> /dev/null; wait; cat /tmp/lines.out; exit \$rc"
IMDSG_QEMU_PLUGIN="$plugin,icachesize=32768,iassoc=8,dcachesize=32768,dassoc=8,l2=on,l2cachesize=524288,l2assoc=8,limit=100000000" \
  cargo xtask vm-test --kernel 6.12 --put target/release/imds-guard-bench --put scripts/profile/jit_lines.py \
  --shell-timeout 3300 --shell-cmd "$cmd"
run=target/vm/runs/6.12
python3 scripts/profile/report.py "$run/plugin.log" "$run/results.log"
