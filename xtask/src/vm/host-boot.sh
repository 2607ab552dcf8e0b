#!/bin/sh
# /sbin/imdsg-host in the guests' root image, run by imdsg-host.service (also in the image, started
# only when the kernel command line says `systemd.wants=imdsg-host.service`: the real-host checks,
# `cargo xtask vm-test --host`, with systemd as PID 1). Mounts the run's payload disk (virtio-blk,
# /dev/vda) on /imdsg and hands over to its /imdsg/host.sh (xtask/src/vm/host.sh); if that cannot
# happen it says why on the second serial port and powers off, so the host does not wait out its
# timeout.
fail() {
	echo "IMDSG-INIT-FAIL $*" >/dev/ttyS1
	systemctl poweroff --no-block
	exit 1
}
modprobe -a virtio_pci virtio_blk || fail "cannot load virtio_pci and virtio_blk"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mkdir -p /imdsg
mountpoint -q /imdsg || mount -t ext4 /dev/vda /imdsg || fail "cannot mount the payload disk /dev/vda"
[ -x /imdsg/host.sh ] || fail "no executable /imdsg/host.sh on the payload disk"
exec /imdsg/host.sh
