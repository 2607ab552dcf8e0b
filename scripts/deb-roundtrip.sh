#!/bin/sh
# Installs, removes and purges an imds-guard .deb in a throwaway root, never on this machine's own
# root, and checks what each step leaves behind. Run by `cargo xtask deb` as root, as
#   unshare --mount --propagation private -- sh scripts/deb-roundtrip.sh PACKAGE.deb EMPTY_DIR
# so that the mounts below exist only in that private mount namespace and vanish with it.
#
# The root borrows this machine's /usr read-only through an overlay (its writes land in
# EMPTY_DIR/.upper), so that dpkg can run the maintainer scripts chrooted into it: /bin/sh, perl's
# deb-systemd-helper and the package's own binary come from there. /run/systemd/system is absent
# in the root, so the systemd snippets enable the unit (symlinks in the root's /etc) but start
# and stop nothing; /sys is absent, so `imds-guard unload` in prerm finds nothing pinned.
set -eu

deb=$1
root=$2

# Refuse to run where a mistake would touch the real system.
[ "$(id -u)" = 0 ] || { echo "deb-roundtrip: must run as root" >&2; exit 1; }
[ -d "$root" ] && [ -z "$(ls -A "$root")" ] || { echo "deb-roundtrip: $root must be an empty directory" >&2; exit 1; }
[ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] ||
    { echo "deb-roundtrip: run me in a private mount namespace (unshare --mount --propagation private)" >&2; exit 1; }

fail() { echo "deb-roundtrip: FAILED: $*" >&2; exit 1; }

mkdir -p "$root/usr" "$root/.upper" "$root/.work" "$root/etc" "$root/tmp" "$root/dev" "$root/run" \
    "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
mount -t overlay imdsg-deb-usr -o "lowerdir=/usr,upperdir=$root/.upper,workdir=$root/.work" "$root/usr"
for d in bin sbin lib lib64; do
    [ -L "/$d" ] && ln -s "usr/$d" "$root/$d"
done
touch "$root/dev/null" && mount --bind /dev/null "$root/dev/null"
cp /etc/passwd /etc/group "$root/etc/"
chmod 1777 "$root/tmp"
: >"$root/var/lib/dpkg/status"
: >"$root/var/lib/dpkg/available"

dpkg_root() { dpkg --root="$root" --force-depends --log=/dev/null "$@"; }

echo "deb-roundtrip: install"
dpkg_root -i "$deb"
[ "$(dpkg-query --root="$root" -W -f='${Status}' imds-guard)" = "install ok installed" ] || fail "not installed"
[ -x "$root/.upper/bin/imds-guard" ] || fail "/usr/bin/imds-guard not installed"
chroot "$root" /usr/bin/imds-guard --version | grep -q '^imds-guard ' || fail "the installed binary does not run"
grep -q '^mode = "monitor"' "$root/etc/imds-guard/policy.toml" || fail "the example policy is not in monitor mode"
[ -f "$root/.upper/lib/systemd/system/imds-guard.service" ] || fail "the unit is not in /usr/lib/systemd/system"
[ -L "$root/etc/systemd/system/multi-user.target.wants/imds-guard.service" ] || fail "the unit is not enabled"
grep -q '^imds-guard:' "$root/etc/passwd" || fail "the daemon's user was not created"

echo "deb-roundtrip: remove"
echo "# a local edit" >>"$root/etc/imds-guard/policy.toml"
dpkg_root -r imds-guard
[ ! -e "$root/usr/bin/imds-guard" ] || fail "remove left /usr/bin/imds-guard"
[ ! -e "$root/usr/lib/systemd/system/imds-guard.service" ] || fail "remove left the unit"
grep -q '^# a local edit' "$root/etc/imds-guard/policy.toml" || fail "remove did not keep the edited conffile"
[ "$(dpkg-query --root="$root" -W -f='${Status}' imds-guard)" = "deinstall ok config-files" ] || fail "not config-files"

echo "deb-roundtrip: purge"
dpkg_root -P imds-guard
[ ! -e "$root/etc/imds-guard" ] || fail "purge left /etc/imds-guard"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/imds-guard.service" ] || fail "purge left the unit enabled"
if dpkg-query --root="$root" -W imds-guard >/dev/null 2>&1; then fail "purge left the package known to dpkg"; fi

echo "deb-roundtrip: ok (install, remove keeping the edited conffile, purge)"
