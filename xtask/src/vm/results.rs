//! The guest's lines (protocol in xtask/src/vm/guest.sh) and the verdict for one kernel: every
//! check needs exactly its one `ok` line; a missing line, a failed boot, a kernel panic or a
//! timeout is a failure naming the kernel and the check.

/// One line from the guest's result port.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    Booted { label: &'a str, release: &'a str, uptime: Option<f64> },
    Setup { label: &'a str, what: &'a str },
    Result(CheckLine<'a>),
    Log { check: &'a str, text: &'a str },
    Out(&'a str),
    Done { label: &'a str },
    InitFail(&'a str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckLine<'a> {
    pub label: &'a str,
    pub check: &'a str,
    pub ok: bool,
    pub secs: Option<f64>,
    pub detail: &'a str,
}

/// Splits off the first whitespace-separated word.
fn word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    Some(s.split_once(char::is_whitespace).map_or((s, ""), |(w, r)| (w, r.trim_start())))
}

/// Parses one line; `None` for anything that is not one of ours (a serial port may carry noise).
pub fn parse_line(raw: &str) -> Option<Line<'_>> {
    let line = raw.trim_end_matches(['\r', '\n']);
    if let Some(text) = line.strip_prefix("IMDSG-OUT | ") {
        return Some(Line::Out(text));
    }
    if line == "IMDSG-OUT |" {
        return Some(Line::Out(""));
    }
    let (tag, rest) = word(line)?;
    match tag {
        "IMDSG-BOOTED" => {
            let (label, rest) = word(rest)?;
            let (release, rest) = word(rest)?;
            Some(Line::Booted { label, release, uptime: word(rest).and_then(|(u, _)| u.parse().ok()) })
        }
        "IMDSG-SETUP" => {
            let (label, rest) = word(rest)?;
            let what = rest.strip_prefix("FAIL")?.trim_start();
            Some(Line::Setup { label, what })
        }
        "IMDSG-RESULT" => {
            let (label, rest) = word(rest)?;
            let (check, rest) = word(rest)?;
            let (status, rest) = word(rest)?;
            let ok = match status {
                "ok" => true,
                "FAIL" => false,
                _ => return None,
            };
            let (secs, detail) = match word(rest) {
                Some((s, d)) if s.ends_with('s') && s[..s.len() - 1].parse::<f64>().is_ok() => {
                    (s[..s.len() - 1].parse().ok(), d)
                }
                _ => (None, rest),
            };
            Some(Line::Result(CheckLine { label, check, ok, secs, detail: detail.trim_end() }))
        }
        "IMDSG-LOG" => {
            let (check, rest) = word(rest)?;
            let text = rest.strip_prefix('|').map_or(rest, |t| t.strip_prefix(' ').unwrap_or(t));
            Some(Line::Log { check, text })
        }
        "IMDSG-DONE" => Some(Line::Done { label: word(rest)?.0 }),
        "IMDSG-INIT-FAIL" => Some(Line::InitFail(rest)),
        _ => None,
    }
}

/// How the VM ended, as the host saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// QEMU exited by itself (the guest powered off, or rebooted after a panic).
    Exited,
    /// The host killed it after this many seconds.
    TimedOut(u64),
    /// No `IMDSG-BOOTED` line within this many seconds.
    NoBoot(u64),
    /// The guest had booted but sent no line for this many seconds (a hung guest).
    Silent(u64),
    /// QEMU could not run or failed (its message).
    QemuFailed(String),
}

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub check: String,
    pub ok: bool,
    pub secs: Option<f64>,
    /// Why it failed (empty when ok).
    pub why: String,
}

/// Everything about one kernel's run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub label: String,
    /// The release the guest booted (`uname -r`).
    pub booted: Option<String>,
    /// The guest's uptime when its script started (seconds since the kernel started).
    pub boot_uptime: Option<f64>,
    pub verdicts: Vec<Verdict>,
    /// Failures of the VM itself (boot, panic, timeout, wrong kernel): each fails the kernel.
    pub vm_failures: Vec<String>,
    /// Setup steps that failed in the guest (reported, not failures by themselves).
    pub notes: Vec<String>,
    /// Failed checks' output tails, by check.
    pub logs: Vec<(String, Vec<String>)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.vm_failures.is_empty() && !self.verdicts.is_empty() && self.verdicts.iter().all(|v| v.ok)
    }
}

/// The verdict for kernel `label` (expected to boot `release`) that had to run `checks`, from the
/// guest's `lines`, the kernel's console text and how the VM ended.
pub fn evaluate(
    label: &str,
    release: &str,
    checks: &[String],
    lines: &str,
    console: &str,
    end: &End,
) -> Report {
    let mut r = Report { label: label.to_owned(), ..Report::default() };
    let mut results: Vec<CheckLine<'_>> = Vec::new();
    let mut done = false;
    for l in lines.lines().filter_map(parse_line) {
        match l {
            Line::Booted { label: l, release: rel, uptime } if l == label => {
                r.booted = Some(rel.to_owned());
                r.boot_uptime = uptime;
            }
            Line::Setup { label: l, what } if l == label => {
                r.notes.push(format!("guest setup failed: {what}"))
            }
            Line::Result(c) if c.label == label => results.push(c),
            Line::Log { check, text } => match r.logs.iter_mut().find(|(c, _)| c == check) {
                Some((_, v)) => v.push(text.to_owned()),
                None => r.logs.push((check.to_owned(), vec![text.to_owned()])),
            },
            Line::Done { label: l } if l == label => done = true,
            Line::InitFail(why) => r.vm_failures.push(format!("guest init failed: {why}")),
            _ => {}
        }
    }
    match &r.booted {
        None => {
            r.vm_failures.push("the guest never started its script (failed boot; see console.log)".into())
        }
        Some(b) if b != release => r.vm_failures.push(format!("booted kernel {b}, not {release}")),
        Some(_) => {}
    }
    if let Some(p) = console.lines().find(|l| l.contains("Kernel panic")) {
        r.vm_failures.push(format!("kernel panic: {}", p.trim()));
    }
    for pat in ["BUG:", "Oops:", "general protection fault"] {
        if let Some(p) = console.lines().find(|l| l.contains(pat)) {
            r.vm_failures.push(format!("kernel error: {}", p.trim()));
        }
    }
    if let Some(p) = console.lines().find(|l| l.contains("WARNING:")) {
        r.notes.push(format!("kernel warning: {}", p.trim()));
    }
    match end {
        End::Exited if !done && r.booted.is_some() => {
            r.vm_failures.push("the guest stopped before it finished (no IMDSG-DONE)".into());
        }
        End::Exited => {}
        End::TimedOut(s) => r.vm_failures.push(format!("timed out after {s} s (VM killed)")),
        End::NoBoot(s) => r.vm_failures.push(format!("no boot within {s} s (VM killed)")),
        End::Silent(s) => r.vm_failures.push(format!("no line from the guest for {s} s (hung; VM killed)")),
        End::QemuFailed(m) => r.vm_failures.push(format!("qemu failed: {m}")),
    }
    for check in checks {
        let mine: Vec<&CheckLine<'_>> = results.iter().filter(|c| c.check == check).collect();
        let v = match mine.as_slice() {
            [] => Verdict {
                check: check.clone(),
                ok: false,
                secs: None,
                why: "no result line (the guest never got to it or died in it)".into(),
            },
            [c] => Verdict {
                check: check.clone(),
                ok: c.ok,
                secs: c.secs,
                why: if c.ok { String::new() } else { c.detail.to_owned() },
            },
            [..] => Verdict {
                check: check.clone(),
                ok: false,
                secs: None,
                why: format!("{} result lines for one check", mine.len()),
            },
        };
        r.verdicts.push(v);
    }
    for c in &results {
        if !checks.iter().any(|x| x == c.check) {
            r.notes.push(format!("result for a check that was not asked for: {}", c.check));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_line() {
        assert_eq!(
            parse_line("IMDSG-BOOTED 6.12 6.12.117+deb13-cloud-amd64 3.91\r\n"),
            Some(Line::Booted { label: "6.12", release: "6.12.117+deb13-cloud-amd64", uptime: Some(3.91) })
        );
        assert_eq!(
            parse_line("IMDSG-RESULT 6.1 enforce::x ok 12.5s "),
            Some(Line::Result(CheckLine {
                label: "6.1",
                check: "enforce::x",
                ok: true,
                secs: Some(12.5),
                detail: ""
            }))
        );
        assert_eq!(
            parse_line(
                "IMDSG-RESULT 5.10 lifecycle::y FAIL 3.0s exit 101: daemon did not start (at a.rs:1:2)"
            ),
            Some(Line::Result(CheckLine {
                label: "5.10",
                check: "lifecycle::y",
                ok: false,
                secs: Some(3.0),
                detail: "exit 101: daemon did not start (at a.rs:1:2)"
            }))
        );
        assert_eq!(
            parse_line("IMDSG-LOG enforce::x | thread 'x' panicked"),
            Some(Line::Log { check: "enforce::x", text: "thread 'x' panicked" })
        );
        assert_eq!(parse_line("IMDSG-OUT |   indented"), Some(Line::Out("  indented")));
        assert_eq!(parse_line("IMDSG-OUT |"), Some(Line::Out("")));
        assert_eq!(
            parse_line("IMDSG-SETUP 6.1 FAIL modprobe veth"),
            Some(Line::Setup { label: "6.1", what: "modprobe veth" })
        );
        assert_eq!(parse_line("IMDSG-DONE 6.1"), Some(Line::Done { label: "6.1" }));
        assert_eq!(parse_line("IMDSG-INIT-FAIL no disk"), Some(Line::InitFail("no disk")));
    }

    #[test]
    fn ignores_noise_and_malformed_lines() {
        for l in
            ["", "random kernel text", "IMDSG-RESULT 6.1 check maybe 1s", "IMDSG-RESULT 6.1", "IMDSG-BOOTED"]
        {
            assert_eq!(parse_line(l), None, "{l:?}");
        }
    }

    const REL: &str = "6.1.0-50-cloud-amd64";

    fn checks() -> Vec<String> {
        vec!["a::one".into(), "b::two".into()]
    }

    #[test]
    fn all_ok_passes() {
        let lines = format!(
            "IMDSG-BOOTED 6.1 {REL} 4.0\nIMDSG-RESULT 6.1 a::one ok 1.0s\nIMDSG-RESULT 6.1 b::two ok 2.0s\nIMDSG-DONE 6.1\n"
        );
        let r = evaluate("6.1", REL, &checks(), &lines, "", &End::Exited);
        assert!(r.ok(), "{r:#?}");
        assert_eq!(r.boot_uptime, Some(4.0));
    }

    #[test]
    fn a_missing_line_a_failure_and_another_kernel_s_line_each_fail() {
        let lines = format!(
            "IMDSG-BOOTED 6.1 {REL} 4.0\nIMDSG-RESULT 6.1 a::one FAIL 1.0s exit 101: boom\nIMDSG-LOG a::one | boom\n\
             IMDSG-RESULT 5.10 b::two ok 2.0s\nIMDSG-DONE 6.1\n"
        );
        let r = evaluate("6.1", REL, &checks(), &lines, "", &End::Exited);
        assert!(!r.ok());
        assert!(r.vm_failures.is_empty(), "{r:#?}");
        assert_eq!(r.verdicts[0].why, "exit 101: boom");
        assert!(!r.verdicts[1].ok && r.verdicts[1].why.starts_with("no result line"));
        assert_eq!(r.logs, [("a::one".to_owned(), vec!["boom".to_owned()])]);
    }

    #[test]
    fn vm_failures_fail_the_kernel() {
        let ok_lines = format!(
            "IMDSG-BOOTED 6.1 {REL} 4\nIMDSG-RESULT 6.1 a::one ok 1s\nIMDSG-RESULT 6.1 b::two ok 1s\n"
        );
        // Timed out before IMDSG-DONE.
        let r = evaluate("6.1", REL, &checks(), &ok_lines, "", &End::TimedOut(90));
        assert!(!r.ok() && r.vm_failures.iter().any(|f| f.contains("timed out after 90 s")), "{r:#?}");
        // Powered off early.
        let r = evaluate("6.1", REL, &checks(), &ok_lines, "", &End::Exited);
        assert!(r.vm_failures.iter().any(|f| f.contains("no IMDSG-DONE")), "{r:#?}");
        // A panic on the console.
        let done = format!("{ok_lines}IMDSG-DONE 6.1\n");
        let r =
            evaluate("6.1", REL, &checks(), &done, "[ 9.1] Kernel panic - not syncing: x\n", &End::Exited);
        assert!(r.vm_failures.iter().any(|f| f.starts_with("kernel panic")), "{r:#?}");
        // The wrong kernel.
        let r = evaluate("6.1", "6.1.0-99-cloud-amd64", &checks(), &done, "", &End::Exited);
        assert!(r.vm_failures.iter().any(|f| f.starts_with("booted kernel")), "{r:#?}");
        // Hung after booting.
        let r = evaluate("6.1", REL, &checks(), &ok_lines, "", &End::Silent(360));
        assert!(r.vm_failures.iter().any(|f| f.contains("no line from the guest for 360 s")), "{r:#?}");
        // No boot at all: every check is missing too.
        let r = evaluate("6.1", REL, &checks(), "", "", &End::NoBoot(120));
        assert!(!r.ok() && r.verdicts.iter().all(|v| !v.ok) && r.vm_failures.len() == 2, "{r:#?}");
        // A duplicated line is not a pass.
        let dup = format!("{done}IMDSG-RESULT 6.1 a::one ok 1s\n");
        assert!(!evaluate("6.1", REL, &checks(), &dup, "", &End::Exited).ok());
    }
}
