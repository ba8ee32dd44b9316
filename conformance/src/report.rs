//! Results of a conformance run: one [`CheckResult`] per check, a [`Summary`], the
//! grouping of failures by their first cause, rendered as a table, as JSON (serde) or
//! as JUnit XML.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use invariant_spec::Role;
use serde::Serialize;

use crate::profile::Profile;

/// The version of this tool.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version of the normative documents (`spec/*.md`) the checks cite: they are
/// released with the workspace, so it is the workspace version.
pub const SPEC_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The server did what the spec requires, in the preferred form.
    Pass,
    /// The server broke a rule of the spec.
    Fail,
    /// Allowed by the spec's liberal-accept rule, or a documented divergence of the
    /// reference, but not the preferred form.
    Warn,
    /// Not run: the check needs something this run does not have (a broker, a limit).
    Skip,
}

impl Status {
    /// Lowercase name, as in the table and the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Warn => "warn",
            Status::Skip => "skip",
        }
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The check's id (also accepted by `--only`).
    pub check: String,
    /// What the check verifies, in a few words.
    pub title: String,
    /// How it ended.
    pub status: Status,
    /// The smallest profile that runs the check.
    pub profile: Profile,
    /// The rule it tests: `spec/<file>.md#<anchor>`.
    pub spec: String,
    /// The rule it tests: `<file>.md#<anchor>`.
    pub anchor: String,
    /// What was observed (empty on a plain pass).
    pub detail: String,
    /// For a failure or warning: the id of the first check (in run order) that failed
    /// or warned for the same cause (the same observation, ids and numbers aside).
    pub cause: Option<String>,
    /// Wall time in milliseconds.
    pub millis: u64,
}

/// Counts per verdict and the verdict of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Checks run.
    pub total: usize,
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Warned.
    pub warn: usize,
    /// Skipped.
    pub skip: usize,
    /// Not run because the server stopped answering.
    pub not_run: usize,
    /// `pass` (no failure), `fail` (a check failed) or `aborted` (the server stopped
    /// answering during the run).
    pub verdict: String,
}

/// What [`Report::new`] is built from.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) role: Role,
    pub(crate) url: String,
    pub(crate) profile: Profile,
    pub(crate) flags: Vec<String>,
    pub(crate) started: SystemTime,
    pub(crate) finished: SystemTime,
    pub(crate) results: Vec<CheckResult>,
    pub(crate) aborted: Option<String>,
    pub(crate) not_run: Vec<String>,
    pub(crate) notes: Vec<String>,
}

/// Every result of one run against one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `invariant-conformance`.
    pub tool: String,
    /// The tool's version.
    pub tool_version: String,
    /// The version of the spec documents the checks cite.
    pub spec_version: String,
    /// The protocol checked.
    pub role: String,
    /// The server's base url.
    pub url: String,
    /// The profile of the run.
    pub profile: Profile,
    /// The settings of the run, as flags (the token is never shown).
    pub flags: Vec<String>,
    /// Start of the run, RFC 3339 UTC.
    pub started: String,
    /// End of the run, RFC 3339 UTC.
    pub finished: String,
    /// Counts and verdict.
    pub summary: Summary,
    /// Why the run stopped early (the server stopped accepting connections).
    pub aborted: Option<String>,
    /// The checks not run because the run stopped early.
    pub not_run: Vec<String>,
    /// Remarks about the run (side effects left behind).
    pub notes: Vec<String>,
    /// Results in the order the checks ran.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// A report of `run`: counts, verdict and cause groups filled in.
    pub(crate) fn new(run: Run) -> Report {
        let mut results = run.results;
        assign_causes(&mut results);
        let mut report = Report {
            tool: "invariant-conformance".into(),
            tool_version: TOOL_VERSION.into(),
            spec_version: SPEC_VERSION.into(),
            role: run.role.name().to_string(),
            url: run.url,
            profile: run.profile,
            flags: run.flags,
            started: rfc3339(run.started),
            finished: rfc3339(run.finished),
            summary: Summary::default(),
            aborted: run.aborted,
            not_run: run.not_run,
            notes: run.notes,
            results,
        };
        report.summary = report.summarize();
        report
    }

    fn summarize(&self) -> Summary {
        let verdict = if self.aborted.is_some() {
            "aborted"
        } else if self.count(Status::Fail) > 0 {
            "fail"
        } else {
            "pass"
        };
        Summary {
            total: self.results.len(),
            pass: self.count(Status::Pass),
            fail: self.count(Status::Fail),
            warn: self.count(Status::Warn),
            skip: self.count(Status::Skip),
            not_run: self.not_run.len(),
            verdict: verdict.into(),
        }
    }

    /// Number of results with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    /// True when no check failed and the run was not aborted.
    pub fn passed(&self) -> bool {
        self.count(Status::Fail) == 0 && self.aborted.is_none()
    }

    /// The failed results.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|r| r.status == Status::Fail)
    }

    /// Failures grouped by first cause: `(first check, its detail, every check of the
    /// group)`, in run order.
    pub fn failure_groups(&self) -> Vec<(String, String, Vec<String>)> {
        let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
        for r in self.failures() {
            let cause = r.cause.clone().unwrap_or_else(|| r.check.clone());
            match groups.iter_mut().find(|g| g.0 == cause) {
                Some(group) => group.2.push(r.check.clone()),
                None => groups.push((cause, r.detail.clone(), vec![r.check.clone()])),
            }
        }
        groups
    }

    /// A human-readable table: status, check, profile, spec anchor, detail; the
    /// failures grouped by first cause; then a summary line.
    pub fn table(&self) -> String {
        let check_width = self
            .results
            .iter()
            .map(|r| r.check.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let spec_width = self
            .results
            .iter()
            .map(|r| r.spec.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} conformance of {} (profile {})",
            self.role, self.url, self.profile
        );
        let _ = writeln!(
            out,
            "{:<6} {:<check_width$} {:<7} {:<spec_width$} detail",
            "status", "check", "profile", "spec"
        );
        for r in &self.results {
            let detail = if r.detail.is_empty() {
                r.title.clone()
            } else {
                format!("{}: {}", r.title, r.detail)
            };
            let _ = writeln!(
                out,
                "{:<6} {:<check_width$} {:<7} {:<spec_width$} {}",
                r.status.as_str(),
                r.check,
                r.profile.name(),
                r.spec,
                detail.replace('\n', " ")
            );
        }
        let groups = self.failure_groups();
        if !groups.is_empty() {
            let _ = writeln!(out, "failures by first cause:");
            for (cause, detail, checks) in &groups {
                let others: Vec<&String> = checks.iter().filter(|c| *c != cause).collect();
                let also = if others.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (also {})",
                        others
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let _ = writeln!(out, "  {cause}{also}: {detail}");
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{} checks: {} passed, {} failed, {} warned, {} skipped{}",
            s.total,
            s.pass,
            s.fail,
            s.warn,
            s.skip,
            if s.not_run > 0 {
                format!(", {} not run", s.not_run)
            } else {
                String::new()
            }
        );
        out
    }

    /// The report as JUnit XML (one test suite, one test case per check; failures as
    /// `<failure>`, skips as `<skipped>`, warnings as passes with `system-out`).
    pub fn junit(&self) -> String {
        let mut out = String::new();
        let seconds = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
        let total_ms: u64 = self.results.iter().map(|r| r.millis).sum();
        let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        let _ = writeln!(
            out,
            r#"<testsuites name="invariant-conformance" tests="{}" failures="{}" skipped="{}" time="{}">"#,
            self.results.len() + self.not_run.len(),
            self.summary.fail,
            self.summary.skip + self.not_run.len(),
            seconds(total_ms)
        );
        let _ = writeln!(
            out,
            r#"  <testsuite name="{}" tests="{}" failures="{}" skipped="{}" timestamp="{}" time="{}">"#,
            xml(&format!("{} {} ({})", self.role, self.url, self.profile)),
            self.results.len() + self.not_run.len(),
            self.summary.fail,
            self.summary.skip + self.not_run.len(),
            xml(&self.started),
            seconds(total_ms)
        );
        for r in &self.results {
            let _ = write!(
                out,
                r#"    <testcase classname="{}.{}" name="{}" time="{}">"#,
                xml(&self.role),
                r.profile,
                xml(&r.check),
                seconds(r.millis)
            );
            match r.status {
                Status::Pass => {}
                Status::Fail => {
                    let _ = write!(
                        out,
                        r#"<failure message="{}">{}</failure>"#,
                        xml(&r.anchor),
                        xml(&r.detail)
                    );
                }
                Status::Skip => {
                    let _ = write!(out, r#"<skipped message="{}"/>"#, xml(&r.detail));
                }
                Status::Warn => {
                    let _ = write!(
                        out,
                        "<system-out>warning ({}): {}</system-out>",
                        xml(&r.anchor),
                        xml(&r.detail)
                    );
                }
            }
            let _ = writeln!(out, "</testcase>");
        }
        for id in &self.not_run {
            let _ = writeln!(
                out,
                r#"    <testcase classname="{}" name="{}"><skipped message="not run: the server stopped answering"/></testcase>"#,
                xml(&self.role),
                xml(id)
            );
        }
        let _ = writeln!(out, "  </testsuite>");
        let _ = writeln!(out, "</testsuites>");
        out
    }
}

/// Sets each failure's and warning's `cause`: the first result (in run order) with the
/// same status and the same detail once ids, hex and numbers are blanked out.
fn assign_causes(results: &mut [CheckResult]) {
    let mut first: HashMap<(Status, String), String> = HashMap::new();
    for r in results.iter_mut() {
        if !matches!(r.status, Status::Fail | Status::Warn) {
            continue;
        }
        let key = (r.status, cause_key(&r.detail));
        let cause = first.entry(key).or_insert_with(|| r.check.clone()).clone();
        r.cause = Some(cause);
    }
}

/// `detail` with runs of hex digits and digits blanked, so the same observation about
/// different blobs, ids and sizes compares equal.
fn cause_key(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        let all_digits = word.chars().all(|c| c.is_ascii_digit());
        let long_hex = word.len() >= 16 && word.chars().all(|c| c.is_ascii_hexdigit());
        if all_digits || long_hex {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in detail.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A detail fit for a report: `Id(<hex>)` debug text shown as the hex, control
/// characters escaped.
pub(crate) fn clean_detail(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut rest = detail;
    while let Some(at) = rest.find("Id(") {
        let after = &rest[at + 3..];
        let hex_len = after.chars().take_while(char::is_ascii_hexdigit).count();
        let boundary = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if boundary && hex_len == 64 && after[hex_len..].starts_with(')') {
            out.push_str(&rest[..at]);
            out.push_str(&after[..hex_len]);
            rest = &after[hex_len + 1..];
        } else {
            out.push_str(&rest[..at + 3]);
            rest = after;
        }
    }
    out.push_str(rest);
    out.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Escapes text for XML attributes and content.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `time` as RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.000Z`).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn result(check: &str, status: Status, detail: &str) -> CheckResult {
        CheckResult {
            check: check.into(),
            title: "t".into(),
            status,
            profile: Profile::Core,
            spec: "spec/x.md#a".into(),
            anchor: "x.md#a".into(),
            detail: detail.into(),
            cause: None,
            millis: 1,
        }
    }

    fn report(results: Vec<CheckResult>) -> Report {
        Report::new(Run {
            role: Role::Storage,
            url: "http://127.0.0.1:1".into(),
            profile: Profile::Full,
            flags: vec!["--profile=full".into()],
            started: UNIX_EPOCH,
            finished: UNIX_EPOCH + Duration::from_millis(1500),
            results,
            aborted: None,
            not_run: Vec::new(),
            notes: Vec::new(),
        })
    }

    #[test]
    fn counts_and_table() {
        let report = report(vec![
            result("a", Status::Pass, ""),
            result("bb", Status::Warn, "w"),
            result("c", Status::Fail, "x"),
        ]);
        assert!(!report.passed());
        assert_eq!(report.count(Status::Warn), 1);
        let table = report.table();
        assert!(table.contains("fail   c"), "{table}");
        assert!(table.contains("1 passed, 1 failed, 1 warned, 0 skipped"));
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["results"][2]["status"], "fail");
        assert_eq!(json["summary"]["fail"], 1);
        assert_eq!(json["summary"]["verdict"], "fail");
        assert_eq!(json["profile"], "full");
        assert_eq!(json["started"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["finished"], "1970-01-01T00:00:01.500Z");
        assert_eq!(json["results"][2]["anchor"], "x.md#a");
    }

    #[test]
    fn failures_are_grouped_by_first_cause() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let report = report(vec![
            result(
                "s-get",
                Status::Fail,
                &format!("GET {a} answered 12 bytes that differ from the 10 stored"),
            ),
            result("s-ok", Status::Pass, ""),
            result(
                "s-head",
                Status::Fail,
                &format!("GET {b} answered 99 bytes that differ from the 98 stored"),
            ),
            result("s-other", Status::Fail, "something else"),
        ]);
        let causes: Vec<Option<&str>> = report.results.iter().map(|r| r.cause.as_deref()).collect();
        assert_eq!(
            causes,
            [Some("s-get"), None, Some("s-get"), Some("s-other")]
        );
        let groups = report.failure_groups();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].2, ["s-get", "s-head"]);
        let table = report.table();
        assert!(table.contains("  s-get (also s-head): GET"), "{table}");
    }

    #[test]
    fn details_never_show_id_debug_text() {
        let hex = "c".repeat(64);
        assert_eq!(
            clean_detail(&format!("got [Has(Id({hex}))]\nnext")),
            format!("got [Has({hex})] next")
        );
        assert_eq!(clean_detail("Id(12)"), "Id(12)");
    }

    #[test]
    fn junit_escapes_and_counts() {
        let report = report(vec![
            result("a", Status::Pass, ""),
            result("b", Status::Fail, "expected 400, got 500 \"<x>\""),
            result("c", Status::Skip, "no broker"),
        ]);
        let xml = report.junit();
        assert!(
            xml.contains(r#"tests="3" failures="1" skipped="1""#),
            "{xml}"
        );
        assert!(xml.contains("&quot;&lt;x&gt;&quot;"), "{xml}");
        assert!(xml.contains(r#"<skipped message="no broker"/>"#), "{xml}");
    }

    #[test]
    fn dates_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.000Z");
    }
}
