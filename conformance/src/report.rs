//! Results of a conformance run: one [`CheckResult`] per check, rendered as a table or
//! as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The server did what the spec requires, in the preferred form.
    Pass,
    /// The server broke a rule of the spec.
    Fail,
    /// Allowed by the spec's liberal-accept rule, but not the preferred form.
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
    /// The rule it tests: `spec/<file>.md#<anchor>`.
    pub spec: String,
    /// What was observed (empty on a plain pass).
    pub detail: String,
    /// Wall time in milliseconds.
    pub millis: u64,
}

/// Every result of one run against one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The protocol checked.
    pub role: String,
    /// The server's base url.
    pub url: String,
    /// Results in the order the checks ran.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// Number of results with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// The failed results.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|r| r.status == Status::Fail)
    }

    /// A human-readable table: status, check, spec anchor, detail; then a summary line.
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
        let _ = writeln!(out, "{} conformance of {}", self.role, self.url);
        let _ = writeln!(
            out,
            "{:<6} {:<check_width$} {:<spec_width$} detail",
            "status", "check", "spec"
        );
        for r in &self.results {
            let detail = if r.detail.is_empty() {
                r.title.clone()
            } else {
                format!("{}: {}", r.title, r.detail)
            };
            let _ = writeln!(
                out,
                "{:<6} {:<check_width$} {:<spec_width$} {}",
                r.status.as_str(),
                r.check,
                r.spec,
                detail.replace('\n', " ")
            );
        }
        let _ = writeln!(
            out,
            "{} checks: {} passed, {} failed, {} warned, {} skipped",
            self.results.len(),
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.count(Status::Skip)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(check: &str, status: Status) -> CheckResult {
        CheckResult {
            check: check.into(),
            title: "t".into(),
            status,
            spec: "spec/x.md#a".into(),
            detail: String::new(),
            millis: 1,
        }
    }

    #[test]
    fn counts_and_table() {
        let report = Report {
            role: "storage".into(),
            url: "http://127.0.0.1:1".into(),
            results: vec![
                result("a", Status::Pass),
                result("bb", Status::Warn),
                result("c", Status::Fail),
            ],
        };
        assert!(!report.passed());
        assert_eq!(report.count(Status::Warn), 1);
        let table = report.table();
        assert!(table.contains("fail   c"), "{table}");
        assert!(table.contains("1 passed, 1 failed, 1 warned, 0 skipped"));
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["results"][2]["status"], "fail");
    }
}
