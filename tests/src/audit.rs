//! OpenBao's file audit log, read back so a test can count what an agent asked for.
//!
//! Every request and every response is one JSON line. The harness's audit device keeps
//! token accessors in clear (`hmac_accessor = "false"`, see [`crate::openbao`]), so the
//! requests of one agent are found from the accessors its logins returned. Secret
//! values, tokens and request bodies stay HMAC'd.

use std::path::Path;

use serde_json::Value;

use crate::{IoContext, Result};

/// Whether a line records a request or its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// One audit line.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Seconds since the Unix epoch, with the log's sub-second precision.
    pub time: f64,
    /// `request.path`, e.g. `database/creds/app`.
    pub path: String,
    /// `request.operation`: `read`, `update`, `list`, ...
    pub operation: String,
    /// Accessor of the token the request was made with (none for a login).
    pub accessor: Option<String>,
    /// The error OpenBao answered, if any.
    pub error: Option<String>,
    /// The whole line.
    pub raw: Value,
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let raw: Value = serde_json::from_str(line).ok()?;
        let kind = match raw["type"].as_str()? {
            "request" => Kind::Request,
            "response" => Kind::Response,
            _ => return None,
        };
        let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        Some(Entry {
            kind,
            time: raw["time"].as_str().and_then(parse_rfc3339).unwrap_or(0.0),
            path: s(&raw["request"]["path"]).unwrap_or_default(),
            operation: s(&raw["request"]["operation"]).unwrap_or_default(),
            accessor: s(&raw["auth"]["accessor"])
                .or_else(|| s(&raw["request"]["client_token_accessor"])),
            error: s(&raw["error"]),
            raw,
        })
    }

    /// For a login response: the accessor of the token it issued.
    pub fn issued_accessor(&self) -> Option<&str> {
        self.raw["response"]["auth"]["accessor"]
            .as_str()
            .filter(|s| !s.is_empty())
    }

    /// For a response that created or renewed a lease: its lease id.
    pub fn lease_id(&self) -> Option<&str> {
        self.raw["response"]["secret"]["lease_id"]
            .as_str()
            .filter(|s| !s.is_empty())
    }
}

/// The audit log as read at one moment.
#[derive(Debug, Clone)]
pub struct Trail {
    pub entries: Vec<Entry>,
}

impl Trail {
    /// Reads and parses the whole log (lines that are not audit records are skipped).
    pub fn read(path: &Path) -> Result<Trail> {
        let text = std::fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))?;
        Ok(Trail {
            entries: text.lines().filter_map(Entry::parse).collect(),
        })
    }

    /// Successful login responses at `<mount>/login` for auth role `role` (from the
    /// token metadata the auth method records), in time order.
    pub fn logins(&self, mount: &str, role: &str) -> Vec<&Entry> {
        let path = format!("{}/login", mount.trim_matches('/'));
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Response && e.path == path && e.error.is_none())
            .filter(|e| e.raw["response"]["auth"]["metadata"]["role"] == role)
            .collect()
    }

    /// Accessors of every token issued by those logins.
    pub fn login_accessors(&self, mount: &str, role: &str) -> Vec<String> {
        self.logins(mount, role)
            .iter()
            .filter_map(|e| e.issued_accessor().map(str::to_owned))
            .collect()
    }

    /// Requests (not responses) made with any of `accessors`, in time order.
    pub fn requests_by<'a>(&'a self, accessors: &[String]) -> Vec<&'a Entry> {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Request)
            .filter(|e| e.accessor.as_ref().is_some_and(|a| accessors.contains(a)))
            .collect()
    }

    /// Responses to requests made with any of `accessors`, in time order.
    pub fn responses_to<'a>(&'a self, accessors: &[String]) -> Vec<&'a Entry> {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Response)
            .filter(|e| e.accessor.as_ref().is_some_and(|a| accessors.contains(a)))
            .collect()
    }

    /// Every request by the tokens that logins as `role` issued, with those logins'
    /// own requests first: the agent's whole conversation with OpenBao.
    pub fn agent_requests(&self, mount: &str, role: &str) -> Vec<&Entry> {
        self.requests_by(&self.login_accessors(mount, role))
    }
}

/// How many of `entries` have `path` (and `operation`, unless `None`).
pub fn count(entries: &[&Entry], path: &str, operation: Option<&str>) -> usize {
    entries
        .iter()
        .filter(|e| e.path == path && operation.is_none_or(|o| e.operation == o))
        .count()
}

/// `path operation: n` per distinct pair, for failure messages.
pub fn summary(entries: &[&Entry]) -> String {
    let mut counts = std::collections::BTreeMap::<(String, String), usize>::new();
    for e in entries {
        *counts
            .entry((e.path.clone(), e.operation.clone()))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|((p, o), n)| format!("  {p} {o}: {n}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac]Z` (what OpenBao writes) to Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openbao_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            parse_rfc3339("2024-03-01T12:30:15.25Z"),
            Some(1_709_296_215.25)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn finds_an_agent_by_the_accessors_its_logins_returned() {
        let lines = [
            r#"{"type":"request","time":"2024-01-01T00:00:00Z","request":{"path":"auth/kubernetes/login","operation":"update"}}"#,
            r#"{"type":"response","time":"2024-01-01T00:00:00.1Z","request":{"path":"auth/kubernetes/login","operation":"update"},"response":{"auth":{"accessor":"acc1","metadata":{"role":"r1"}}}}"#,
            r#"{"type":"response","time":"2024-01-01T00:00:00.2Z","request":{"path":"auth/kubernetes/login","operation":"update"},"response":{"auth":{"accessor":"acc2","metadata":{"role":"other"}}}}"#,
            r#"{"type":"request","time":"2024-01-01T00:00:01Z","auth":{"accessor":"acc1"},"request":{"path":"database/creds/r1","operation":"read"}}"#,
            r#"{"type":"request","time":"2024-01-01T00:00:02Z","auth":{"accessor":"acc2"},"request":{"path":"database/creds/r1","operation":"read"}}"#,
            "not json",
        ];
        let trail = Trail {
            entries: lines.iter().filter_map(|l| Entry::parse(l)).collect(),
        };
        assert_eq!(trail.login_accessors("auth/kubernetes", "r1"), ["acc1"]);
        let mine = trail.agent_requests("auth/kubernetes", "r1");
        assert_eq!(count(&mine, "database/creds/r1", Some("read")), 1);
        assert_eq!(mine[0].time, parse_rfc3339("2024-01-01T00:00:01Z").unwrap());
    }
}
