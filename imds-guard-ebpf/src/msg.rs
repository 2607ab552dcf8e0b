//! `sk_msg` on connections to metadata endpoints: classify each request the process writes with
//! the shared HTTP state machine, report tokenless (IMDSv1) requests and token PUTs that carry
//! X-Forwarded-For, and refuse the write (SK_DROP: `sendmsg` fails with EACCES at once) when the
//! workload's `imdsv1` is "deny". The parser state lives with the socket, so a request split over
//! several writes is judged once, when its header block ends.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_ktime_get_boot_ns, bpf_loop, bpf_msg_pull_data, bpf_probe_read_kernel, bpf_sk_storage_get,
        },
    },
    macros::sk_msg,
    programs::SkMsgContext,
};
use imds_guard_common::{
    event::{AF_INET, RequestEvent, TaskInfo, flags, kind},
    http::Finding,
    rule::Imdsv1Action,
    sock::{SCAN_MAX, ScanState, SockState},
    stats::Stat,
};

use crate::maps::{EVENTS, IMDSG_SOCKSTATE, count};

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

extern "C" fn scan_byte(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer to imdsg_msg's stack slot holding the socket's
    // storage pointer; the storage stays valid for the whole program run.
    let st = unsafe { &mut **ctx.cast::<*mut SockState>() };
    if i >= u64::from(st.scan.len) {
        return 1;
    }
    let b = st.buf[(i as usize) & (SCAN_MAX as usize - 1)];
    st.http.step(b);
    let f = st.http.finding();
    match f {
        Finding::Imdsv1 | Finding::Oversized => {
            st.scan.finding = f as u32;
            st.scan.v1 = 1;
            return 1; // stop: this request decides the message
        }
        Finding::TokenPutForwarded if st.scan.finding == 0 => st.scan.finding = f as u32,
        _ => {}
    }
    if f.is_final() {
        st.http.reset();
    }
    0
}

#[sk_msg]
pub fn imdsg_msg(ctx: SkMsgContext) -> u32 {
    let md = ctx.msg;
    // SAFETY: the sk_msg context.
    let sk = unsafe { (*md).__bindgen_anon_3.sk };
    // SAFETY: helper call with our storage map and the message's socket.
    let st = unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(IMDSG_SOCKSTATE).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<SockState>();
    if st.is_null() {
        return SK_PASS;
    }
    let mut st_ptr = st;
    // SAFETY: storage of this socket.
    let st = unsafe { &mut *st };
    let size = ctx.size();
    let want = if size > SCAN_MAX { SCAN_MAX } else { size };
    // SAFETY: makes the first `want` bytes linear so that data..data_end covers them.
    unsafe { bpf_msg_pull_data(md.cast(), 0, want, 0) };
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut len = end.wrapping_sub(data) as u32;
    if len > want {
        len = want;
    }
    if len == 0 || len > SCAN_MAX {
        return SK_PASS;
    }
    // SAFETY: copies `len` (1..=SCAN_MAX) bytes of the message into this socket's buffer.
    if unsafe { bpf_probe_read_kernel(st.buf.as_mut_ptr().cast(), len, data as *const c_void) } != 0 {
        return SK_PASS;
    }
    st.scan = ScanState { len, finding: 0, v1: 0, _pad: 0 };
    // SAFETY: bpf_loop with a callback that only touches this socket's storage.
    unsafe { bpf_loop(len, scan_byte as *mut c_void, core::ptr::addr_of_mut!(st_ptr).cast(), 0) };
    let st = unsafe { &mut *st_ptr };
    let mut scan = st.scan;
    if scan.v1 == 0 && size > len {
        // Bytes we did not read: whether they continue this request or start another one, they
        // must not be a way around (no IMDS request needs a write of this size).
        scan.v1 = 1;
        scan.finding = Finding::Oversized as u32;
    }
    if scan.finding == 0 {
        return SK_PASS;
    }
    let finding = Finding::from_u32(scan.finding);
    let action = Imdsv1Action::from_u32(st.imdsv1);
    count(match finding {
        Finding::TokenPutForwarded => Stat::TokenPutForwarded,
        Finding::Oversized => Stat::Unclassified,
        _ => Stat::Imdsv1Requests,
    });
    let deny = scan.v1 != 0 && action == Imdsv1Action::Deny;
    if deny {
        count(Stat::Imdsv1Denied);
    }
    if deny || action != Imdsv1Action::Allow || finding == Finding::TokenPutForwarded {
        report(&ctx, st, &scan, deny);
    }
    // The message is judged; the next one starts a new request.
    st.http.reset();
    if deny { SK_DROP } else { SK_PASS }
}

#[inline(always)]
fn report(ctx: &SkMsgContext, st: &SockState, scan: &ScanState, deny: bool) {
    let Some(mut entry) = EVENTS.reserve::<RequestEvent>(0) else {
        count(Stat::EventsDropped);
        return;
    };
    let md = ctx.msg;
    // SAFETY: reads of the sk_msg context, each a volatile 32-bit load at the field's own address
    // (the verifier refuses loads through a ctx pointer the compiler has moved).
    let (family, port, ip4, ip6) = unsafe {
        use core::ptr::{addr_of, read_volatile as rd};
        (
            rd(addr_of!((*md).family)),
            rd(addr_of!((*md).remote_port)),
            rd(addr_of!((*md).remote_ip4)),
            [
                rd(addr_of!((*md).remote_ip6[0])),
                rd(addr_of!((*md).remote_ip6[1])),
                rd(addr_of!((*md).remote_ip6[2])),
                rd(addr_of!((*md).remote_ip6[3])),
            ],
        )
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
        addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    }
    // The writer, which sendmsg runs as; the connect-time identity where it differs is kept in
    // the storage and not reported here.
    let uid_gid = bpf_get_current_uid_gid();
    let ev = entry.write(RequestEvent {
        kind: kind::IMDS_REQUEST,
        flags: if deny { flags::ENFORCED } else { 0 },
        // SAFETY: plain helper call.
        time_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid_tgid: bpf_get_current_pid_tgid(),
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: st.cgroup_id,
        comm: st.comm,
        family,
        // sk_msg_md.remote_port holds the network-order port in its upper 16 bits.
        port: u32::from(u16::from_be((port >> 16) as u16)),
        addr,
        generation: st.generation,
        finding: scan.finding,
        method: if scan.v1 != 0 { u32::from(st.http.method) } else { 0 },
        path_len: if scan.v1 != 0 { u32::from(st.http.path_len) } else { 0 },
        rule_index: st.rule_index,
        _pad: 0,
        task: TaskInfo::default(),
        path: st.http.path,
    });
    if let Some(cfg) = crate::maps::live_config() {
        crate::task::fill(&mut ev.task, &cfg.exe_offsets);
    }
    entry.submit(0);
    count(Stat::EventsSent);
}
