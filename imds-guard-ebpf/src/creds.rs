//! Credential attribution: when a process receives credentials from a metadata endpoint, report
//! the process with the access key id and expiry the response named (`credentials_fetched`).
//!
//! - The message hook, once it has judged a request that goes through, arms a watch
//!   ([`crate::maps::CREDS`], by socket cookie) when the request asks for credentials
//!   (`imds_guard_common::creds::wants_response`), filled with who wrote it and what it asked for.
//! - `imdsg_resp`, a stream verdict program on the same sockhash as the message hook (so it runs
//!   for metadata connections only, and returns at once for those without a watch), reads the
//!   response segment by segment with the shared scanner, and reports the event when the JSON
//!   document closes. The secret access key and the session token are read in registers and
//!   written nowhere; the scanner reads the packet in place (no copy to scratch memory).
//! - A watch whose response did not close is reported (if it had a key id) when the next request
//!   is written on the connection or when the connection closes (`sockops`).

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_ktime_get_ns},
    },
    macros::{map, stream_verdict},
    maps::Array,
    programs::{SkBuffContext, SkMsgContext},
};
use imds_guard_common::{
    config::{GenConfig, Mode},
    creds::{self, Letters, Outcome, SEGMENT_MAX, VALUES_MAX, Watch, flag},
    event::{CredentialsEvent, RequestEvent, TaskInfo, flags as event_flags, kind},
    http::{Finding, PATH_MAX},
    sock::{Guard, SockState, TAINTED_REPORTED, TAINTED_WITHHELD, sent_unseen},
    stats::Stat,
};

use crate::maps::{CREDS, EVENTS, GUARDS, count, live_config};

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;
// `bpf_sock.state` values (include/uapi/linux/bpf.h, BPF_TCP_*).
const BPF_TCP_FIN_WAIT1: u32 = 4;
const BPF_TCP_FIN_WAIT2: u32 = 5;
const BPF_TCP_LAST_ACK: u32 = 9;
const BPF_TCP_CLOSING: u32 = 11;

/// A zeroed watch, the value a new watch is inserted with (the stack cannot hold one). Never
/// written.
#[map(name = "IMDSG_CREDS_ZERO")]
static ZERO: Array<Watch> = Array::with_max_entries(1, 0);

/// Reads each segment of a response that has a watch; passes every segment on unchanged, but on
/// a guarded connection where bytes past the message hook were queued (see `withheld`).
#[stream_verdict]
pub fn imdsg_resp(ctx: SkBuffContext) -> u32 {
    // SAFETY: the program's own context, as the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(g) = GUARDS.get_ptr_mut(&cookie) {
        // SAFETY: this connection's guard (see `imdsg_msg`'s). Opaque: every way through the
        // check goes on to the watch's loop as one (the verifier walks that loop once).
        if crate::judge::opaque(u32::from(withheld(&ctx, unsafe { &mut *g }))) != 0 {
            count(Stat::ResponsesWithheld);
            return SK_DROP;
        }
    }
    let Some(w) = CREDS.get_ptr_mut(&cookie) else { return SK_PASS };
    // SAFETY: the watch of this connection; the connection's segments are read one at a time
    // (under its socket lock), and only the message hook and `sockops`, under the same lock,
    // touch its watch otherwise.
    let w = unsafe { &mut *w };
    if w.resp.outcome() == Outcome::Reading {
        read(&ctx, w);
    }
    if w.resp.outcome() != Outcome::Reading {
        if w.resp.has_key() {
            emit(w);
        }
        let _ = CREDS.remove(&cookie);
    }
    SK_PASS
}

/// Whether this segment is withheld: bytes the message hook did not see were queued on the
/// connection (`imds_guard_common::sock::sent_unseen`), now or before (enforce mode). Found once,
/// reported once (`request_denied`, reason `uninspected`), as the process that connected.
#[inline(always)]
fn withheld(ctx: &SkBuffContext, g: &mut Guard) -> bool {
    if g.tainted != 0 {
        return g.tainted == TAINTED_WITHHELD;
    }
    let Some(cfg) = live_config() else { return false };
    let off = cfg.exe_offsets.tcp_write_seq;
    // SAFETY: the skb's socket (set before a verdict program runs; a socket_common).
    let sk = unsafe { (*ctx.as_ptr().cast::<aya_ebpf::bindings::__sk_buff>()).__bindgen_anon_2.sk };
    if off == 0 || sk.is_null() {
        return false;
    }
    // SAFETY: a read of the socket's state (a socket_common field).
    let state = unsafe { (*sk).state };
    // Our FIN queued: it took a sequence number.
    let fin_sent =
        matches!(state, BPF_TCP_FIN_WAIT1 | BPF_TCP_FIN_WAIT2 | BPF_TCP_CLOSING | BPF_TCP_LAST_ACK);
    // Unreadable: judged as unseen (fails closed).
    let write_seq = crate::task::read_at::<u32>(crate::task::address_of(sk), off);
    if write_seq.is_some_and(|ws| !sent_unseen(g.base, g.passed, ws, fin_sent)) {
        return false;
    }
    let enforce = cfg.mode() == Mode::Enforce;
    g.tainted = if enforce { TAINTED_WITHHELD } else { TAINTED_REPORTED };
    report_unseen(g, enforce);
    enforce
}

/// `request_denied` (reason `uninspected`) for a guarded connection: who connected, where to.
#[inline(always)]
fn report_unseen(g: &Guard, enforced: bool) {
    count(Stat::RequestsDenied);
    let Some(mut entry) = EVENTS.reserve::<RequestEvent>(0) else {
        count(Stat::EventsDropped);
        return;
    };
    entry.write(RequestEvent {
        kind: kind::IMDS_REQUEST,
        flags: event_flags::UNINSPECTED | if enforced { event_flags::ENFORCED } else { 0 },
        // SAFETY: plain helper call.
        time_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid_tgid: g.pid_tgid,
        uid: g.uid,
        gid: g.gid,
        cgroup_id: g.cgroup_id,
        comm: g.comm,
        family: g.family,
        port: g.port,
        addr: g.addr,
        generation: g.generation,
        finding: Finding::Incomplete as u32,
        method: 0,
        path_len: 0,
        rule_index: g.rule_index,
        read_class: 0,
        task: TaskInfo::default(),
        path: [0; PATH_MAX],
    });
    entry.submit(0);
    count(Stat::EventsSent);
}

/// Reads one segment into the watch: at most [`SEGMENT_MAX`] bytes, in place.
#[inline(always)]
fn read(ctx: &SkBuffContext, w: &mut Watch) {
    let len = ctx.len();
    let want = if len > SEGMENT_MAX { SEGMENT_MAX } else { len };
    if want == 0 {
        return;
    }
    // Makes the first `want` bytes linear, so that data..data_end covers them (a segment is
    // mostly in page fragments).
    if ctx.pull_data(want).is_err() {
        w.resp.flags |= flag::GAP;
        return;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut walk = w.resp.walk();
    // The end of each byte goes through this stack slot (see below).
    let mut next: usize = 0;
    let mut i: u32 = 0;
    while i < SEGMENT_MAX {
        let p = data + i as usize;
        // The end of the byte, compared as `next > end`: the form the verifier learns a range
        // from. (Left to itself the compiler compares `end > p` instead, from which the verifiers
        // learn nothing at offset 0.) Through a volatile stack slot, so that it stays that form.
        // SAFETY: volatile write and read of a local.
        let past = unsafe {
            core::ptr::write_volatile(&raw mut next, p + 1);
            core::ptr::read_volatile(&raw const next)
        };
        if past > end {
            break;
        }
        // SAFETY: a byte of the packet, inside data..data_end (checked just above).
        let b = unsafe { *(p as *const u8) };
        walk.step(&mut w.ev.values, b);
        i += 1;
    }
    w.resp.store(&walk);
    // The slot held a packet pointer with this iteration's offset: what it holds now is the same
    // on every way out of the loop. (Left as it was, the verifier saw a later 4-byte use of the
    // same slot read it, and kept every way out apart.)
    // SAFETY: a volatile write of a local.
    unsafe { core::ptr::write_volatile(&raw mut next, 0) };
    // SAFETY: a volatile write of a field of the watch.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(w.resp._pad[0]), i) };
    // Past the loop, everything comes back from memory: every way out of the loop then looks the
    // same to the verifier, which checks what follows once instead of once per byte. (The loop's
    // registers hold ranges that differ from one iteration to the next.) A helper call is what
    // makes the compiler read the watch again (it may have been written by the call) instead of
    // reusing those registers; volatile stores alone did not.
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() };
    // SAFETY: a volatile read of a field of the watch.
    let read = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(w.resp._pad[0])) };
    w.resp.account(read, len);
}

/// Reports the watch's event (its two values as read so far).
#[inline(always)]
fn emit(w: &mut Watch) {
    // Counted whether or not the buffer has room: generated = delivered + aggregated + dropped.
    count(Stat::CredentialsFetched);
    let Some(mut entry) = EVENTS.reserve::<CredentialsEvent>(0) else {
        count(Stat::EventsDropped);
        return;
    };
    w.ev.kind = kind::CREDENTIALS_FETCHED;
    w.ev.flags = w.resp.flags;
    // SAFETY: plain helper call.
    w.ev.time_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    w.ev.values_len =
        if w.resp.values_len > VALUES_MAX as u32 { VALUES_MAX as u32 } else { w.resp.values_len };
    // SAFETY: copies the event (plain data) into the reserved record, which has its size.
    unsafe { core::ptr::copy_nonoverlapping(core::ptr::addr_of!(w.ev), entry.as_mut_ptr(), 1) };
    entry.submit(0);
    count(Stat::EventsSent);
}

/// Ends the watch of connection `cookie`, reporting what it read if that named a key id: its
/// response will not be read further (another request is written, or the connection closes).
#[inline(always)]
pub fn end(cookie: u64) {
    if let Some(w) = CREDS.get_ptr_mut(&cookie) {
        // SAFETY: the watch of this connection (see `imdsg_resp`).
        let w = unsafe { &mut *w };
        if w.resp.has_key() {
            emit(w);
        }
        let _ = CREDS.remove(&cookie);
    }
}

/// After the message hook let a request through: ends the previous request's watch, and watches
/// this request's response if it may carry credentials. `path_known`: the request line was read
/// as one (its path in `st.http.path` and `st.path_tail` is this request's).
///
/// Written for the verifier: the two loops over the path are checked once per byte they may end
/// at, so nothing computed in them but the matcher's state is used after them (the lengths are
/// read again from the socket's storage, which the verifier knows nothing of), and nothing after
/// them branches on a length (the path is copied with masks, not tests): otherwise each way out of
/// the loops is checked through the rest of the program.
#[inline(always)]
pub fn request(ctx: &SkMsgContext, st: &mut SockState, cfg: &GenConfig, path_known: bool) {
    let cookie = st.cookie;
    if cfg.credentials == 0 || cookie == 0 {
        // No response hook on this kernel; or not put into the sockhash by this layout's sockops.
        return;
    }
    if st.watching != 0 {
        st.watching = 0;
        end(cookie);
    }
    if path_known && path_lengths(st).2 {
        let (path_len, tail_len, _) = path_lengths(st);
        // Both views taken before the walks: with the tail's taken between them, the compiler
        // kept other values live across the first walk and the hook verified in 570,000
        // instructions instead of 415,000 (6.18).
        let (path, tail) = (st.http.path_words(), st.path_tail_words());
        // Most paths hold no `c` or no `r`: they skip the matcher. Opaque, and the lengths read
        // again: the verifier walks the matcher's loops once, not once per word this loop may
        // end at.
        let letters = creds::letters(creds::letters(Letters::default(), path, path_len), tail, tail_len);
        if crate::judge::opaque(u32::from(letters.may_match())) == 0 {
            return; // the whole path was read, and it names no credentials
        }
        let (path_len, tail_len, _) = path_lengths(st);
        let s = creds::needle_words(0, path, path_len);
        let s = creds::needle_words(s, tail, tail_len);
        if !creds::found(s) {
            return; // the whole path was read, and it names no credentials
        }
    }
    let Some(zero) = ZERO.get(0) else { return };
    if CREDS.insert(&cookie, zero, u64::from(BPF_NOEXIST)).is_err() {
        count(Stat::CredentialsUnwatched);
        return;
    }
    st.watching = 1;
    let Some(w) = CREDS.get_ptr_mut(&cookie) else { return };
    // SAFETY: the watch just inserted for this connection.
    let ev = unsafe { &mut (*w).ev };
    let (family, port, addr) = crate::dest::destination(ctx);
    let uid_gid = bpf_get_current_uid_gid();
    ev.pid_tgid = bpf_get_current_pid_tgid();
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.cgroup_id = st.cgroup_id;
    ev.comm = st.comm;
    ev.family = family;
    ev.port = u32::from(u16::from_be(port as u16));
    ev.addr = addr;
    ev.generation = st.generation;
    ev.rule_index = st.rule_index;
    let (path_len, tail_len, _) = if path_known { path_lengths(st) } else { (0, 0, false) };
    ev.path_bytes = if path_known { st.http.path_bytes } else { 0 };
    ev.path_len = path_len + tail_len;
    // Only the path's own bytes: what follows them in the kept path is the rest of its last
    // word (an IMDSv2 token header's start, say) or an earlier request's, which no event
    // carries. A word at a time: the kept path and its tail as words, into the event's path (at
    // 464 in the watch, 8-aligned as map values are).
    const { assert!(PATH_MAX % 8 == 0 && creds::PATH_TAIL % 8 == 0) };
    let (path, tail) = (st.http.path_words(), st.path_tail_words());
    // SAFETY: the event's path, PATH_MAX + PATH_TAIL bytes, 8-aligned (`words_are_aligned` in
    // imds-guard-common checks the offset), viewed as words.
    unsafe {
        let out = ev.path.as_mut_ptr().cast::<u64>();
        creds::keep_below(path, path_len, &mut *out.cast::<[u64; PATH_MAX / 8]>());
        creds::keep_below(tail, tail_len, &mut *out.add(PATH_MAX / 8).cast::<[u64; creds::PATH_TAIL / 8]>());
    }
    crate::task::fill(&mut ev.task, &cfg.exe_offsets);
}

/// The kept path's lengths, read from the socket's storage: in the first write of the request,
/// and past `PATH_MAX`; and whether that is the whole path.
#[inline(always)]
fn path_lengths(st: &SockState) -> (u32, u32, bool) {
    // SAFETY: volatile reads of fields of the socket's storage.
    let (path_len, tail_len, path_bytes) = unsafe {
        use core::ptr::{addr_of, read_volatile as rd};
        (
            u32::from(rd(addr_of!(st.http.path_len))),
            rd(addr_of!(st.path_tail_len)),
            rd(addr_of!(st.http.path_bytes)),
        )
    };
    let path_len = if path_len > PATH_MAX as u32 { PATH_MAX as u32 } else { path_len };
    let tail_len =
        if path_len == PATH_MAX as u32 && tail_len <= creds::PATH_TAIL as u32 { tail_len } else { 0 };
    (path_len, tail_len, path_len + tail_len == path_bytes)
}
