//! `read = ["/latest/meta-data/placement/", ...]`: lists of path prefixes a workload may read.
//!
//! All the lists of a policy are compiled by the daemon into one automaton (a trie of every
//! prefix over the bytes the prefixes use), which the message hook walks over a request's path in
//! one bounded loop with no branch but its end, one table load per byte, as it walks the secret
//! prefixes ([`crate::path`]). Each state says which lists have a prefix the path is now known to
//! be under; the walk ORs them. A list's bit is found:
//!
//! - for a prefix that ends with `/`, once the path has read the prefix (the path is under it);
//! - for any other prefix, when the path *is* the prefix (up to its end or its query string), or
//!   goes on with a `/` after it: `/latest/meta-data/placement` covers `.../placement`,
//!   `.../placement?x` and `.../placement/region`, not `.../placement-group`.
//!
//! The comparison is exact (case included: a differently spelled path is not listed, so it is
//! refused), and only a path in canonical form is compared at all (one that is not is refused as
//! [`crate::path::class::UNREADABLE`], as for `"no-secrets"`). A list grants the secrets
//! ([`crate::path::SECRETS`]) only through a prefix that is itself inside one
//! (`/latest/meta-data/iam/security-credentials/`): `/latest/meta-data/` lists everything under it
//! except the credentials. So each list has two bits: bit `k` (the path is under one of list `k`'s
//! prefixes) and bit `32 + k` (under one of its prefixes that reads a secret).
//!
//! The automaton of each policy generation is in its own slot of an array map
//! ([`crate::maps::READS`]), beside the generation's [`crate::config::GenConfig`], and names the
//! generation it was built for: a connection judged under a generation whose slot has since been
//! reused (two reloads) finds no list and is refused what it asks (it reconnects, and is judged
//! by the policy in force).

use crate::{http::PATH_MAX, path::ix};

/// Lists a policy may have (distinct ones: tables with the same list share it).
pub const MAX_LISTS: usize = 32;
/// States of the automaton: 0 is dead (no prefix can match any more), 1 the start.
pub const LIST_STATES: usize = 512;
/// Byte classes: 0 for a byte no prefix uses, one per byte the prefixes use, and [`QUERY`].
pub const LIST_CLASSES: usize = 64;
/// The class of `?` (no prefix has one; the query string is not part of the path).
pub const QUERY: u8 = (LIST_CLASSES - 1) as u8;
/// The longest prefix: one longer than the path the kernel keeps could never be found.
pub const PREFIX_MAX: usize = PATH_MAX;

#[cfg(any(test, feature = "user"))]
const DEAD: u16 = 0;
const START: u16 = 1;

/// The automaton of one generation's lists (~74 KB; one per generation slot).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReadLists {
    /// The generation it was built for (0: none).
    pub generation: u32,
    /// How many lists it holds.
    pub lists: u32,
    /// Each byte's class.
    pub class_of: [u8; 256],
    /// state × class → state.
    pub next: [u16; LIST_STATES * LIST_CLASSES],
    /// The lists (bit k; bit 32 + k for a secret-reading prefix) whose prefix a path is under
    /// once the walk has reached this state.
    pub under: [u64; LIST_STATES],
    /// The lists with a prefix a path that ends in this state is.
    pub at_end: [u64; LIST_STATES],
}

/// Every generation slot's automaton, in the one value of [`crate::maps::READS`]: the message
/// hook looks it up once and takes a slot by index, without a branch.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReadSlots {
    pub slots: [ReadLists; crate::config::GENERATION_SLOTS as usize],
}

/// One walk of a generation's automaton over a path, a byte at a time (driven by
/// [`crate::path::classify_with`], which says which bytes are the path's).
pub struct Walk<'a> {
    t: &'a ReadLists,
    generation: u32,
    /// In 64 bits: a spill of fewer bytes is a value Linux 5.10's verifier forgets the bounds of.
    state: u64,
    found: u64,
}

impl<'a> Walk<'a> {
    /// A walk of the lists of `generation` (its slot of `slots`).
    #[inline(always)]
    #[must_use]
    pub fn new(slots: &'a ReadSlots, generation: u32) -> Self {
        let slot = ix(generation, crate::config::GENERATION_SLOTS - 1);
        Walk { t: &slots.slots[slot], generation, state: u64::from(START), found: 0 }
    }

    /// A walk of `t`.
    #[inline(always)]
    #[must_use]
    pub fn of(t: &'a ReadLists) -> Self {
        Walk { t, generation: t.generation, state: u64::from(START), found: 0 }
    }

    /// Feeds byte `b` of the path when `on` (1), not when 0 (the query string).
    #[inline(always)]
    pub fn step(&mut self, b: u8, on: u32) {
        let c = u64::from(self.t.class_of[usize::from(b)]);
        // A sum the compiler cannot make an `|` of (the class is a byte to it), which the
        // verifier bounds: the state masked to its 512, shifted to its row, plus the class.
        let at = (((self.state & (LIST_STATES as u64 - 1)) << 6) + c) as usize;
        // SAFETY: `at` is below 511 * 64 + 255 + 1: inside `next` for a class below 64 (all
        // of `class_of`'s are), and inside the value (`under` follows `next`) for any byte.
        let next = u64::from(unsafe { self.t.next.as_ptr().cast::<u8>().add(2 * at).cast::<u16>().read() });
        // on ? next : state, without a branch.
        self.state ^= (self.state ^ next) & u64::from(on).wrapping_neg();
        self.found |= self.t.under[(self.state & (LIST_STATES as u64 - 1)) as usize];
    }

    /// The lists the path is found in: bit `k` when it is under a prefix of list `k`, also bit
    /// `32 + k` when that prefix reads a secret. None when the slot holds another generation's
    /// lists (it was reused since). Meaningful only for a path in canonical form that is wholly
    /// known ([`crate::path::classify`] says which).
    #[inline(always)]
    #[must_use]
    pub fn found(&self) -> u64 {
        self.found_for(self.generation)
    }

    /// [`Walk::found`] for a `read` judged in `generation`: none when that is not the
    /// generation whose lists were walked (one walk serves both `read`s of a write; a writer
    /// judged under a later generation than the connect finds no list, and is refused).
    #[inline(always)]
    #[must_use]
    pub fn found_for(&self, generation: u32) -> u64 {
        let d = (self.t.generation ^ self.generation) | (generation ^ self.generation);
        // 1 when d is 0, without a branch.
        let same = ((d | d.wrapping_neg()) >> 31) ^ 1;
        (self.found | self.t.at_end[(self.state & (LIST_STATES as u64 - 1)) as usize])
            & u64::from(same).wrapping_neg()
    }
}

/// [`Walk::found`] for `path[..len]` of `t` (walked by itself, the query string cut here).
#[must_use]
pub fn walk(t: &ReadLists, path: &[u8; PATH_MAX], len: u32) -> u64 {
    let mut w = Walk::of(t);
    let mut on = 1;
    for &b in &path[..(len as usize).min(PATH_MAX)] {
        on &= u32::from(b != b'?');
        w.step(b, on);
    }
    w.found()
}

/// What list `list` grants a path [`walk`] found in `found`: bit 0, the path is under one of its
/// prefixes; bit 1, under one that reads a secret.
#[inline(always)]
#[must_use]
pub const fn grant(found: u64, list: u32) -> u32 {
    let list = list & (MAX_LISTS as u32 - 1);
    ((found >> list) & 1) as u32 | ((((found >> (32 + list)) & 1) as u32) << 1)
}

/// Why a prefix cannot be listed, or `None`: it must be a path in canonical form as the kernel
/// compares them (it starts with `/`; printable ASCII without `%`, `\`, `#`, `?` or a space; no
/// empty, `.` or `..` segment but a trailing `/`), no longer than [`PREFIX_MAX`].
#[must_use]
pub fn prefix_problem(p: &str) -> Option<&'static str> {
    let b = p.as_bytes();
    if b.first() != Some(&b'/') {
        return Some("a prefix starts with `/`");
    }
    if b.len() > PREFIX_MAX {
        return Some("longer than the 96 bytes of a path the kernel keeps");
    }
    if b.iter().any(|&c| !(0x21..=0x7e).contains(&c) || matches!(c, b'%' | b'\\' | b'#' | b'?')) {
        return Some(
            "only printable ASCII without `%`, `\\`, `#`, `?` or spaces (write the path as the service reads it, not encoded, no query)",
        );
    }
    let inner = &b[1..];
    let inner = inner.strip_suffix(b"/").unwrap_or(inner);
    if b.len() > 1 && inner.split(|&c| c == b'/').any(|s| matches!(s, b"" | b"." | b"..")) {
        return Some("no empty, `.` or `..` segment (`//`, `/./`, `/../`)");
    }
    None
}

/// Why lists cannot be compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListError {
    /// More than [`MAX_LISTS`] distinct lists.
    TooManyLists(usize),
    /// The prefixes use more distinct bytes than there are classes.
    TooManyBytes(usize),
    /// The prefixes need more states than [`LIST_STATES`].
    TooManyStates,
}

impl core::fmt::Display for ListError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ListError::TooManyLists(n) => {
                write!(f, "the policy has {n} distinct `read` lists; at most {MAX_LISTS} are supported")
            }
            ListError::TooManyBytes(n) => write!(
                f,
                "the `read` lists' prefixes use {n} distinct characters; at most {} are supported",
                LIST_CLASSES - 2
            ),
            ListError::TooManyStates => write!(
                f,
                "the `read` lists' prefixes are too many or too long: together (shared beginnings counted once) they may have at most {} characters",
                LIST_STATES - 2
            ),
        }
    }
}

#[cfg(any(test, feature = "user"))]
mod build {
    extern crate alloc;
    use alloc::boxed::Box;

    use super::*;

    impl ReadSlots {
        /// Every slot empty (generation 0: no generation's).
        #[must_use]
        pub fn empty() -> Box<Self> {
            // SAFETY: all-zero is a valid ReadSlots (integers only).
            unsafe { Box::new_zeroed().assume_init() }
        }
    }

    impl ReadLists {
        /// An automaton with no list (what a generation without lists gets).
        #[must_use]
        pub fn empty(generation: u32) -> Box<Self> {
            // SAFETY: all-zero is a valid ReadLists (integers only).
            let mut t: Box<Self> = unsafe { Box::new_zeroed().assume_init() };
            t.generation = generation;
            t.class_of[usize::from(b'?')] = QUERY;
            t
        }

        /// The automaton of `lists` (list `k` is `lists[k]`; each prefix has passed
        /// [`prefix_problem`]), for `generation`.
        pub fn build<L: AsRef<[S]>, S: AsRef<str>>(
            generation: u32,
            lists: &[L],
        ) -> Result<Box<Self>, ListError> {
            let mut t = Self::empty(generation);
            t.compile(generation, lists)?;
            Ok(t)
        }

        /// [`ReadLists::build`] in place, over whatever `self` held (nothing this large is
        /// moved through the stack).
        pub fn compile<L: AsRef<[S]>, S: AsRef<str>>(
            &mut self,
            generation: u32,
            lists: &[L],
        ) -> Result<(), ListError> {
            if lists.len() > MAX_LISTS {
                return Err(ListError::TooManyLists(lists.len()));
            }
            // SAFETY: integers only: all-zero is a valid ReadLists.
            unsafe { core::ptr::write_bytes(core::ptr::from_mut(self), 0, 1) };
            let t = self;
            t.generation = generation;
            t.class_of[usize::from(b'?')] = QUERY;
            t.lists = lists.len() as u32;
            let mut classes = 0usize;
            let mut class = |t: &mut Self, b: u8| -> Result<usize, ListError> {
                if t.class_of[usize::from(b)] == 0 {
                    classes += 1;
                    if classes > LIST_CLASSES - 2 {
                        return Err(ListError::TooManyBytes(classes));
                    }
                    t.class_of[usize::from(b)] = classes as u8;
                }
                Ok(usize::from(t.class_of[usize::from(b)]))
            };
            let mut states = usize::from(START) + 1;
            let mut step = |t: &mut Self, at: usize, c: usize| -> Result<usize, ListError> {
                let to = t.next[at * LIST_CLASSES + c];
                if to != DEAD {
                    return Ok(usize::from(to));
                }
                if states >= LIST_STATES {
                    return Err(ListError::TooManyStates);
                }
                t.next[at * LIST_CLASSES + c] = states as u16;
                states += 1;
                Ok(states - 1)
            };
            for (k, list) in lists.iter().enumerate() {
                for p in list.as_ref() {
                    let p = p.as_ref().as_bytes();
                    let secret = crate::path::classify_text(p) != crate::path::class::NONE;
                    let bits = (1u64 << k) | if secret { 1u64 << (32 + k) } else { 0 };
                    let mut at = usize::from(START);
                    for &b in p {
                        let c = class(t, b)?;
                        at = step(t, at, c)?;
                    }
                    if p.ends_with(b"/") {
                        t.under[at] |= bits;
                    } else {
                        t.at_end[at] |= bits;
                        let c = class(t, b'/')?;
                        let below = step(t, at, c)?;
                        t.under[below] |= bits;
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{string::String, vec, vec::Vec};

    use proptest::prelude::*;

    use super::*;

    fn found(t: &ReadLists, p: &str) -> u64 {
        let mut buf = [0u8; PATH_MAX];
        let n = p.len().min(PATH_MAX);
        buf[..n].copy_from_slice(&p.as_bytes()[..n]);
        // As the message hook walks it: in the classifier's loop, over a generation slot.
        let mut slots = ReadSlots::empty();
        slots.slots[(t.generation % 2) as usize] = *t;
        let mut w = Walk::new(&slots, t.generation);
        let _ = crate::path::classify_with(&buf, n as u32, n as u32, |b, on| w.step(b, on));
        let stale = Walk::new(&slots, t.generation + 2);
        assert_eq!(stale.found(), 0, "a slot of another generation grants nothing");
        let alone = walk(t, &buf, n as u32);
        assert_eq!(w.found(), alone, "{p}");
        assert_eq!(w.found_for(t.generation), alone);
        assert_eq!(w.found_for(t.generation + 1), 0, "a read judged in another generation finds none");
        alone
    }

    /// What the lists are meant to say, written plainly: the path without its query string
    /// is the prefix, or is under it (the prefix ends with `/` and begins the path, or the path
    /// goes on with `/` after it).
    fn reference(lists: &[Vec<String>], p: &str) -> u64 {
        let path = p.split('?').next().unwrap_or_default();
        let mut bits = 0u64;
        for (k, list) in lists.iter().enumerate() {
            for prefix in list {
                let under = if prefix.ends_with('/') {
                    path.starts_with(prefix.as_str())
                } else {
                    path == prefix || path.strip_prefix(prefix.as_str()).is_some_and(|r| r.starts_with('/'))
                };
                if under {
                    bits |= 1 << k;
                    if crate::path::classify_text(prefix.as_bytes()) != crate::path::class::NONE {
                        bits |= 1 << (32 + k);
                    }
                }
            }
        }
        bits
    }

    fn lists(l: &[&[&str]]) -> Vec<Vec<String>> {
        l.iter().map(|p| p.iter().map(|s| String::from(*s)).collect()).collect()
    }

    #[test]
    fn prefixes_cover_what_is_under_them() {
        let l = lists(&[
            &["/latest/meta-data/placement", "/latest/meta-data/instance-id"],
            &["/latest/meta-data/", "/latest/meta-data/iam/security-credentials/"],
            &["/computeMetadata/v1/project/"],
        ]);
        let t = ReadLists::build(7, &l).unwrap();
        assert_eq!(t.generation, 7);
        for (p, want) in [
            ("/latest/meta-data/placement", 0b11),
            ("/latest/meta-data/placement/region", 0b11),
            ("/latest/meta-data/placement?x=1", 0b11),
            ("/latest/meta-data/placement-group", 0b10),
            ("/latest/meta-data/instance-id", 0b11),
            ("/latest/meta-data/Placement/region", 0b10),
            ("/latest/meta-data", 0),
            ("/latest/meta-data/", 0b10),
            ("/latest/meta-data/iam/security-credentials/role", 0b10 | 1 << 33),
            ("/latest/user-data", 0),
            ("/computeMetadata/v1/project/project-id", 0b100),
            ("/", 0),
            ("", 0),
        ] {
            assert_eq!(found(&t, p), want, "{p}");
            assert_eq!(reference(&l, p), want, "reference, {p}");
        }
        assert_eq!(grant(found(&t, "/latest/meta-data/placement/region"), 0), 1);
        assert_eq!(grant(found(&t, "/latest/meta-data/iam/security-credentials/r"), 1), 3);
        assert_eq!(grant(found(&t, "/latest/meta-data/iam/security-credentials/r"), 0), 0);
    }

    #[test]
    fn a_slash_alone_lists_everything_and_no_list_nothing() {
        let t = ReadLists::build(1, &lists(&[&["/"]])).unwrap();
        assert_eq!(found(&t, "/latest/meta-data/iam/security-credentials/r"), 1);
        assert_eq!(found(&t, "/anything"), 1);
        let e = ReadLists::empty(1);
        assert_eq!(found(&e, "/latest/meta-data/"), 0);
    }

    #[test]
    fn prefixes_in_canonical_form_only() {
        for ok in ["/", "/latest/", "/latest/meta-data/placement", "/metadata/instance/compute/"] {
            assert_eq!(prefix_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "latest/",
            "/latest//meta-data/",
            "/latest/./meta-data",
            "/latest/../user-data",
            "/latest/..",
            "/latest/meta%2ddata/",
            "/metadata/instance?api-version=1",
            "/a b",
            "/é",
            &"/a".repeat(49),
        ] {
            assert!(prefix_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_errors() {
        let many: Vec<Vec<String>> = (0..33).map(|i| vec![std::format!("/p{i}")]).collect();
        assert_eq!(ReadLists::build(1, &many).err(), Some(ListError::TooManyLists(33)));
        let long: Vec<Vec<String>> =
            vec![(0..16).map(|i| std::format!("/{i:02}{}", "x".repeat(40))).collect()];
        assert_eq!(ReadLists::build(1, &long).err(), Some(ListError::TooManyStates));
        let bytes: String = (0x21u8..0x7f).filter(|b| !b"%\\#?/".contains(b)).map(char::from).collect();
        let wide: Vec<Vec<String>> = vec![
            bytes.as_bytes().chunks(40).map(|c| std::format!("/{}", String::from_utf8_lossy(c))).collect(),
        ];
        assert!(matches!(ReadLists::build(1, &wide).err(), Some(ListError::TooManyBytes(_))));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::from("latest")),
            Just(String::from("meta-data")),
            Just(String::from("placement")),
            Just(String::from("iam")),
            Just(String::from("security-credentials")),
            Just(String::from("user-data")),
            "[a-cA-C-]{1,3}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (proptest::collection::vec(segment(), 0..6), any::<bool>(), proptest::option::of("[a-z=]{0,4}"))
            .prop_map(|(segs, slash, query)| {
                let mut p = String::from("/");
                p.push_str(&segs.join("/"));
                if slash && !segs.is_empty() {
                    p.push('/');
                }
                if let Some(q) = query {
                    p.push('?');
                    p.push_str(&q);
                }
                p
            })
    }

    proptest! {
        #[test]
        fn the_automaton_says_what_the_prefixes_say(
            l in proptest::collection::vec(proptest::collection::vec(path(), 1..4), 1..4),
            probes in proptest::collection::vec(path(), 1..16),
        ) {
            let l: Vec<Vec<String>> = l
                .into_iter()
                .map(|list| list.into_iter().map(|p| String::from(p.split('?').next().unwrap())).collect())
                .collect();
            let t = ReadLists::build(1, &l).unwrap();
            for p in l.iter().flatten().chain(probes.iter()) {
                if p.len() <= PATH_MAX {
                    prop_assert_eq!(found(&t, p), reference(&l, p), "{}", p);
                }
            }
        }
    }
}
