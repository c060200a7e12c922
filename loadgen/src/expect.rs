//! Expected answers and the check of every response against them.
//!
//! The load generator is a client of the wire contract (`POST /v1/scan`
//! answers `{"decision", "color", "reason", "holder", "epoch"}`); it takes
//! the reasons and their wire names from the core, the one place they are
//! spelled.

use healthgate_core::{Color, HolderId};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// The reasons of the scan API: the core's, whose wire names are the
/// contract (a renamed reason would fail the core's pinned-code tests).
pub use healthgate_core::policy::Reason;

/// The colour the answer must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Is(Color),
    /// The token failed or the holder is not known: `"unknown"`.
    Unknown,
    /// A fever reading turns a green holder yellow as part of the decision;
    /// the contract does not say which of the two the answer shows.
    GreenOrYellow,
}

impl Shown {
    fn admits(self, color: &str) -> bool {
        match self {
            Shown::Is(c) => c.as_str() == color,
            Shown::Unknown => color == "unknown",
            Shown::GreenOrYellow => color == "green" || color == "yellow",
        }
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Is(c) => f.write_str(c.as_str()),
            Shown::Unknown => f.write_str("unknown"),
            Shown::GreenOrYellow => f.write_str("green|yellow"),
        }
    }
}

/// What a request must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Any 200 will do (holder lookups; baselines run with `--no-check`).
    Status200,
    Decision {
        pass: bool,
        reason: Reason,
        color: Shown,
        /// The holder the answer must name (masked), when the token verified.
        holder: Option<HolderId>,
    },
}

impl Expect {
    pub fn pass(holder: HolderId) -> Expect {
        Expect::Decision { pass: true, reason: Reason::Ok, color: Shown::Is(Color::Green), holder: Some(holder) }
    }

    pub fn deny(reason: Reason, color: Shown, holder: Option<HolderId>) -> Expect {
        Expect::Decision { pass: false, reason, color, holder }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Status200 => f.write_str("200"),
            Expect::Decision { pass, reason, color, holder } => {
                let decision = if *pass { "pass" } else { "deny" };
                write!(f, "{decision}/{}/{color}", reason.as_str())?;
                match holder {
                    Some(h) => write!(f, " holder {}", h.masked()),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The scan answer, borrowed from the body where it can be.
#[derive(Debug, Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    decision: Cow<'a, str>,
    #[serde(borrow)]
    color: Cow<'a, str>,
    #[serde(borrow)]
    reason: Cow<'a, str>,
    #[serde(borrow, default)]
    holder: Option<Cow<'a, str>>,
    // Present on every answer; its value is the gateway's business.
    #[allow(dead_code)]
    epoch: u64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Pass,
    Deny,
    /// A 200 that was not read as a decision (lookups, `--no-check`).
    Ok,
    /// Any other status.
    Status(u16),
    /// Connect, write or read failed.
    Transport,
    /// No answer within `--timeout`.
    Timeout,
    /// Never sent: the backlog was full (the target fell too far behind).
    Overflow,
}

impl Outcome {
    pub const NAMES: [&'static str; 7] = ["pass", "deny", "ok", "http_error", "transport_error", "timeout", "overflow"];

    pub fn index(self) -> usize {
        match self {
            Outcome::Pass => 0,
            Outcome::Deny => 1,
            Outcome::Ok => 2,
            Outcome::Status(_) => 3,
            Outcome::Transport => 4,
            Outcome::Timeout => 5,
            Outcome::Overflow => 6,
        }
    }

    pub fn is_error(self) -> bool {
        self.index() >= 3
    }

    /// The HTTP status of an answer: 200 for a read decision, `None` when
    /// nothing came back.
    pub fn status(self) -> Option<u16> {
        match self {
            Outcome::Pass | Outcome::Deny | Outcome::Ok => Some(200),
            Outcome::Status(s) => Some(s),
            Outcome::Transport | Outcome::Timeout | Outcome::Overflow => None,
        }
    }

    /// An answer came back, so its latency is a response time.
    pub fn answered(self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Deny | Outcome::Ok | Outcome::Status(_))
    }
}

/// Classifies one answer and, when `check` is on, compares it with `expect`.
/// Returns the outcome and, on a mismatch, what differed.
pub fn check(expect: &Expect, status: u16, body: &[u8], check: bool) -> (Outcome, Option<String>) {
    if status != 200 {
        return (Outcome::Status(status), None);
    }
    let Expect::Decision { pass, reason, color, holder } = expect else {
        return (Outcome::Ok, None);
    };
    if !check {
        return (Outcome::Ok, None);
    }
    let reply: Reply = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let got = String::from_utf8_lossy(&body[..body.len().min(200)]);
            return (Outcome::Ok, Some(format!("expected {expect}, got an unreadable answer ({e}): {got}")));
        }
    };
    let outcome = match &*reply.decision {
        "pass" => Outcome::Pass,
        "deny" => Outcome::Deny,
        _ => Outcome::Ok,
    };
    let holder_ok = match (holder, &reply.holder) {
        (None, _) => true,
        (Some(h), Some(got)) => *got == h.masked(),
        (Some(_), None) => false,
    };
    let ok = outcome == if *pass { Outcome::Pass } else { Outcome::Deny }
        && reply.reason == reason.as_str()
        && color.admits(&reply.color)
        && holder_ok;
    let mismatch = (!ok).then(|| {
        let got_holder = reply.holder.as_deref().map(|h| format!(" holder {h}")).unwrap_or_default();
        format!("expected {expect}, got {}/{}/{}{got_holder}", reply.decision, reply.reason, reply.color)
    });
    (outcome, mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> HolderId {
        HolderId([0xab; 16])
    }

    #[test]
    fn pass_and_deny_are_checked_field_by_field() {
        let pass = r#"{"decision":"pass","color":"green","reason":"ok","holder":"abab…abab","epoch":3}"#.as_bytes();
        assert_eq!(check(&Expect::pass(h()), 200, pass, true), (Outcome::Pass, None));
        // Same answer, other holder: a mismatch.
        let other = Expect::pass(HolderId([1; 16]));
        assert!(check(&other, 200, pass, true).1.unwrap().contains("holder abab…abab"));
        let fever =
            r#"{"decision":"deny","color":"yellow","reason":"fever","holder":"abab…abab","epoch":3}"#.as_bytes();
        let want = Expect::deny(Reason::Fever, Shown::GreenOrYellow, Some(h()));
        assert_eq!(check(&want, 200, fever, true), (Outcome::Deny, None));
        let want = Expect::deny(Reason::NotGreen, Shown::Is(Color::Yellow), Some(h()));
        let (outcome, m) = check(&want, 200, fever, true);
        assert_eq!(outcome, Outcome::Deny);
        assert_eq!(
            m.unwrap(),
            "expected deny/not_green/yellow holder abab…abab, got deny/fever/yellow holder abab…abab"
        );
    }

    #[test]
    fn token_failures_show_unknown_and_need_no_holder() {
        let body = br#"{"decision":"deny","color":"unknown","reason":"malformed","epoch":1}"#;
        let want = Expect::deny(Reason::Malformed, Shown::Unknown, None);
        assert_eq!(check(&want, 200, body, true), (Outcome::Deny, None));
        let want = Expect::deny(Reason::Malformed, Shown::Is(Color::Green), None);
        assert!(check(&want, 200, body, true).1.is_some());
    }

    #[test]
    fn statuses_and_unchecked_answers() {
        assert_eq!(check(&Expect::Status200, 200, b"whatever", true), (Outcome::Ok, None));
        assert_eq!(check(&Expect::pass(h()), 503, b"", true), (Outcome::Status(503), None));
        assert_eq!(check(&Expect::pass(h()), 200, b"not json", false), (Outcome::Ok, None));
        assert!(check(&Expect::pass(h()), 200, b"not json", true).1.unwrap().contains("unreadable"));
        assert!(Outcome::Status(500).is_error() && Outcome::Overflow.is_error() && !Outcome::Deny.is_error());
    }
}
