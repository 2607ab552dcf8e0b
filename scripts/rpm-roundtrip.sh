#!/bin/sh
# Installs, upgrades and erases an imds-guard RPM in a throwaway root, never on this machine's own
# root, and checks what each step leaves behind. Run by `cargo xtask rpm` as root, twice, as
#   unshare --mount --propagation private -- sh scripts/rpm-roundtrip.sh PACKAGE.rpm UPGRADE.rpm EMPTY_DIR [REPO]
# so that the mounts below exist only in that private mount namespace and vanish with it.
# UPGRADE.rpm is the same files as a later release. Without REPO the steps are `rpm -i`, `rpm -U`
# and `rpm -e`; with REPO (a repository directory) they are the README's commands, `dnf install
# ./imds-guard-….rpm`, `dnf upgrade ./imds-guard-….rpm` and `dnf remove imds-guard`, with dnf
# resolving the package's dependencies from REPO. Amazon Linux 2023's repositories are not
# reachable here, so REPO holds one stand-in package that provides what imds-guard requires (the
# names are checked against AL2023's by `cargo xtask rpm`'s header check); dnf's own part — the
# local package, the resolution, the transaction and its scriptlets, the upgrade's ordering, the
# removal — is the real one.
#
# As scripts/deb-roundtrip.sh does: the root borrows this machine's /usr read-only through an
# overlay (its writes land in EMPTY_DIR/.upper), so that rpm can run the scriptlets chrooted into
# it (/bin/sh, getent, groupadd, useradd, systemctl and the package's own binary come from there).
# What cannot happen in a bare root, and so is not checked here (the VM test, docs/HOSTS.md,
# runs the .deb on a booted host): /run/systemd/system is absent, so the scriptlets enable the unit
# (systemctl acts on the root's /etc offline, in a chroot) but start, restart and stop nothing;
# /sys is absent, so `imds-guard unload` on erase finds nothing pinned. The packages' dependencies
# (nftables, systemd, glibc...) are Debian's here, not RPMs in the root's database: --nodeps.
set -eu

rpm1=$1
rpm2=$2
root=$3
repo=${4-}
tool=rpm
[ -z "$repo" ] || tool=dnf

[ "$(id -u)" = 0 ] || { echo "rpm-roundtrip: must run as root" >&2; exit 1; }
[ -d "$root" ] && [ -z "$(ls -A "$root")" ] || { echo "rpm-roundtrip: $root must be an empty directory" >&2; exit 1; }
[ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] ||
    { echo "rpm-roundtrip: run me in a private mount namespace (unshare --mount --propagation private)" >&2; exit 1; }

fail() { echo "rpm-roundtrip: FAILED: $*" >&2; exit 1; }

mkdir -p "$root/usr" "$root/.upper" "$root/.work" "$root/etc" "$root/tmp" "$root/dev" "$root/run" \
    "$root/proc" "$root/var/lib/rpm"
mount -t overlay imdsg-rpm-usr -o "lowerdir=/usr,upperdir=$root/.upper,workdir=$root/.work" "$root/usr"
for d in bin sbin lib lib64; do
    [ -L "/$d" ] && ln -s "usr/$d" "$root/$d"
done
touch "$root/dev/null" && mount --bind /dev/null "$root/dev/null"
# systemctl tells a chroot from the host by comparing its root with PID 1's.
mount -t proc proc "$root/proc"
cp /etc/passwd /etc/group "$root/etc/"
chmod 1777 "$root/tmp"
! grep -q '^imds-guard:' "$root/etc/passwd" || fail "this machine has a user imds-guard; the round trip could not tell it created one"

# --force-debian: Debian's rpm otherwise warns that packages should go through alien.
rpm_root() { rpm --root="$root" --dbpath=/var/lib/rpm "$@"; }
rpm_change() { rpm_root --nodeps --force-debian "$@"; }
rpm --root="$root" --dbpath=/var/lib/rpm --initdb
if [ "$tool" = dnf ]; then
    # dnf's librpm takes the database path from the invoking user's macros: the root's own
    # /var/lib/rpm, as on Amazon Linux (Debian's rpm defaults to ~/.rpmdb). No repository but REPO.
    mkdir -p "$root/.home" "$root/.repos"
    echo '%_dbpath /var/lib/rpm' >"$root/.home/.rpmmacros"
    dnf_root() {
        HOME="$root/.home" dnf -y --installroot="$root" --releasever=2023 --setopt=reposdir="$root/.repos" \
            --setopt=install_weak_deps=False --nogpgcheck --repofrompath=al2023-stand-in,"file://$repo" "$@" \
            >"$root/.dnf.log" 2>&1 || { tail -n 30 "$root/.dnf.log" >&2; fail "dnf $*"; }
    }
    # As the README: from the package's directory.
    pkg_install() { (cd "$(dirname "$1")" && dnf_root install "./$(basename "$1")"); }
    pkg_upgrade() { (cd "$(dirname "$1")" && dnf_root upgrade "./$(basename "$1")"); }
    pkg_erase() { dnf_root remove imds-guard; }
else
    pkg_install() { rpm_change -i "$1"; }
    pkg_upgrade() { rpm_change -U "$1"; }
    pkg_erase() { rpm_change -e imds-guard; }
fi
unit=lib/systemd/system/imds-guard.service
wants=etc/systemd/system/multi-user.target.wants/imds-guard.service

echo "rpm-roundtrip: $tool install"
pkg_install "$rpm1"
[ "$tool" = rpm ] || rpm_root -q imdsg-al2023-stand-in >/dev/null || fail "dnf did not resolve the dependencies from $repo"
rpm_root -q imds-guard >/dev/null || fail "not installed"
[ -x "$root/.upper/bin/imds-guard" ] || fail "/usr/bin/imds-guard not installed"
chroot "$root" /usr/bin/imds-guard --version | grep -q '^imds-guard ' || fail "the installed binary does not run"
grep -q '^mode = "monitor"' "$root/etc/imds-guard/policy.toml" || fail "the example policy is not in monitor mode"
[ -f "$root/.upper/$unit" ] || fail "the unit is not in /usr/lib/systemd/system"
[ -L "$root/$wants" ] || fail "the unit is not enabled (preset)"
grep -q '^imds-guard:' "$root/etc/passwd" || fail "the daemon's user was not created"
grep -q '^imds-guard:' "$root/etc/group" || fail "the daemon's group was not created"
rpm_root --nodeps -V imds-guard || fail "rpm -V finds the installed files changed"

echo "rpm-roundtrip: $tool upgrade"
echo "# a local edit" >>"$root/etc/imds-guard/policy.toml"
pkg_upgrade "$rpm2"
[ "$(rpm_root -q --qf '%{RELEASE}' imds-guard)" = 2 ] || fail "not upgraded to release 2"
grep -q '^# a local edit' "$root/etc/imds-guard/policy.toml" || fail "the upgrade replaced the edited policy"
[ ! -e "$root/etc/imds-guard/policy.toml.rpmnew" ] || fail "an unchanged packaged policy left a .rpmnew"
[ -L "$root/$wants" ] || fail "the upgrade disabled the unit"
[ "$(grep -c '^imds-guard:' "$root/etc/passwd")" = 1 ] || fail "the upgrade made a second user"

echo "rpm-roundtrip: $tool erase"
mkdir -p "$root/var/lib/imds-guard" && : >"$root/var/lib/imds-guard/state"
pkg_erase
[ ! -e "$root/usr/bin/imds-guard" ] || fail "erase left /usr/bin/imds-guard"
[ ! -e "$root/usr/$unit" ] || fail "erase left the unit"
[ ! -e "$root/$wants" ] || fail "erase left the unit enabled"
[ ! -e "$root/var/lib/imds-guard" ] || fail "erase left /var/lib/imds-guard"
[ ! -e "$root/etc/imds-guard/policy.toml" ] || fail "erase left the policy in place"
grep -q '^# a local edit' "$root/etc/imds-guard/policy.toml.rpmsave" || fail "erase did not keep the edited policy as .rpmsave"
if rpm_root -q imds-guard >/dev/null 2>&1; then fail "erase left the package in the database"; fi
grep -q '^imds-guard:' "$root/etc/passwd" || fail "erase removed the daemon's user (it is kept, as the .deb keeps it)"

echo "rpm-roundtrip: $tool ok (install with the user and the unit enabled, upgrade keeping the edited policy, erase keeping it as .rpmsave)"
