#!/bin/bash
# The real-host checks (`cargo xtask vm-test --host`, docs/HOSTS.md): the guest boots the bookworm
# image with systemd as PID 1 and no network device; the root image's imdsg-host.service (after
# multi-user.target, pulled in by `systemd.wants=` on the kernel command line) mounts the payload
# disk on /imdsg and runs this. The guest boots the run's own copy of the root image (host.rs), so
# the root disk's changes live across the one reboot of the run (a new QEMU boots the copy again)
# and are gone after it.
#
# Phase 1 (first boot): the .deb installed with dpkg as the README says, the service's user and
# capabilities, an enforce policy with `systemctl reload`, denied and allowed identities against a
# fake IMDS on the guest's own lo, stop/start/restart, systemd-analyze security; it installs an
# early-boot workload unit and reboots. Phase 2: that unit's first attempt, podman containers
# (one denied and reported by container id and runtime; a rule that allows one container and not
# its sibling), then dpkg -r and -P; last, the previous release's package installed and upgraded
# to this build's during a connect storm.
# One line per check on the second serial port, in vm-test's protocol (xtask/src/vm/results.rs):
#   IMDSG-BOOTED host <uname -r> <uptime>    (each boot)
#   IMDSG-RESULT host <check> ok|FAIL <seconds>s <detail>
#   IMDSG-LOG <check> | <line>               a failed check's output
#   IMDSG-DONE host
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
exec 3>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
say() { printf '%s\n' "$*" >&3; }
STATE=/var/lib/imdsg-host
OUT=/imdsg/out
H="python3 /imdsg/host.py"
EARLY_OUT=/var/lib/imdsg-early/attempts
SLOW_START=5
mkdir -p "$STATE" "$OUT"
boots=$(($(cat "$STATE/boots" 2>/dev/null || echo 0) + 1))
echo "$boots" >"$STATE/boots"
say "IMDSG-BOOTED host $(uname -r) $(cut -d' ' -f1 /proc/uptime)"

finish() {
	say "IMDSG-DONE host"
	sync
	umount /imdsg 2>/dev/null
	systemctl poweroff --no-block
	sleep 120
}
# A third boot means a reboot the run did not ask for (a panic: the kernel reboots on one).
if [ "$boots" -gt 2 ]; then
	say "IMDSG-SETUP host FAIL boot $boots: the guest rebooted by itself"
	finish
fi

now() { cut -d' ' -f1 /proc/uptime; }
detail() { printf '%s' "$*" >/run/imdsg-detail; }
# check <name> <function>: runs it (its output to $OUT/<name>.log), one result line.
check() {
	local name=$1 fn=$2 t0 t1 rc secs status=FAIL
	: >/run/imdsg-detail
	t0=$(now)
	echo "== $name" >>"$OUT/$name.log"
	"$fn" >>"$OUT/$name.log" 2>&1
	rc=$?
	t1=$(now)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	[ $rc -eq 0 ] && status=ok
	say "IMDSG-RESULT host $name $status ${secs}s $(tr '\n\t' '  ' </run/imdsg-detail | cut -c1-400)"
	if [ $status != ok ]; then
		tail -n 30 "$OUT/$name.log" | sed "s/^/IMDSG-LOG $name | /" >&3
	fi
	sync
	return $rc
}
fail() { # fail <why>: the detail, and a non-zero status
	detail "$*"
	echo "FAILED: $*"
	return 1
}
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
# Outcome of one connect by nobody ("EPERM pid=N").
nobody_connect() { as_nobody $H connect; }
wait_active() { # wait_active <seconds>
	local i=0
	while [ "$(systemctl is-active imds-guard)" != active ] && [ $i -lt $(($1 * 10)) ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ "$(systemctl is-active imds-guard)" = active ]
}
reloads() { journalctl --no-pager -o cat IMDS_GUARD_EVENT=policy_reloaded | wc -l; }
main_pid() { systemctl show -p MainPID --value imds-guard; }
# A storm of nobody's connects in the background (storm_start); storm_end stops it and puts its
# outcomes counted, as JSON, in $STORM_COUNTS. (Not printed for a $(...): `wait` in that subshell
# returns at once, the storm not being its child, and the counts could be read before written.)
STORM_STOP=/run/imdsg-storm-stop
storm_start() {
	rm -f "$STORM_STOP"
	as_nobody $H storm "$STORM_STOP" >/run/imdsg-storm &
	STORM_PID=$!
	sleep 2
}
storm_end() {
	touch "$STORM_STOP"
	wait "$STORM_PID"
	STORM_COUNTS=$(cat /run/imdsg-storm)
}
# eperm_only <counts>: every connect of the storm got EPERM (and there were some).
eperm_only() {
	python3 -c 'import json,sys; c=json.loads(sys.argv[1]); sys.exit(0 if c.get("EPERM",0) > 0 and set(c) == {"EPERM"} else 1)' "$1"
}
# The enforce policy of the checks (root allowed, everyone else refused), written beside the file
# and renamed into place, as configuration management does: under TCG a `cat >` in place was
# once installed half-written by the file watch (an enforce policy without its rule, generation
# 2, replaced 120 ms later; the daemon now waits for the writer to close the file).
enforce_policy() {
	cat >/etc/imds-guard/policy.toml.new <<-'EOF'
		mode = "enforce"
		endpoints = ["aws-imds"]
		[[allow]]
		name = "root"
		uid = 0
	EOF
	imds-guard check --config /etc/imds-guard/policy.toml.new || return
	mv /etc/imds-guard/policy.toml.new /etc/imds-guard/policy.toml
}
# root's IMDSv2 token PUT and GET (curl): prints what the fake IMDS answered, or what failed.
root_fetch() {
	local tok
	tok=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token) ||
		{ echo "root's token PUT failed"; return 1; }
	curl -sf -m 5 -H "X-aws-ec2-metadata-token: $tok" http://169.254.169.254/latest/meta-data/instance-id ||
		{ echo "root's GET failed"; return 1; }
}

# --- phase 1 ----------------------------------------------------------------------------------

c_systemd() {
	local pid1 ver
	pid1=$(readlink /proc/1/exe)
	ver=$(systemctl --version | head -n1)
	ip -o link show
	[ "$(ip -o link show | grep -vc ': lo:')" = 0 ] || { fail "a network device besides lo: $(ip -o link show | grep -v ': lo:')"; return; }
	case "$pid1" in
	*/systemd) detail "PID 1 $pid1 ($ver), no network device, kernel $(uname -r)" ;;
	*) fail "PID 1 is $pid1, not systemd" ;;
	esac
}

c_install() {
	local deb t0
	deb=$(ls /imdsg/files/imds-guard_*_amd64.deb)
	t0=$(now)
	# As README.md says: dpkg -i target/debian/imds-guard_<version>-1_amd64.deb
	dpkg -i "$deb" || { fail "dpkg -i $(basename "$deb") failed"; return; }
	wait_active 30 || { fail "imds-guard is $(systemctl is-active imds-guard) after dpkg -i"; systemctl status imds-guard; return; }
	detail "dpkg -i $(basename "$deb"): installed, enabled $(systemctl is-enabled imds-guard), active in $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s"
}

# CAP_DAC_READ_SEARCH (2), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19), CAP_PERFMON (38), CAP_BPF (39).
FIVE_CAPS=000000c000081004
c_user_caps() {
	local pid uid st set
	pid=$(main_pid)
	uid=$(id -u imds-guard) || { fail "no user imds-guard"; return; }
	st=/proc/$pid/status
	cat "$st"
	[ "$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "$st")" = "$uid $uid $uid $uid" ] ||
		{ fail "MainPID $pid runs as $(awk '/^Uid:/' "$st"), not imds-guard ($uid)"; return; }
	for set in CapPrm CapEff CapBnd CapAmb; do
		[ "$(awk -v k="$set:" '$1 == k { print $2 }' "$st")" = $FIVE_CAPS ] ||
			{ fail "$set is $(awk -v k="$set:" '$1 == k { print $2 }' "$st"), not $FIVE_CAPS"; return; }
	done
	detail "MainPID $pid: uid $uid (imds-guard), CapPrm=CapEff=CapBnd=CapAmb=$FIVE_CAPS (bpf, net_admin, perfmon, sys_ptrace, dac_read_search)"
}

# The fake IMDS on the guest's lo (a transient unit), unless it runs already.
start_fake() {
	ip addr show dev lo | grep -q '169.254.169.254/32' || ip addr add 169.254.169.254/32 dev lo
	systemctl is-active -q imdsg-fake-imds || systemd-run --unit=imdsg-fake-imds --quiet $H fake-imds ||
		{ fail "systemd-run the fake IMDS"; return; }
	local i=0
	while ! ss -ltn | grep -q '169.254.169.254:80 ' && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	ss -ltn | grep -q '169.254.169.254:80 ' || fail "the fake IMDS does not listen"
}

c_fake_imds() {
	start_fake || return
	local r
	r=$(nobody_connect)
	[ "${r%% *}" = connected ] || { fail "monitor mode: nobody got $r, not connected"; return; }
	detail "fake IMDS on lo 169.254.169.254:80; monitor mode (the package's policy): nobody connected"
}

c_enforce_reload() {
	local before after gen
	before=$(reloads)
	enforce_policy || { fail "imds-guard check refuses the policy"; return; }
	sleep 2 # the file watch installs the edit
	systemctl reload imds-guard || { fail "systemctl reload failed"; return; }
	sleep 3
	after=$(reloads)
	journalctl --no-pager -u imds-guard -n 20
	[ $((after - before)) = 1 ] || { fail "one edit and systemctl reload installed $((after - before)) times (want 1)"; return; }
	gen=$(journalctl --no-pager -o json IMDS_GUARD_EVENT=policy_reloaded | tail -n1 | python3 -c 'import json,sys; e=json.load(sys.stdin); print(e["IMDS_GUARD_GENERATION"], e["IMDS_GUARD_MODE"], e["IMDS_GUARD_REASON"])')
	case "$gen" in
	*" enforce "*) detail "edit + systemctl reload: installed once (generation, mode, reason: $gen)" ;;
	*) fail "the last policy_reloaded is $gen, not enforce" ;;
	esac
}

c_denied() {
	local r pid
	r=$(nobody_connect)
	pid=${r##*pid=}
	[ "${r%% *}" = EPERM ] || { fail "nobody's connect: $r, not EPERM"; return; }
	local j
	j=$($H denied-event "$pid") || { fail "$j"; return; }
	detail "nobody: EPERM; $j"
}

c_root() {
	local id
	id=$(root_fetch) || { fail "$id"; return; }
	[ "$id" = i-0123456789imdsgvm ] || { fail "root got '$id'"; return; }
	detail "root (curl, IMDSv2): answered by the fake IMDS ($id)"
}

c_stop() {
	$H links >"$STATE/links"
	[ -s "$STATE/links" ] || { fail "no imdsg bpf links while running"; return; }
	systemctl stop imds-guard
	[ "$(systemctl is-active imds-guard)" = inactive ] || { fail "imds-guard is $(systemctl is-active imds-guard) after stop"; return; }
	local r links
	r=$(nobody_connect)
	links=$($H links)
	[ "${r%% *}" = EPERM ] || { fail "stopped: nobody got $r"; return; }
	[ "$links" = "$(cat "$STATE/links")" ] || { fail "links changed: $(cat "$STATE/links") -> $links"; return; }
	detail "stopped (inactive): nobody still EPERM, links $links still attached"
}

c_start() {
	systemctl start imds-guard || { fail "systemctl start failed"; return; }
	wait_active 10 || { fail "not active after start"; return; }
	local r links
	r=$(nobody_connect)
	links=$($H links)
	journalctl --no-pager -u imds-guard -n 15
	[ "${r%% *}" = EPERM ] || { fail "after start: nobody got $r"; return; }
	[ "$links" = "$(cat "$STATE/links")" ] || { fail "links changed: $(cat "$STATE/links") -> $links (not adopted)"; return; }
	detail "started: adopted the same links ($links), nobody EPERM"
}

c_restart() {
	local counts old
	old=$(main_pid)
	storm_start
	systemctl restart imds-guard || { storm_end; fail "systemctl restart failed"; return; }
	wait_active 10 || { storm_end; fail "not active after restart"; return; }
	sleep 2
	storm_end
	counts=$STORM_COUNTS
	echo "storm: $counts"
	[ "$(main_pid)" != "$old" ] || { fail "MainPID unchanged ($old): no restart happened"; return; }
	eperm_only "$counts" || { fail "connects across the restart: $counts (want EPERM only)"; return; }
	[ "$($H links)" = "$(cat "$STATE/links")" ] || { fail "links changed across the restart"; return; }
	detail "restart (MainPID $old -> $(main_pid)) during a denied connect storm: $counts, same links"
}

# An upgrade of the live package (dpkg -i of a later version) during a storm of denied connects:
# the package's postinst restarts the daemon (restart-after-upgrade), which adopts the pinned
# enforcement, so nothing gets through. The later version (files/upgrade/, made by host.rs) is
# this build's package with its version raised: the upgrade path, not a change of the daemon
# between versions.
c_upgrade() {
	local new v2 counts old
	new=$(ls /imdsg/files/upgrade/imds-guard_*_amd64.deb)
	v2=$(dpkg-deb -f "$new" Version)
	old=$(main_pid)
	storm_start
	dpkg -i "$new" || { storm_end; fail "dpkg -i of $v2 failed"; return; }
	wait_active 10 || { storm_end; fail "not active after the upgrade"; return; }
	sleep 2
	storm_end
	counts=$STORM_COUNTS
	echo "storm: $counts"
	[ "$(dpkg-query -W -f='${Version}' imds-guard)" = "$v2" ] || { fail "not upgraded to $v2"; return; }
	[ "$(main_pid)" != "$old" ] || { fail "the upgrade did not restart the daemon (MainPID $old)"; return; }
	eperm_only "$counts" || { fail "connects across the upgrade: $counts (want EPERM only)"; return; }
	[ "$($H links)" = "$(cat "$STATE/links")" ] || { fail "links changed across the upgrade"; return; }
	grep -q '^mode = "enforce"' /etc/imds-guard/policy.toml || { fail "the upgrade replaced the edited policy"; return; }
	detail "dpkg -i to $v2 during a denied connect storm: $counts, MainPID $old -> $(main_pid), same links, edited policy kept"
}

c_security() {
	local out score
	out=$(systemd-analyze security --no-pager imds-guard.service)
	echo "$out"
	score=$(echo "$out" | sed -n 's/.*Overall exposure level for imds-guard.service: \([0-9.]*\).*/\1/p')
	[ -n "$score" ] || { fail "no overall exposure level"; return; }
	awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || { fail "exposure $score > 2.0"; return; }
	detail "systemd-analyze security on the live unit: exposure $score (at most 2.0)"
}

# A workload as units are usually written (default dependencies, After=network.target), which
# tries the endpoint as soon as it starts; enabled, so it runs at the next boot.
c_early_unit() {
	install -m 0644 /dev/stdin /etc/systemd/system/imdsg-early.service <<-'EOF'
		[Unit]
		Description=imds-guard VM check: a workload that reaches for the metadata service at boot
		After=network.target
		[Service]
		Type=oneshot
		User=nobody
		StateDirectory=imdsg-early
		ExecStartPre=+/bin/sh -c 'ip addr add 169.254.169.254/32 dev lo || true'
		ExecStart=/usr/bin/python3 /usr/local/lib/imdsg-host.py early /var/lib/imdsg-early/attempts
		[Install]
		WantedBy=multi-user.target
	EOF
	install -m 0644 /imdsg/host.py /usr/local/lib/imdsg-host.py
	systemctl enable imdsg-early.service || { fail "cannot enable imdsg-early.service"; return; }
	# imds-guard's start made slow on purpose (as a large policy or a loaded host makes it), so
	# that only the units' ordering, not the daemon's speed, can get enforcement in first. Under
	# TCG on a loaded machine its start at boot (the verifier, emulated) took up to 72 s: more
	# time than the default start timeout leaves.
	mkdir -p /etc/systemd/system/imds-guard.service.d
	printf '[Service]\nExecStartPre=+/bin/sleep %s\nTimeoutStartSec=300\n' "$SLOW_START" \
		>/etc/systemd/system/imds-guard.service.d/imdsg-slow-start.conf
	systemctl daemon-reload
	detail "imdsg-early.service (User=nobody, After=network.target) enabled, imds-guard's start slowed by ${SLOW_START} s; rebooting"
}

# --- phase 2 ----------------------------------------------------------------------------------

c_boot_order() {
	local first ready
	wait_active 30 || { fail "imds-guard is $(systemctl is-active imds-guard) after the reboot"; return; }
	local i=0
	while [ ! -s "$EARLY_OUT" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
	cat "$EARLY_OUT"
	systemd-analyze critical-chain imdsg-early.service --no-pager || true
	first=$(head -n1 "$EARLY_OUT" 2>/dev/null)
	ready=$(systemctl show -p ActiveEnterTimestampMonotonic --value imds-guard)
	ready=$(awk -v u="$ready" 'BEGIN { printf "%.1f", u / 1e6 }')
	rm -rf /etc/systemd/system/imds-guard.service.d
	systemctl daemon-reload
	[ -n "$first" ] || { fail "imdsg-early.service made no attempt"; return; }
	[ "${first%% *}" = EPERM ] ||
		{ fail "the early unit's first attempt: ${first%% *} at ${first##* } s, imds-guard ready at $ready s"; return; }
	detail "the early unit's first attempt: EPERM at ${first##* } s; imds-guard ready at $ready s"
}

# Containers (podman with crun, from Debian's packages) run from a local root directory holding
# only busybox: no image, no registry. They share the guest's network namespace (--network host),
# where the fake IMDS listens; run as nobody, whom the policy does not allow.
CTR_ROOT=/var/lib/imdsg-ctr-root
ctr_root() {
	mkdir -p "$CTR_ROOT/bin" "$CTR_ROOT/etc" "$CTR_ROOT/go"
	cp /bin/busybox "$CTR_ROOT/bin/busybox"
	# (nc, not wget: Debian's static busybox wget crashes in its name lookup, even for an address)
	for a in sh nc printf sleep cat; do ln -sf busybox "$CTR_ROOT/bin/$a"; done
}
# ctr <name> <script>: starts a container running <script> (busybox sh), detached; /go is
# /run/imdsg-go of the guest.
ctr() {
	podman run -d --name "$1" --user 65534:65534 --network host \
		-v /run/imdsg-go:/go --rootfs "$CTR_ROOT" /bin/sh -c "$2" >/dev/null
}
GET="printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' | nc -w 5 169.254.169.254 80"
# After its attempt a container waits for /go/done: the daemon names the container from the
# cgroup of a process that is still there (a container that exits at once may be gone, its
# cgroup removed, by the time the daemon handles the event under TCG: seen once).
HOLD='rc=$?; while [ ! -e /go/done ]; do sleep 0.2; done; exit $rc'
# ctr_output <name>: waits (30 s at most) for the container's first output (its attempt is
# made), prints it.
ctr_output() {
	local i=0
	while ! podman logs "$1" 2>&1 | grep -q . && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
	podman logs "$1" 2>&1
}

c_container_denied() {
	start_fake || return
	ctr_root
	mkdir -p /run/imdsg-go
	rm -f /run/imdsg-go/done
	podman --version
	ctr imdsg-denied "$GET; $HOLD" || { fail "podman run failed"; return; }
	local id rc out ev
	id=$(podman inspect -f '{{.Id}}' imdsg-denied)
	out=$(ctr_output imdsg-denied)
	ev=$($H container-event "$id")
	local evrc=$?
	touch /run/imdsg-go/done
	rc=$(podman wait imdsg-denied)
	out=$(podman logs imdsg-denied 2>&1)
	echo "exit $rc: $out"
	[ "$rc" != 0 ] && echo "$out" | grep -q 'Operation not permitted' ||
		{ fail "container imdsg-denied: exit $rc, $out (want EPERM)"; return; }
	[ $evrc = 0 ] || { fail "$ev"; return; }
	detail "podman container ${id:0:12} (nobody, local rootfs): nc EPERM; $ev"
}

c_container_rule() {
	local a b cg before
	rm -f /run/imdsg-go/go /run/imdsg-go/done
	for n in imdsg-allowed imdsg-sibling; do
		ctr $n "while [ ! -e /go/go ]; do sleep 0.2; done; $GET; $HOLD" || { fail "podman run $n failed"; return; }
	done
	a=$(podman inspect -f '{{.Id}}' imdsg-allowed)
	b=$(podman inspect -f '{{.Id}}' imdsg-sibling)
	cg=$(cut -d: -f3 "/proc/$(podman inspect -f '{{.State.Pid}}' imdsg-allowed)/cgroup")
	cg=${cg%/container}
	echo "allowed $a in $cg; sibling $b"
	case "$cg" in */libpod-"$a".scope) ;; *) fail "container cgroup $cg is not libpod-$a.scope"; return ;; esac
	before=$(reloads)
	cp /etc/imds-guard/policy.toml /etc/imds-guard/policy.toml.new
	cat >>/etc/imds-guard/policy.toml.new <<-EOF
		[[allow]]
		name = "one container"
		cgroup = "$cg"
	EOF
	mv /etc/imds-guard/policy.toml.new /etc/imds-guard/policy.toml
	systemctl reload imds-guard
	local i=0
	while [ "$(reloads)" = "$before" ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
	[ "$(reloads)" != "$before" ] || { fail "the policy with the container rule was not installed"; return; }
	touch /run/imdsg-go/go
	local out_a out_b ev evrc rc_a rc_b
	out_a=$(ctr_output imdsg-allowed)
	out_b=$(ctr_output imdsg-sibling)
	ev=$($H container-event "$b")
	evrc=$?
	touch /run/imdsg-go/done
	rc_a=$(podman wait imdsg-allowed)
	rc_b=$(podman wait imdsg-sibling)
	out_a=$(podman logs imdsg-allowed 2>&1)
	out_b=$(podman logs imdsg-sibling 2>&1)
	echo "allowed: exit $rc_a: $out_a"
	echo "sibling: exit $rc_b: $out_b"
	[ "$rc_a" = 0 ] && echo "$out_a" | grep -q '^i-0123456789imdsgvm$' || { fail "allowed container: exit $rc_a, $out_a"; return; }
	[ "$rc_b" != 0 ] && echo "$out_b" | grep -q 'Operation not permitted' ||
		{ fail "sibling container: exit $rc_b, $out_b (want EPERM)"; return; }
	[ $evrc = 0 ] || { fail "$ev"; return; }
	if journalctl --no-pager -o cat IMDS_GUARD_EVENT=connect_denied "IMDS_GUARD_CONTAINER_ID=$a" | grep -q .; then
		fail "a connect_denied event names the allowed container"
		return
	fi
	podman rm -f imdsg-denied imdsg-allowed imdsg-sibling >/dev/null
	detail "cgroup rule for ${a:0:12} ($cg): it got the instance id, its sibling ${b:0:12} EPERM ($ev)"
}

c_remove() {
	start_fake || return
	dpkg -r imds-guard || { fail "dpkg -r failed"; return; }
	local r links
	r=$(nobody_connect)
	links=$($H links)
	[ -z "$links" ] || { fail "links left after dpkg -r: $links"; return; }
	[ ! -e /sys/fs/bpf/imds-guard ] || { fail "pins left: $(ls /sys/fs/bpf/imds-guard)"; return; }
	[ "${r%% *}" = connected ] || { fail "after dpkg -r nobody got $r, not connected"; return; }
	[ -f /etc/imds-guard/policy.toml ] || { fail "dpkg -r removed the conffile"; return; }
	[ "$(systemctl is-active imds-guard)" != active ] || { fail "still active"; return; }
	detail "dpkg -r: stopped, no imdsg links, no pins, nobody connected; the conffile kept"
}

c_purge() {
	dpkg -P imds-guard || { fail "dpkg -P failed"; return; }
	local left=""
	for p in /etc/imds-guard /var/lib/imds-guard /usr/bin/imds-guard /usr/lib/systemd/system/imds-guard.service \
		/etc/systemd/system/multi-user.target.wants/imds-guard.service; do
		[ ! -e "$p" ] || left="$left $p"
	done
	[ -z "$left" ] || { fail "left after dpkg -P:$left"; return; }
	dpkg-query -W -f='${Status}' imds-guard 2>/dev/null | grep -q installed && { fail "dpkg still knows the package"; return; }
	detail "dpkg -P: policy, state, binary, unit and its enablement gone (the user imds-guard kept, as Debian does)"
}

# --- the previous release ---------------------------------------------------------------------

# The upgrade a user makes from one release to the next: the previous release's package
# (files/previous/: the commit xtask/src/previous.rs pins, version <upstream>~prev.<commit>-1)
# installed on this host, which `purge` left without imds-guard (its user stays, as after any
# purge), the enforce policy put in force as enforce-reload does, then `dpkg -i` of this build's
# package during a storm of nobody's connects. The new daemon adopts the pinned maps if their
# layout is its own; if not, it makes maps of its own, installs the policy in them and swaps its
# programs into the same links (imds-guard/src/kernel/attach.rs). Either way no connect may get
# through; the line says which happened.
c_upgrade_prev() {
	local prev cur v1 v2 before i r old new maps1 maps2 links1 links2 counts id how
	prev=$(ls /imdsg/files/previous/imds-guard_*_amd64.deb)
	cur=$(ls /imdsg/files/imds-guard_*_amd64.deb)
	v1=$(dpkg-deb -f "$prev" Version)
	v2=$(dpkg-deb -f "$cur" Version)
	start_fake || return
	dpkg -i "$prev" || { fail "dpkg -i of the previous release $v1 failed"; return; }
	wait_active 60 || { fail "the previous release is $(systemctl is-active imds-guard) after dpkg -i"; systemctl status imds-guard; return; }
	imds-guard --version
	before=$(reloads)
	enforce_policy || { fail "the previous release's imds-guard check refuses the enforce policy"; return; }
	systemctl reload imds-guard || { fail "systemctl reload of the previous release failed"; return; }
	i=0
	while [ "$(reloads)" = "$before" ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
	[ "$(reloads)" != "$before" ] || { fail "the previous release did not install the enforce policy"; return; }
	r=$(nobody_connect)
	[ "${r%% *}" = EPERM ] || { fail "the previous release in enforce mode: nobody got $r"; return; }
	maps1=$(ls /sys/fs/bpf/imds-guard | grep '^maps-')
	links1=$($H links)
	old=$(main_pid)
	storm_start
	# --force-confold: if the packaged policy changed between the releases, dpkg keeps the edited
	# one without asking (as unattended upgrades answer); with an unchanged one it asks nothing.
	dpkg --force-confold -i "$cur" || { storm_end; fail "dpkg -i of $v2 over $v1 failed"; return; }
	wait_active 60 || { storm_end; fail "not active after the upgrade from $v1"; return; }
	sleep 2
	storm_end
	counts=$STORM_COUNTS
	new=$(main_pid)
	echo "storm: $counts"
	imds-guard --version
	journalctl --no-pager -u imds-guard -n 30
	maps2=$(ls /sys/fs/bpf/imds-guard | grep '^maps-')
	links2=$($H links)
	echo "maps: $maps1 -> $maps2; links: $links1 -> $links2"
	[ "$(dpkg-query -W -f='${Version}' imds-guard)" = "$v2" ] || { fail "not upgraded to $v2"; return; }
	[ "$new" != "$old" ] || { fail "the upgrade did not restart the daemon (MainPID $old)"; return; }
	eperm_only "$counts" || { fail "connects across the upgrade from $v1: $counts (want EPERM only)"; return; }
	grep -q '^mode = "enforce"' /etc/imds-guard/policy.toml || { fail "the upgrade replaced the edited policy"; return; }
	[ -n "$links2" ] || { fail "no imdsg links after the upgrade"; return; }
	[ "$(echo "$maps2" | wc -w)" = 1 ] || { fail "map directories after the upgrade: $maps2 (the old layout's left?)"; return; }
	r=$(nobody_connect)
	[ "${r%% *}" = EPERM ] || { fail "after the upgrade nobody got $r"; return; }
	id=$(root_fetch) || { fail "after the upgrade: $id"; return; }
	[ "$id" = i-0123456789imdsgvm ] || { fail "after the upgrade root got '$id'"; return; }
	if [ "$maps1" = "$maps2" ]; then how="maps adopted (same layout)"; else how="another map layout: new maps, old removed"; fi
	how="$how, $($H links-diff "$links1" "$links2")"
	detail "dpkg -i $v1, enforce policy, then dpkg -i $v2 during a denied connect storm: $counts, MainPID $old -> $new; $how; edited policy kept; after: nobody EPERM, root answered"
}

if [ "$boots" = 1 ]; then
	check systemd c_systemd
	check install c_install
	check user-caps c_user_caps
	check fake-imds c_fake_imds
	check enforce-reload c_enforce_reload
	check denied c_denied
	check root-allowed c_root
	check stop-keeps c_stop
	check start-adopts c_start
	check restart-no-window c_restart
	check upgrade-no-window c_upgrade
	check security c_security
	check early-unit c_early_unit
	sync
	umount /imdsg 2>/dev/null
	systemctl reboot --no-block
	sleep 300
else
	check boot-order c_boot_order
	check container-denied c_container_denied
	check container-rule c_container_rule
	check remove c_remove
	check purge c_purge
	check upgrade-from-previous c_upgrade_prev
	finish
fi
