//! The API contract, `docs/openapi.yaml`, held against the real binary:
//! the gateway serves the document it was built with, and schemathesis
//! fuzzes every operation of both listeners with each role's key (and with
//! none), failing on any server error, any answer whose body, status code
//! or content type the document does not describe.

use crate::cli::{http, Demo};
use healthgate::operations::auth::Role;
use healthgate_tests::tools::{run_bounded, tail, venv_tool, workspace_root};
use std::process::Command;
use std::time::Duration;

/// Examples per operation and phase: enough to reach every documented
/// status on each run, small enough that the whole contract test takes
/// well under a minute.
const MAX_EXAMPLES: &str = "8";

#[test]
fn the_gateway_serves_its_contract_and_keeps_it_under_fuzzing() {
    let _heavy = healthgate_tests::tools::heavy();
    let schemathesis = venv_tool("schemathesis");
    let spec = workspace_root().join("docs/openapi.yaml");
    let document = std::fs::read_to_string(&spec).unwrap();
    assert!(
        document.contains(&format!("\n  version: {}\n", env!("CARGO_PKG_VERSION"))),
        "docs/openapi.yaml's info.version is not the crate's version {}",
        env!("CARGO_PKG_VERSION")
    );

    let d = Demo::start();
    let admin = d.env.admin_url.trim_start_matches("http://").to_owned();
    let served = http(&admin, "GET", "/openapi.yaml", "", "");
    assert!(served.starts_with("HTTP/1.1 200") && served.contains("content-type: application/yaml"), "{served:.200}");
    assert_eq!(served.split_once("\r\n\r\n").map(|(_, b)| b), Some(document.as_str()), "served document differs");
    assert!(http(&d.public(), "GET", "/openapi.yaml", "", "").starts_with("HTTP/1.1 404"), "public listener");

    // Each run: a listener, the operations on it, and a key: the role that
    // may call everything there, a role that is refused some of it (403),
    // and no key (401), so that refusals are held to the document too. (The
    // operator role may call a subset of what the authority may.)
    let runs = [
        (&d.env.admin_url, "admin", Some(Role::Authority)),
        (&d.env.admin_url, "admin", None),
        (&d.env.admin_url, "admin", Some(Role::Turnstile)),
        (&d.env.public_url, "public", Some(Role::Inspector)),
        (&d.env.public_url, "public", Some(Role::Turnstile)),
        (&d.env.public_url, "public", None),
    ];
    let work = tempfile::tempdir().unwrap();
    for (url, tag, role) in runs {
        let mut cmd = Command::new(&schemathesis);
        // Its example database goes to the working directory: keep it out
        // of the repository.
        cmd.current_dir(work.path()).args(["--no-color", "run"]).arg(&spec).args([
            "--url",
            url,
            "--include-tag",
            tag,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "1",
            "--request-timeout",
            "10",
        ]);
        if let Some(r) = role {
            cmd.args(["--header", &format!("Authorization: Bearer {}", d.env.api_key(r))]);
        }
        let out = run_bounded(&mut cmd, Duration::from_secs(120));
        let who = role.map_or("no key", |r| r.as_str());
        assert!(
            out.status.success(),
            "schemathesis against the {tag} listener with {who} found a breach of docs/openapi.yaml:\n{}\n{}",
            tail(&out.stdout),
            tail(&out.stderr)
        );
        // A run that tested nothing would pass silently.
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(" passed") && !text.contains("Tested: 0"), "schemathesis tested nothing:\n{text}");
    }
}
