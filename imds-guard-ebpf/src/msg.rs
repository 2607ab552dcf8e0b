//! `sk_msg` on connections to metadata endpoints: classify each request the process writes with
//! the shared HTTP classifier, report tokenless (IMDSv1) requests, requests it cannot vouch for
//! and token PUTs that carry X-Forwarded-For, and refuse the write (SK_DROP: `sendmsg` fails with
//! EACCES at once) when the workload's `imdsv1` is "deny". The classifier's state lives with the
//! socket, so a request split over several writes is judged once, when its header block ends.
//!
//! No `bpf_loop` (Linux 5.17+): the classifier is table-driven, a branch or three per word of 8
//! bytes and one per byte of the last 0..=7, and runs in plain bounded loops that the verifiers
//! of 5.10 and later accept.

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, sk_msg_md},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_ktime_get_boot_ns, bpf_msg_pull_data, bpf_sk_storage_get},
    },
    macros::sk_msg,
    programs::SkMsgContext,
};
use imds_guard_common::{
    config::Mode,
    creds::PATH_TAIL,
    event::{RequestEvent, TaskInfo, flags, kind},
    http::{Finding, PATH_MAX, Source, copy_window},
    lists::{ReadSlots, Walk, grant},
    path::{classify_with, other_cloud},
    rule::{Identity, Imdsv1Action, Read, list_of},
    sock::{NO_RULE, SCAN_MAX, SockState, token_flag},
    stats::Stat,
    verdict::{
        ConnectContext, ConnectVerdict, MONITORED_READ, admit, first_refusal, judge_connect,
        needs_no_judging, read_class, request_verdict,
    },
};

use crate::{
    dest::destination,
    maps::{EVENTS, GUARDS, IMDSG_SOCKSTATE, READS, count},
};

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

// Inlined into the program's entry (left to itself, the compiler made the body a BPF-to-BPF call
// once the hook read the write in place).
#[sk_msg]
#[inline(always)]
pub fn imdsg_msg(ctx: SkMsgContext) -> u32 {
    let size = ctx.size();
    let mut seen: *mut SockState = core::ptr::null_mut();
    let verdict = judge_write(ctx, &mut seen);
    if seen.is_null() {
        return verdict;
    }
    // SAFETY: the socket's storage, found by `judge_write` in this run.
    guard_write(unsafe { &*seen }, verdict, size)
}

/// The connection's guard, where it has one (`imds_guard_common::sock::Guard`): a write let
/// through is counted (what the connection queues from the message hook), and once bytes past
/// the hook were found on the connection (by the response hook) every write is refused.
#[inline(always)]
fn guard_write(st: &SockState, verdict: u32, size: u32) -> u32 {
    let terms =
        imds_guard_common::rule::RuleValue { rule_index: st.rule_index, imdsv1: st.imdsv1, read: st.read };
    if !terms.needs_inspection() {
        return verdict;
    }
    let Some(g) = GUARDS.get_ptr_mut(&st.cookie) else { return verdict };
    // SAFETY: this connection's guard; the message and response hooks run under its socket's lock.
    let g = unsafe { &mut *g };
    if g.tainted == imds_guard_common::sock::TAINTED_WITHHELD {
        return SK_DROP;
    }
    if verdict == SK_PASS {
        g.passed = g.passed.wrapping_add(size);
    }
    verdict
}

/// Judges one write (see the module's documentation); `seen` is set to the socket's state when
/// it has one.
#[inline(always)]
fn judge_write(ctx: SkMsgContext, seen: &mut *mut SockState) -> u32 {
    let md = ctx.msg;
    // SAFETY: the sk_msg context.
    let sk = unsafe { (*md).__bindgen_anon_3.sk };
    // SAFETY: helper call with our storage map and the message's socket. With F_CREATE: a
    // connection no connect hook of this map layout judged gets (zeroed) state here.
    let st = unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(IMDSG_SOCKSTATE).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockState>();
    if st.is_null() {
        // No state and none can be made (memory): judge the write unread, as the strictest
        // workload would be judged.
        return match crate::maps::live_config() {
            Some(cfg) if cfg.strictest_imdsv1 == Imdsv1Action::Deny as u32 => {
                count(Stat::Unclassified);
                count(Stat::Imdsv1Denied);
                SK_DROP
            }
            _ => SK_PASS,
        };
    }
    *seen = st;
    // SAFETY: storage of this socket, held for this run (sendmsg holds the socket lock).
    let st = unsafe { &mut *st };
    if st.generation == 0 {
        // Not judged at connect by this layout's hooks (generations start at 1): opened before
        // the guard started or before an upgrade that changed the map layout. It gets the
        // strictest treatment of the live policy and is attributed to its writer.
        adopt(&ctx, st);
    }
    // The `read` lists (one value: every generation slot's).
    let Some(lists) = READS.get(0) else {
        // Index 0 of a one-entry array: not reached. Judged unread.
        return SK_DROP;
    };
    let Some((read, writer_read)) = judge_writer(&ctx, st) else {
        // Whatever was gathered of a request goes with the refused write.
        st.http.reset();
        return SK_DROP;
    };
    // Both `read`s in one opaque value (each fits 16 bits): one register across the scan below,
    // as when there was one, and the same on both ways here (the writer's is a constant on one).
    let reads = crate::judge::opaque(read | (writer_read << 16));
    let size = ctx.size();
    let want = if size > SCAN_MAX { SCAN_MAX } else { size };
    // The write's first `want` bytes must be linear (data..data_end covers them) and the
    // kernel's own: the pull copies them where they are not. Where data..data_end already covers
    // them, as for every write of one small `send`, they are both, and the helper call (tens of
    // ns) is skipped: the kernel leaves data and data_end null where the write's first part is
    // pages it shares with user space (`sendpage`/splice: `sk_msg_compute_data_pointers`), so a
    // shared first part never covers anything.
    if ctx.data_end().wrapping_sub(ctx.data()) < want as usize {
        // SAFETY: helper call on this run's message.
        unsafe { bpf_msg_pull_data(md.cast(), 0, want, 0) };
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut len = end.wrapping_sub(data) as u32;
    if len > want {
        len = want;
    }
    if len == 0 {
        return SK_PASS;
    }
    // 1..=SCAN_MAX in a form every verifier can see: a masked value plus one, computed from a
    // value the compiler cannot see through. (Verifiers before 6.2 learn no bound from comparing
    // two registers, so the clamps above bound nothing for them; and the compiler, which does see
    // them, would drop a mask of the clamped value as redundant. Both 5.10 and 6.1 refused the
    // copy with "R2 unbounded memory access".)
    let n = ((crate::judge::opaque(len) - 1) & (SCAN_MAX - 1)) + 1;
    // The write is read where it is (no copy: nothing another run of this hook could write).
    let mut msg = Message { md, next: 0 };
    // Nothing computed above is used below but `n` (the same range on every path here), so
    // that the verifier walks the loop once, not once per way of getting here.
    let took = st.http.scan(&mut msg, n);
    if took == st.http.bytes {
        // The request began in this write: its path is in the message. Keep what of it goes past
        // the classifier's PATH_MAX, for credential attribution (a fixed-size window; its length
        // says how much of it is the path).
        let pb = st.http.path_bytes;
        st.path_tail_len = 0;
        if pb > PATH_MAX as u32 {
            let at = (st.http.path_at + PATH_MAX as u32) as usize;
            let more = pb - PATH_MAX as u32;
            copy_window(&mut msg, at, more as usize, st.path_tail_words_mut());
            st.path_tail_len = if more > PATH_TAIL as u32 { PATH_TAIL as u32 } else { more };
        }
    }
    let size = ctx.size();
    let finding = st.http.write_finding_for(took, n, size, st.token as u16);
    if !finding.is_final() {
        return SK_PASS; // the header block goes on in the next write
    }
    // Opaque, so that the verifier walks what follows once or twice, not once per finding.
    let finding = crate::judge::opaque(finding as u32);
    // The common request, IMDSv2 on a connection whose workload and writer may read all, needs
    // no judging past its finding (`needs_no_judging`: let through, nothing counted or reported).
    let (refuse, finding) = if needs_no_judging(reads & 0xffff, reads >> 16, finding) {
        (false, Finding::Imdsv2)
    } else {
        judge_request(&ctx, st, lists, reads, finding)
    };
    // Opaque: the verifier walks what follows once, not once per way here.
    let refuse = crate::judge::opaque(u32::from(refuse)) != 0;
    let finding = Finding::from_u32(crate::judge::opaque(finding as u32));
    if !refuse && let Some(cfg) = crate::maps::live_config() {
        // The path is this request's only where its request line was read as one.
        let known = matches!(
            finding,
            Finding::Imdsv1
                | Finding::Imdsv2
                | Finding::TokenPut
                | Finding::TokenPutForwarded
                | Finding::Trailing
                | Finding::OtherCloud
        );
        crate::creds::request(&ctx, st, cfg, known);
    }
    // The message is judged; the next one starts a new request.
    st.http.reset();
    if refuse { SK_DROP } else { SK_PASS }
}

/// Judges a complete request (see `judge_write`): what `request_verdict` and the two `read`s say
/// of it, counted and reported. Returns whether it is refused, and its finding (another cloud's
/// where its path says so).
#[inline(always)]
fn judge_request(
    ctx: &SkMsgContext,
    st: &mut SockState,
    lists: &ReadSlots,
    reads: u32,
    finding: u32,
) -> (bool, Finding) {
    // What the path reads: for `read`, and for a tokenless request, whose path may be another
    // cloud's. Opaque, so that the verifier walks the path's loop once or twice, not once per
    // finding, and what follows once.
    let tokenless = crate::judge::opaque(u32::from(finding == Finding::Imdsv1 as u32));
    // Whether the path must be judged: a `read` other than "all" (encoded 0 in its low byte), or
    // a tokenless request. Without a branch per case, and opaque: the verifier walks the loop
    // below once, not once per way of getting to it.
    let (read, writer_read) = (reads & 0xffff, reads >> 16);
    let judged = crate::judge::opaque(((read | writer_read) & 0xff) | tokenless);
    // The `read` lists are walked in the classifier's loop, those of the generation that judged
    // the connect (a writer judged under another generation finds none of them: refused).
    let mut walk = Walk::new(lists, st.generation);
    let path_class = if judged != 0 {
        classify_with(&st.http.path, u32::from(st.http.path_len), st.http.path_bytes, |b, on| {
            walk.step(b, on);
        })
    } else {
        0
    };
    let path_class = crate::judge::opaque(path_class);
    // What the lists grant (used only where a `read` is a list).
    let own_grant = crate::judge::opaque(grant(walk.found(), list_of(read)));
    let writer_grant =
        crate::judge::opaque(grant(walk.found_for(st.writer_generation), list_of(writer_read)));
    let finding = Finding::from_u32(finding);
    let finding = if tokenless != 0 && other_cloud(&st.http.path, u32::from(st.http.path_len), path_class) {
        Finding::OtherCloud
    } else {
        finding
    };
    let v = request_verdict(finding, Imdsv1Action::from_u32(st.imdsv1));
    if let Some(stat) = v.stat {
        count(stat);
    }
    if v.refuse {
        count(Stat::Imdsv1Denied);
    }
    // What the workload may read, once its tokenless requests are dealt with: the request must
    // be allowed by both `read`s (table lookups, no branch: see `read_class`).
    let class = first_refusal(
        read_class(read, own_grant, finding as u32, path_class),
        read_class(writer_read, writer_grant, finding as u32, path_class),
    );
    let class = crate::judge::opaque(class);
    let denied_read = if v.refuse || class == 0 {
        None
    } else {
        let mode = crate::maps::live_config().map_or(Mode::Enforce, |cfg| cfg.mode());
        Some((class, mode == Mode::Enforce))
    };
    let refuse = v.refuse || denied_read.is_some_and(|(_, enforce)| enforce);
    if let Some((class, enforce)) = denied_read {
        count(Stat::RequestsDenied);
        report(ctx, st, finding, enforce, class);
    } else if v.report {
        report(ctx, st, finding, v.refuse, 0);
    }
    (refuse, finding)
}

/// Judges a writer that is not the process that connected, or whose ids changed since (a socket
/// passed over `SCM_RIGHTS`, inherited across `fork`/`exec`, kept across `setuid`), as if it had
/// connected now: once per writer and policy generation, remembered with the socket. A writer the
/// policy does not admit has every write refused (`None`) and reported as `connect_denied` with
/// [`flags::HANDED_OVER`]; in monitor mode, reported only. Otherwise returns what the write may
/// read ([`Read`] as u32): what the connecting workload may, and what the writer may (`All` when
/// it is the process that connected); a request must be allowed by both.
#[inline(always)]
fn judge_writer(ctx: &SkMsgContext, st: &mut SockState) -> Option<(u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == (st.pid_tgid >> 32) as u32 && uid_gid == (u64::from(st.gid) << 32 | u64::from(st.uid)) {
        return Some((st.read, Read::All as u32));
    }
    let Some(cfg) = crate::maps::live_config() else { return Some((st.read, Read::All as u32)) };
    let comm = crate::task::current_comm(&cfg.exe_offsets);
    if st.writer_tgid != tgid || st.writer_uid_gid != uid_gid || st.writer_generation != cfg.generation {
        let id = crate::judge::identity(cfg, uid_gid, comm);
        let matched = admit(cfg, crate::judge::find(cfg, &id));
        let context = ConnectContext {
            traced: matches!(matched, Some(m) if crate::judge::traced(cfg, m)),
            uninspectable: false,
        };
        let (verdict, refusal) = judge_connect(cfg.mode(), matched, context);
        st.writer_tgid = tgid;
        st.writer_uid_gid = uid_gid;
        st.writer_generation = cfg.generation;
        st.writer_verdict = verdict.as_u32();
        st.writer_flags = crate::judge::refusal_flag(refusal);
        // A writer no table admits, let through by monitor mode: its reads are reported.
        st.writer_read = matched.map_or(MONITORED_READ as u32, |m| m.value.read);
    }
    let read = (st.read, st.writer_read);
    let verdict = ConnectVerdict::from_u32(st.writer_verdict);
    if verdict == ConnectVerdict::Allow {
        return Some(read);
    }
    let refuse = verdict == ConnectVerdict::Deny;
    if refuse {
        count(Stat::WritesDeniedHandedOver);
    }
    let (family, port, addr) = destination(ctx);
    let id = Identity { uid: uid_gid as u32, gid: (uid_gid >> 32) as u32, ..Identity::default() };
    let flags = flags::HANDED_OVER | st.writer_flags | if refuse { flags::ENFORCED } else { 0 };
    crate::judge::report(cfg, &id, comm, flags, st.rule_index, family, port, addr);
    if refuse { None } else { Some(read) }
}

/// The bytes of the write, where the message holds them (see `Source`): each access is
/// checked against the message's end in the form the verifier learns a range from, with `data`
/// and `data_end` loaded anew from the context each time, so that no register holds a packet
/// pointer from one word to the next (the verifier keeps states whose packet ranges differ
/// apart: each way out of the scan's loop would be walked through the rest of the hook).
struct Message {
    md: *mut sk_msg_md,
    /// Where the end of each access goes through memory (see `at`).
    next: usize,
}

impl Message {
    #[inline(always)]
    fn at(&mut self, at: usize, size: usize) -> Option<*const u8> {
        // SAFETY: volatile loads of the context's `data` and `data_end`, each at its own
        // address, and a volatile write and read of our own field.
        let (p, next, end) = unsafe {
            let data = core::ptr::read_volatile(core::ptr::addr_of!((*self.md).__bindgen_anon_1.data));
            let end = core::ptr::read_volatile(core::ptr::addr_of!((*self.md).__bindgen_anon_2.data_end));
            // Masked to a bound the verifier needs for a variable offset (`at` is below 8,192).
            let p = data as usize + (at & (2 * SCAN_MAX as usize - 1));
            // Compared as `next > end`, the form the verifiers learn a range from; left to itself
            // the compiler compares otherwise (see the response hook's `read`).
            core::ptr::write_volatile(&raw mut self.next, p + size);
            (p, core::ptr::read_volatile(&raw const self.next), end as usize)
        };
        if next > end { None } else { Some(p as *const u8) }
    }
}

// SAFETY: `at` gives a pointer only where the access ends inside data..data_end.
unsafe impl Source for Message {
    #[inline(always)]
    fn word(&mut self, at: usize) -> Option<*const u8> {
        self.at(at, 8)
    }

    #[inline(always)]
    fn byte(&mut self, at: usize) -> Option<*const u8> {
        self.at(at, 1)
    }

    /// What held a packet pointer holds the same on every way out of a loop.
    #[inline(always)]
    fn done(&mut self) {
        // SAFETY: a volatile write of our own field.
        unsafe { core::ptr::write_volatile(&raw mut self.next, 0) };
    }
}

/// Fills the state of a connection the connect hooks did not judge.
#[inline(always)]
fn adopt(ctx: &SkMsgContext, st: &mut SockState) {
    let Some(cfg) = crate::maps::live_config() else { return };
    st.imdsv1 = cfg.strictest_imdsv1;
    st.read = cfg.strictest_read;
    st.rule_index = NO_RULE;
    st.generation = cfg.generation;
    let uid_gid = bpf_get_current_uid_gid();
    st.uid = uid_gid as u32;
    st.gid = (uid_gid >> 32) as u32;
    st.pid_tgid = bpf_get_current_pid_tgid();
    // The comm and cgroup are left empty (the daemon reads them from /proc by the pid): sk_msg
    // programs may not call bpf_get_current_comm before Linux 6.x ("unknown func" on 5.10).
    st.comm = [0; 16];
    st.cgroup_id = 0;
    st.writer_tgid = 0;
    st.writer_generation = 0;
    st.writer_read = Read::All as u32;
    let (family, _, addr) = destination(ctx);
    st.token = u32::from(token_flag(family, &addr));
    st.http.reset();
}

/// Reports the request; `class` non-zero: refused (or, in monitor mode, would be) for what it reads.
#[inline(always)]
fn report(ctx: &SkMsgContext, st: &SockState, finding: Finding, deny: bool, class: u32) {
    let Some(mut entry) = EVENTS.reserve::<RequestEvent>(0) else {
        count(Stat::EventsDropped);
        return;
    };
    let (family, port, addr) = destination(ctx);
    // Method and path only where the request line was read as one.
    let parsed =
        class != 0 || matches!(finding, Finding::Imdsv1 | Finding::Trailing | Finding::TokenPutForwarded);
    let read_denied = if class != 0 { flags::READ_DENIED } else { 0 };
    // The writer, which sendmsg runs as; the connect-time identity where it differs is kept in
    // the storage and not reported here.
    let uid_gid = bpf_get_current_uid_gid();
    let ev = entry.write(RequestEvent {
        kind: kind::IMDS_REQUEST,
        flags: read_denied | if deny { flags::ENFORCED } else { 0 },
        // SAFETY: plain helper call.
        time_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid_tgid: bpf_get_current_pid_tgid(),
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: st.cgroup_id,
        comm: st.comm,
        family,
        port: u32::from(u16::from_be(port as u16)),
        addr,
        generation: st.generation,
        finding: finding as u32,
        method: if parsed { u32::from(st.http.method()) } else { 0 },
        path_len: if parsed { u32::from(st.http.path_len) } else { 0 },
        rule_index: st.rule_index,
        read_class: class,
        task: TaskInfo::default(),
        path: st.http.path,
    });
    if let Some(cfg) = crate::maps::live_config() {
        crate::task::fill(&mut ev.task, &cfg.exe_offsets);
    }
    entry.submit(0);
    count(Stat::EventsSent);
}
