#!/bin/bash
# The run's script in a matrix guest: PID 1 after /sbin/imdsg-init (which mounted /proc, /sys,
# /dev and the payload disk on /imdsg). Written by `cargo xtask vm-test` from
# xtask/src/vm/guest.sh; /imdsg/config says what to run (LABEL, MODE, WORKSPACE, SHELL_TIMEOUT).
#
# Everything for the host goes to the second serial port (the first is the kernel's console), one
# line each (xtask/src/vm/results.rs parses them):
#   IMDSG-BOOTED <label> <uname -r> <uptime seconds>
#   IMDSG-SETUP <label> FAIL <what>                    a setup step failed (the checks still run)
#   IMDSG-RESULT <label> <check> ok|FAIL <seconds>s [<detail>]
#   IMDSG-LOG <check> | <line>                         a failed check's output from its panic on
#   IMDSG-OUT | <line>                                 --shell-cmd output, as it comes
#   IMDSG-DONE <label>
# Then it powers the guest off. Full outputs stay on the payload disk under /imdsg/out/.
set -u
. /imdsg/config
export PATH=/imdsg/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TMPDIR=/tmp
# What udev or systemd would add to devtmpfs (nft reads its input from /dev/stdin).
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
exec 3>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
say() { printf '%s\n' "$*" >&3; }
setup() { # setup <what> <command...>: runs it, reports a failure
	local what=$1
	shift
	"$@" >>/imdsg/out/setup.log 2>&1 || say "IMDSG-SETUP $LABEL FAIL $what"
}
finish() {
	say "IMDSG-DONE $LABEL"
	sync
	umount /imdsg 2>/dev/null
	echo o >/proc/sysrq-trigger
	sleep 60
}
mkdir -p /imdsg/out
say "IMDSG-BOOTED $LABEL $(uname -r) $(cut -d' ' -f1 /proc/uptime)"

# What a host booted by systemd has, and the privileged tests use.
setup "mount /run" mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
setup "mount /tmp" mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /dev/pts /dev/shm /run/lock
setup "mount /dev/pts" mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
setup "mount /dev/shm" mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
setup "mount cgroup2 on /sys/fs/cgroup" mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
setup "mount bpffs on /sys/fs/bpf" mount -t bpf -o mode=0700 bpf /sys/fs/bpf
setup "mount debugfs" mount -t debugfs debugfs /sys/kernel/debug
setup "mount tracefs" mount -t tracefs tracefs /sys/kernel/tracing
setup "mount securityfs" mount -t securityfs securityfs /sys/kernel/security
# The nftables layer and the three-namespace topology; the kernel would autoload most of these
# through /sbin/modprobe, loading them here makes a missing one visible at once.
for m in nf_tables nfnetlink_log nft_log nft_ct veth; do
	setup "modprobe $m" modprobe "$m"
done
setup "hostname" hostname "imdsg-$LABEL"
setup "lo up" ip link set lo up
# Tests that read files of the repository at their build path find them there.
if [ -n "$WORKSPACE" ] && [ -d /imdsg/workspace ]; then
	mkdir -p "$WORKSPACE"
	for f in /imdsg/workspace/*; do
		ln -sfn "$f" "$WORKSPACE/$(basename "$f")"
	done
fi

# The first line of a failed test's panic message (and the next, if it ends in a colon, as in
# "daemon did not start enforcing; stderr:"), the verifier's complaint if a program was rejected
# (the line before its "verification time" summary), and where it panicked.
reason() {
	awk '
		!msg && /panicked at / {
			at = $0; sub(/.*panicked at /, "", at); sub(/:$/, "", at)
			getline msg
			if (msg ~ /:[ ]*$/ && (getline more) > 0) msg = msg " " more
			next
		}
		msg && !verifier && /^verification time / && index(msg, prev) == 0 { verifier = prev }
		{ prev = $0 }
		END {
			if (!msg) exit
			if (verifier) msg = msg " [verifier: " verifier "]"
			print msg " (at " at ")"
		}
	' "$1" | tr '\t' ' ' | cut -c1-600
}

run_check() { # run_check <check> <binary> <test> <timeout seconds>
	local check=$1 bin=$2 test=$3 tmo=$4 log=/imdsg/out/$1.log
	local t0 t1 rc secs detail status=FAIL
	t0=$(cut -d' ' -f1 /proc/uptime)
	(cd /root && CI=true IMDS_GUARD_BIN=/imdsg/bin/imds-guard RUST_BACKTRACE=0 \
		timeout -k 10 "$tmo" "/imdsg/tests/$bin" --exact "$test" --test-threads 1 </dev/null >"$log" 2>&1)
	rc=$?
	t1=$(cut -d' ' -f1 /proc/uptime)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		detail="timed out after ${tmo}s"
	elif [ $rc -ne 0 ]; then
		detail="exit $rc: $(reason "$log")"
	elif grep -q '^test result: ok\. 1 passed' "$log"; then
		status=ok detail=""
	else
		detail="no test ran: $(grep -m1 '^test result' "$log")"
	fi
	say "IMDSG-RESULT $LABEL $check $status ${secs}s $detail"
	if [ $status != ok ]; then
		# From the panic on (the test's assertion and what it printed), else the end.
		if grep -q 'panicked at ' "$log"; then
			sed -n '/panicked at /,$p' "$log" | head -n 60
		else
			tail -n 60 "$log"
		fi | sed "s/^/IMDSG-LOG $check | /" >&3
	fi
	# Whatever the test left behind must not leak into the next one.
	sync
}

case "$MODE" in
tests)
	while IFS=$'\t' read -r check bin test tmo; do
		[ -n "$check" ] && run_check "$check" "$bin" "$test" "$tmo"
	done </imdsg/plan
	;;
shell)
	t0=$(cut -d' ' -f1 /proc/uptime)
	(cd /root && timeout -k 10 "$SHELL_TIMEOUT" bash /imdsg/shell-cmd </dev/null 2>&1) |
		tee /imdsg/out/shell.log | sed -u 's/^/IMDSG-OUT | /' >&3
	rc=${PIPESTATUS[0]}
	t1=$(cut -d' ' -f1 /proc/uptime)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	if [ "$rc" -eq 0 ]; then
		say "IMDSG-RESULT $LABEL shell ok ${secs}s exit 0"
	elif [ "$rc" -eq 124 ]; then
		say "IMDSG-RESULT $LABEL shell FAIL ${secs}s timed out after ${SHELL_TIMEOUT}s"
	else
		say "IMDSG-RESULT $LABEL shell FAIL ${secs}s exit $rc"
	fi
	;;
*)
	say "IMDSG-SETUP $LABEL FAIL unknown MODE '$MODE' in /imdsg/config"
	;;
esac
finish
