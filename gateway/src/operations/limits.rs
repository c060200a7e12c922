//! Open files: what the process may hold and what the configuration needs.
//!
//! Every connection is a descriptor, and so are the log's segments, the
//! state file being written, the tracing index, the listeners and the
//! runtime's own. When the open-file limit is below what the connection
//! caps allow, a flood of idle connections takes every descriptor: accept
//! fails with EMFILE on both listeners and the log cannot open its next
//! segment. So at start `main` raises the soft limit to the hard one and
//! refuses (exit 64, naming the numbers) a configuration whose caps plus a
//! reserve do not fit.

use crate::operations::config::ServerSettings;
use thiserror::Error;

/// Descriptors kept beyond the two connection caps: the log (segment being
/// written, the next one, its directory), the state file and its temporary
/// copy, the tracing index, the two listeners, stdio, the runtime (epoll,
/// eventfds, the blocking pool), certificate and configuration re-reads,
/// a cluster's NATS connection, and one socket a listener accepts only to
/// close it at the cap. Generous on purpose: running short is an outage.
pub const RESERVED_FILES: u64 = 128;

/// The process's open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "server.max_connections ({public}) + server.admin_max_connections ({admin}) + {reserved} descriptors \
     kept for the log, snapshots, the index and the listeners need {needed} open files, but the limit is \
     {soft} (hard limit {hard}): lower the caps or raise the limit (LimitNOFILE=, ulimit -n)"
)]
pub struct TooFewFiles {
    pub public: usize,
    pub admin: usize,
    pub reserved: u64,
    pub needed: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Descriptors the configuration may need at once.
pub fn needed(server: &ServerSettings) -> u64 {
    server.max_connections as u64 + server.admin_max_connections as u64 + RESERVED_FILES
}

/// The current limit.
pub fn current() -> std::io::Result<OpenFiles> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct passed, plain data.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OpenFiles { soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// Raises the soft limit to the hard one; returns the limit in force.
pub fn raise() -> std::io::Result<OpenFiles> {
    let now = current()?;
    if now.soft >= now.hard {
        return Ok(now);
    }
    let raised = libc::rlimit { rlim_cur: now.hard, rlim_max: now.hard };
    // SAFETY: setrlimit reads only the struct passed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    current()
}

/// Whether `server`'s caps fit in `limit`.
pub fn check(server: &ServerSettings, limit: OpenFiles) -> Result<(), TooFewFiles> {
    let needed = needed(server);
    if limit.soft >= needed {
        return Ok(());
    }
    Err(TooFewFiles {
        public: server.max_connections,
        admin: server.admin_max_connections,
        reserved: RESERVED_FILES,
        needed,
        soft: limit.soft,
        hard: limit.hard,
    })
}

/// At start: raise the limit, then check the caps against it.
pub fn fit(server: &ServerSettings) -> Result<OpenFiles, TooFewFiles> {
    // If the limit cannot be read, the check below cannot be made either:
    // then nothing is claimed (u64::MAX) and accept errors are backed off.
    let limit = raise().or_else(|_| current()).unwrap_or(OpenFiles { soft: u64::MAX, hard: u64::MAX });
    check(server, limit)?;
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(public: usize, admin: usize) -> ServerSettings {
        let ms = std::time::Duration::from_millis;
        ServerSettings {
            public_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            max_connections: public,
            admin_max_connections: admin,
            max_connections_per_client: 0,
            admission: crate::operations::config::AdmissionSettings {
                max_in_flight: 1,
                scan_queue_budget: ms(1),
                max_scan_rate: 0,
            },
            header_read_timeout: ms(1),
            body_read_timeout: ms(1),
            admin_body_read_timeout: ms(1),
            max_header_bytes: 8192,
            max_body_bytes: 256,
            max_admin_body_bytes: 256,
            shutdown_grace: ms(1),
        }
    }

    #[test]
    fn caps_plus_the_reserve_must_fit_and_the_refusal_names_the_numbers() {
        let s = server(1000, 16);
        assert_eq!(needed(&s), 1000 + 16 + RESERVED_FILES);
        assert!(check(&s, OpenFiles { soft: 1144, hard: 4096 }).is_ok());
        let e = check(&s, OpenFiles { soft: 1024, hard: 1024 }).unwrap_err();
        let msg = e.to_string();
        for n in ["(1000)", "(16)", "128", "1144", "is 1024", "hard limit 1024"] {
            assert!(msg.contains(n), "{msg} should name {n}");
        }
    }

    #[test]
    fn raising_never_lowers_and_stays_under_the_hard_limit() {
        let before = current().unwrap();
        let after = raise().unwrap();
        assert!(after.soft >= before.soft && after.soft <= after.hard);
        assert_eq!(after.hard, before.hard);
    }
}
