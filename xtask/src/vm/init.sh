#!/bin/sh
# /sbin/imdsg-init in the matrix guest's root image: PID 1 (init=/sbin/imdsg-init, no systemd).
# It mounts what is needed to find the run's payload disk (virtio-blk, /dev/vda, mounted on
# /imdsg) and hands over to the run's own script, /imdsg/guest.sh (xtask/src/vm/guest.sh). If that
# cannot happen it says why on both serial ports and powers off, so the host does not wait out
# its timeout.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
	echo "IMDSG-INIT-FAIL $*" >/dev/ttyS1
	echo "imdsg-init: $*" >/dev/console
	echo o >/proc/sysrq-trigger
	sleep 60
}
mkdir -p /imdsg
# The root is the only NVMe disk, so always nvme0n1 (two NVMe namespaces are named in the order
# the kernel's asynchronous scan finds them). virtio is a module in Debian's cloud kernels.
modprobe -a virtio_pci virtio_blk || fail "cannot load virtio_pci and virtio_blk"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mount -t ext4 /dev/vda /imdsg || fail "cannot mount the payload disk /dev/vda"
[ -x /imdsg/guest.sh ] || fail "no executable /imdsg/guest.sh on the payload disk"
exec /imdsg/guest.sh
