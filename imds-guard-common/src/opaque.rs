//! Values the compiler must not see through (a leaf module: the table-driven scanners of `http`
//! and `creds::scan` import it, and it imports nothing).

/// `x` through a volatile stack slot: the compiler forgets where it came from, and so cannot see
/// a comparison in the arithmetic that uses it and turn that into a branch (eBPF has no
/// conditional move or set-on-condition: a `select` or a `zext(icmp)` becomes a jump, and a second
/// jump per byte is what the verifier cannot afford in a loop of 4096 bytes: it keeps one pending
/// state per jump, at most 8,192).
#[inline(always)]
pub(crate) fn hide(x: u64) -> u64 {
    let mut v = 0u64;
    // SAFETY: a local variable.
    unsafe {
        core::ptr::write_volatile(&raw mut v, x);
        core::ptr::read_volatile(&raw const v)
    }
}
