//! Property tests ("fuzzing") of the policy parser and resolver: whatever a policy file holds —
//! random bytes, or TOML-shaped text built from the policy's own keys with hostile values (huge and
//! negative numbers, NUL and escape characters, very long strings, nesting, duplicates, wrong
//! types) — parsing and resolving never panics, every error names `file:line:col` inside the file
//! and is printable and bounded, and every policy that is accepted can be turned into kernel tables.
//!
//! Bounded and reproducible for CI: a fixed seed and a fixed number of cases (it runs in a few
//! seconds). For a longer run with fresh inputs, set `PROPTEST_CASES` (e.g. 200000) and
//! `PROPTEST_RNG_SEED` (any number); a failure prints the smallest input that shows it.

use std::sync::OnceLock;

use imds_guard::policy::{
    Host, Policy,
    schema::PolicyFile,
    source::{ConfigError, MAX_MESSAGE, Source},
};
use imds_guard_common::config::MAX_RULES;
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, RngSeed},
};

/// `cases` inputs from a fixed seed, unless the environment asks for other ones.
fn config(cases: u32) -> ProptestConfig {
    let from_env = ProptestConfig::default(); // reads PROPTEST_CASES and PROPTEST_RNG_SEED
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() { from_env.cases } else { cases },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(0x1d5_6a7d)
        },
        failure_persistence: None,
        ..from_env
    }
}

/// A cgroup2 root stand-in with a few directories, so that some `cgroup` rules resolve (at several
/// depths) and others wait for their cgroup. Shared by all cases; removed by nobody (it is tiny and
/// lives in the temp directory under this process's id).
fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        // Under target/ (cargo's directory for integration tests' files), not a new directory in
        // /tmp on every run.
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-fuzz-cgroups");
        for d in ["a/b/c/d", "system.slice/app.service", "x y"] {
            std::fs::create_dir_all(root.join(d)).expect("fuzz cgroup root");
        }
        Host { cgroup_root: root, waiting_names: false }
    })
}

/// What must hold for any input.
fn check(text_lines: usize, result: Result<Policy, ConfigError>) -> Result<(), TestCaseError> {
    match result {
        Ok(policy) => {
            prop_assert!(policy.rules.len() <= MAX_RULES as usize);
            prop_assert_eq!(policy.digest.len(), 64);
            for (i, r) in policy.rules.iter().enumerate() {
                prop_assert_eq!(r.index as usize, i);
                prop_assert!(
                    (1..=text_lines.max(1)).contains(&r.line),
                    "rule line {} of {}",
                    r.line,
                    text_lines
                );
            }
            let (cfg, entries) = policy.kernel_tables(7);
            prop_assert!(entries.len() <= policy.rules.len());
            prop_assert!(entries.iter().all(|(k, _)| k.generation == 7 && k.shape != 0));
            prop_assert!(cfg.probe_count as usize <= imds_guard_common::config::MAX_PROBES);
            prop_assert!(cfg.v4_count + cfg.v6_count > 0, "there is always an endpoint");
        }
        Err(e) => {
            let (file, pos) = e.location.split_once(':').unwrap_or((&e.location, ""));
            prop_assert_eq!(file, "fuzz.toml", "{}", e);
            let mut nums = pos.split(':').map(str::parse::<usize>);
            let (line, col) = match (nums.next(), nums.next(), nums.next()) {
                (Some(Ok(l)), Some(Ok(c)), None) => (l, c),
                _ => return Err(TestCaseError::fail(format!("error without line:col: {e}"))),
            };
            prop_assert!(line >= 1 && line <= text_lines + 1 && col >= 1, "{}", e);
            prop_assert!(!e.message.trim().is_empty(), "{}", e);
            prop_assert!(!e.message.chars().any(char::is_control), "control characters: {:?}", e.message);
            prop_assert!(e.message.chars().count() <= MAX_MESSAGE + 64, "{} chars", e.message.len());
            let snippet = e.snippet.as_deref().unwrap_or_default();
            prop_assert!(snippet.starts_with(&format!("{line:>4} | ")), "{}", e);
            prop_assert!(snippet.lines().count() == 2 && snippet.chars().count() < 600, "{:?}", snippet);
            prop_assert!(!snippet.chars().any(|c| c.is_control() && c != '\n'), "{:?}", snippet);
        }
    }
    Ok(())
}

fn parse_bytes(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let lines = bytes.split(|&b| b == b'\n').count();
    let result = Source::from_bytes("fuzz.toml".into(), bytes).and_then(|s| Policy::from_source(&s, host()));
    check(lines, result)
}

fn parse_text(text: &str) -> Result<(), TestCaseError> {
    let source = Source { name: "fuzz.toml".into(), text: text.to_owned() };
    check(text.split('\n').count(), Policy::from_source(&source, host()))
}

// ---------------------------------------------------------------------------------------------
// TOML-shaped input built from the policy's keys.

/// Contents of a string value: names and paths that resolve, near misses, and hostile text.
fn string_content() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "root",
            "nobody",
            "daemon",
            "no-such-user-xyz",
            "enforce",
            "monitor",
            "allow",
            "log",
            "deny",
            "aws-imds",
            "ecs-credentials",
            "eks-pod-identity",
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "ff02::1",
            "::",
            "/bin/sh",
            "/usr/bin/env",
            "/proc/self/exe",
            "/dev/null",
            "/",
            "/.",
            "/..",
            "bin/sh",
            "/a",
            "/a/b",
            "/a/b/c/d",
            "/a/../a",
            "/system.slice/app.service",
            "/x y",
            "//a//b//",
            "/no/such/file",
            "curl",
            "a-name-of-16-byt",
            "\u{e9}t\u{e9}",
        ])
        .prop_map(str::to_owned),
        // Escapes TOML decodes into control characters, and other escapes.
        prop::sample::select(vec![
            "\\u0000",
            "\\u001b[2J",
            "\\n",
            "\\t",
            "\\r",
            "\\\\",
            "\\\"",
            "\\U0010FFFF",
            "\\u00e9",
            "\\b",
            "\\f",
            "\\e",
            "\\x41",
            "\\u{41}",
            "\\",
        ])
        .prop_map(str::to_owned),
        "[ -~&&[^\"\\\\]]{0,40}",
        "\\PC{0,20}",
        // Long values: a path component too long for the filesystem, a name too long for NSS.
        (1usize..5000, prop::sample::select(vec!["a", "/", "\u{e9}", "\\u0000", ".."]))
            .prop_map(|(n, s)| s.repeat(n)),
    ]
}

fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(string_content(), 1..4).prop_map(|parts| format!("\"{}\"", parts.concat())),
        1 => string_content().prop_map(|s| format!("'{}'", s.replace(['\'', '\n'], ""))),
        1 => string_content().prop_map(|s| format!("\"\"\"\n{s}\"\"\"")),
    ]
}

fn integer_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "65534",
            "4294967295",
            "4294967296",
            "-4294967296",
            "2147483648",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "99999999999999999999999999",
            "0x10",
            "0xffffffff",
            "0x1_0000_0000",
            "0o777",
            "0b1",
            "1_000",
            "+5",
            "-0",
            "00",
            "1__0",
            "0x",
            "1e3",
            "1.5",
            "-1.0",
            "inf",
            "-inf",
            "nan",
            "1e400",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
    ]
}

fn scalar_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => string_value(),
        3 => integer_value(),
        1 => prop::sample::select(vec!["true", "false", "1979-05-27T07:32:00Z", "07:32:00", "1979-05-27"])
            .prop_map(str::to_owned),
    ]
}

fn value() -> impl Strategy<Value = String> {
    scalar_value().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                let items: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", items.join(", "))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "name", "uid", "user", "gid", "group", "exe", "cgroup", "comm", "imdsv1", "mode", "endpoints",
            "allow",
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["uidd", "\"uid\"", "'exe'", "allow.x", "\"\"", "a.b.c", "UID", "Mode"])
            .prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ]
}

/// One line of a policy.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        // Arrays and inline tables over several lines, some lines starting with `[` (the fast
        // path cuts its tokens only at a `[` first on its line outside any of them).
        2 => (key(), value()).prop_map(|(k, v)| format!("{k} = {}", v.replace(", ", ",\n").replace('[', "[\n"))),
        4 => Just("[[allow]]".to_owned()),
        1 => prop::sample::select(vec![
            "[allow]", "[[allow.x]]", "[mode]", "[[endpoints]]", "[x]", "[[", "]]", "=", "# comment",
            "", "   ", "[[allow]] # again", "key = ", "= 1", "\"unterminated", "[a.b.c.d.e.f]",
            "  [[allow]]", "s = '''\n[[allow]]\n'''", "s = \"\"\"\n[x]\nuid = 1\n\"\"\"", "x = [\n[1],\n]",
            "x = {\nuid = 1\n}", "# [[allow]]", "x = [ # [\n]",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,30}",
    ]
}

fn document() -> impl Strategy<Value = String> {
    (prop::collection::vec(line(), 0..40), any::<bool>())
        .prop_map(|(lines, crlf)| lines.join(if crlf { "\r\n" } else { "\n" }))
}

/// A value for `key`: mostly one of the right type that resolves here, sometimes one that does not
/// resolve, sometimes anything.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let (good, bad): (Vec<&'static str>, Vec<&'static str>) = match key {
        "uid" | "gid" => {
            (vec!["0", "1", "7", "65534", "4294967295", "100000"], vec!["-1", "4294967296", "\"0\""])
        }
        "user" => (vec!["\"root\"", "\"nobody\"", "\"daemon\""], vec!["\"no-such-xyz\"", "\"\""]),
        "group" => (vec!["\"root\"", "\"nogroup\"", "\"daemon\""], vec!["\"no-such-xyz\"", "\"\""]),
        "exe" => (
            vec!["\"/bin/sh\"", "\"/usr/bin/env\"", "\"/proc/self/exe\""],
            vec!["\"/no/such/bin\"", "\"/usr\"", "\"bin/sh\""],
        ),
        "cgroup" => (
            vec![
                "\"/a\"",
                "\"/a/b\"",
                "\"/a/b/c/d\"",
                "\"/system.slice/app.service\"",
                "\"/not/yet\"",
                "\"/x y\"",
            ],
            vec!["\"/\"", "\"a\"", "\"/a/../b\""],
        ),
        "comm" => {
            (vec!["\"curl\"", "\"python3\"", "\"a-name-of-15-by\""], vec!["\"\"", "\"a-name-of-16-byt\""])
        }
        "imdsv1" => (vec!["\"allow\"", "\"log\"", "\"deny\""], vec!["\"block\""]),
        _ => (vec!["\"a rule\"", "\"\""], vec!["1"]),
    };
    prop_oneof![
        300 => prop::sample::select(good).prop_map(str::to_owned),
        2 => prop::sample::select(bad).prop_map(str::to_owned),
        1 => scalar_value(),
    ]
    .boxed()
}

/// A well-formed policy with a random number of allow tables of random keys: exercises resolution,
/// duplicates and the limits rather than the TOML syntax.
fn policy_document() -> impl Strategy<Value = String> {
    // At least one identity key (uid or user, gid or group, exe, cgroup, comm), then maybe imdsv1
    // and name; the mistakes come from the values (and rarely from the keys: see value_for).
    let identity = (
        prop::sample::subsequence(vec!["uid", "gid", "exe", "cgroup", "comm"], 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(keys, user, group)| {
            keys.into_iter()
                .map(|k| match k {
                    "uid" if user => "user",
                    "gid" if group => "group",
                    k => k,
                })
                .collect::<Vec<_>>()
        });
    let table = (identity, prop::sample::subsequence(vec!["imdsv1", "name"], 0..=2)).prop_flat_map(
        |(mut keys, extra)| {
            keys.extend(extra);
            keys.into_iter().map(|k| value_for(k).prop_map(move |v| (k, v))).collect::<Vec<_>>()
        },
    );
    (
        prop::option::of(prop::sample::select(vec!["\"enforce\""; 8].into_iter().chain(["\"monitor\"", "\"watch\""]).collect::<Vec<_>>())),
        prop::option::of(prop::sample::select(vec![
            "[\"aws-imds\"]", "[\"aws-imds\", \"ecs-credentials\", \"eks-pod-identity\"]", "[\"aws-imds\"]",
            "[\"aws-imds\"]", "[\"aws-imds\"]", "[\"aws-imds\"]", "[\"aws-imds\"]", "[]",
            "[\"169.254.169.254\", \"::ffff:169.254.169.254\", \"169.254.169.254\"]",
            "[\"1.1.1.1\", \"1.1.1.2\", \"1.1.1.3\", \"1.1.1.4\", \"1.1.1.5\", \"1.1.1.6\", \"1.1.1.7\", \"1.1.1.8\", \"1.1.1.9\"]",
        ])),
        prop::option::of(value_for("imdsv1")),
        prop::collection::vec(table, 0..25),
        0usize..3,
    )
        .prop_map(|(mode, endpoints, imdsv1, tables, repeat)| {
            let mut out = String::new();
            if let Some(m) = mode {
                out.push_str(&format!("mode = {m}\n"));
            }
            if let Some(e) = endpoints {
                out.push_str(&format!("endpoints = {e}\n"));
            }
            if let Some(v) = imdsv1 {
                out.push_str(&format!("imdsv1 = {v}\n"));
            }
            for _ in 0..=repeat {
                for t in &tables {
                    out.push_str("[[allow]]\n");
                    for (k, v) in t {
                        out.push_str(&format!("{k} = {v}\n"));
                    }
                }
            }
            out
        })
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        parse_bytes(bytes)?;
    }

    #[test]
    fn bytes_after_a_valid_prefix(prefix in policy_document(), junk in prop::collection::vec(any::<u8>(), 1..40), at in any::<prop::sample::Index>()) {
        let mut bytes = prefix.into_bytes();
        let at = at.index(bytes.len() + 1);
        bytes.splice(at..at, junk);
        parse_bytes(bytes)?;
    }

    #[test]
    fn toml_shaped_text(text in document()) {
        parse_text(&text)?;
    }

    #[test]
    fn policies_with_random_tables(text in policy_document()) {
        parse_text(&text)?;
    }

    /// The fast path reads exactly what the `toml` crate reads, positions included, or leaves the
    /// file to it; on policies of the shape it is for, it always answers.
    #[test]
    fn fast_path_reads_what_the_toml_crate_reads(text in policy_document(), crlf in any::<bool>()) {
        let text = if crlf { text.replace('\n', "\r\n") } else { text };
        let full: Result<PolicyFile, _> = toml::from_str(&text);
        // Cut at every table header, and not at all.
        for chunk in [1, usize::MAX] {
            match (imds_guard::policy::fast_toml::parse_in_chunks(&text, chunk), &full) {
                (Some(fast), Ok(full)) => prop_assert_eq!(format!("{fast:?}"), format!("{full:?}")),
                (Some(fast), Err(e)) => prop_assert!(false, "fast path accepted what toml refuses ({e}): {fast:?}"),
                (None, Ok(_)) => prop_assert!(false, "fast path left a policy of its shape to toml:\n{text}"),
                (None, Err(_)) => {}
            }
        }
    }

    #[test]
    fn fast_path_never_disagrees_on_toml_shaped_text(text in document()) {
        // Cut at every table header or not at all, the fast path reads the same.
        prop_assert_eq!(
            format!("{:?}", imds_guard::policy::fast_toml::parse_in_chunks(&text, 1)),
            format!("{:?}", imds_guard::policy::fast_toml::parse_in_chunks(&text, usize::MAX))
        );
        for chunk in [1, usize::MAX] {
            if let Some(fast) = imds_guard::policy::fast_toml::parse_in_chunks(&text, chunk) {
                let full: Result<PolicyFile, _> = toml::from_str(&text);
                prop_assert!(full.is_ok(), "fast path accepted what toml refuses: {full:?}");
                prop_assert_eq!(format!("{fast:?}"), format!("{:?}", full.unwrap()));
            }
        }
    }
}

/// The hostile values the issue names, each with what must happen.
#[test]
fn hostile_values_are_refused_at_their_position() {
    let cases: &[(&str, &str, &str)] = &[
        ("[[allow]]\nuid = 4294967296\n", "fuzz.toml:2:7", "expected u32"),
        ("[[allow]]\nuid = -1\n", "fuzz.toml:2:7", "`-1`"),
        ("[[allow]]\ngid = 99999999999999999999999\n", "fuzz.toml:2:7", "expected u32"),
        ("[[allow]]\nuid = 1e9\n", "fuzz.toml:2:7", "floating point"),
        ("[[allow]]\nexe = \"/bin/sh\\u0000x\"\n", "fuzz.toml:2:7", "nul byte"),
        ("[[allow]]\ncgroup = \"/a\\u0000b\"\n", "fuzz.toml:2:10", "nul byte"),
        ("[[allow]]\ncomm = \"a\\u0000\"\n", "fuzz.toml:2:8", "1 to 15 bytes"),
        ("[[allow]]\nuser = \"ro\\u0000ot\"\n", "fuzz.toml:2:8", "unknown user `ro\\0ot`"),
        ("[[allow]]\nuid = 0\nuid = 1\n", "fuzz.toml:3:1", "duplicate key"),
        ("[[allow]]\ncgroup = \"/..\"\n", "fuzz.toml:2:10", "`..`"),
        (
            "x = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            "fuzz.toml:1:",
            "recurs",
        ),
    ];
    for (text, at, what) in cases {
        let source = Source { name: "fuzz.toml".into(), text: (*text).to_owned() };
        let e = Policy::from_source(&source, host()).expect_err(text);
        let shown = e.to_string().to_lowercase();
        assert!(e.location.starts_with(at) && shown.contains(&what.to_lowercase()), "{text:?}: {e}");
        check(text.split('\n').count(), Err(e)).unwrap();
    }
    // Long values are named, but not in full.
    let long = format!("[[allow]]\nexe = \"/{}\"\n", "a".repeat(1 << 20));
    let e = Policy::from_source(&Source { name: "fuzz.toml".into(), text: long }, host()).unwrap_err();
    assert!(e.to_string().len() < 2048 && e.message.contains("File name too long"), "{}", e.message);
    assert_eq!(e.location, "fuzz.toml:2:7");
    // Not UTF-8: where, and what to do instead.
    let e = Source::from_bytes("fuzz.toml".into(), b"[[allow]]\nexe = \"/opt/caf\xe9/bin\"\n".to_vec())
        .unwrap_err();
    assert_eq!(e.location, "fuzz.toml:2:16");
    assert!(e.message.contains("not UTF-8") && e.message.contains("symlink"), "{e}");
}

/// Duplicates are not errors: each repeat of a table is ignored with a warning, and installs once.
#[test]
fn duplicate_tables_install_once() {
    let text = "[[allow]]\nuid = 7\n".repeat(MAX_RULES as usize);
    let p = Policy::from_source(&Source { name: "fuzz.toml".into(), text }, host()).unwrap();
    assert_eq!(p.rules.len(), MAX_RULES as usize);
    assert_eq!(p.installed().count(), 1);
    assert!(p.rules[1..].iter().all(|r| r.duplicate_of == Some(0)));
    assert!(p.warnings[0].contains("repeats allow[0] and is ignored"), "{}", p.warnings[0]);
    // Warned about, but not 16,383 times (every reload logs the warnings).
    assert_eq!(p.warnings.len(), imds_guard::policy::MAX_WARNINGS + 1);
    assert!(p.warnings.last().unwrap().contains("and 16373 more warnings"), "{:?}", p.warnings.last());
    assert_eq!(p.kernel_tables(1).1.len(), 1);
}
