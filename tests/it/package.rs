//! Installing like a service: the systemd unit passes `systemd-analyze
//! verify` and stays within a hardening score, and the Debian package that
//! `scripts/build-deb.sh` builds holds the binary, the unit, its user, a
//! configuration that loads, and maintainer scripts that parse.

use healthgate_tests::healthgate_bin;
use healthgate_tests::tools::{run_bounded, system_tool, tail, workspace_root};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The shipped unit, with `ExecStart` pointing at the binary under test
/// (verify requires it to exist).
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("config/systemd/healthgate.service")).unwrap();
    for line in [
        "User=healthgate",
        "ProtectSystem=strict",
        "StateDirectory=healthgate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "PrivateTmp=yes",
        "ExecStart=/usr/bin/healthgate serve --config /etc/healthgate/healthgate.toml",
    ] {
        assert!(text.contains(line), "the unit lacks {line:?}");
    }
    let path = dir.join("healthgate.service");
    std::fs::write(&path, text.replace("/usr/bin/healthgate", healthgate_bin().to_str().unwrap())).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let analyze = system_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = run_bounded(Command::new(&analyze).arg("verify").arg(&unit), Duration::from_secs(60));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        tail(&out.stdout),
        tail(&out.stderr)
    );
    // The exposure score, in tenths: 20 is 2.0 ("OK" goes up to 3.9).
    let out = run_bounded(
        Command::new(&analyze).args(["security", "--offline=yes", "--threshold=20"]).arg(&unit),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "exposure over 2.0:\n{}{}", tail(&out.stdout), tail(&out.stderr));
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new(system_tool("dpkg-deb", "dpkg")).args(args).arg(deb).output().unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_holds_the_binary_the_unit_and_a_configuration_that_loads() {
    let out_dir = tempfile::tempdir().unwrap();
    // Packages the debug build the suite has already made; the script makes
    // release packages the same way otherwise.
    let mut build = Command::new(workspace_root().join("scripts/build-deb.sh"));
    build.args(["--profile", "dev", "--no-build", "--fast", "--quiet", "--output"]).arg(out_dir.path());
    let out = run_bounded(&mut build, Duration::from_secs(600));
    assert!(out.status.success(), "scripts/build-deb.sh: {}{}", tail(&out.stdout), tail(&out.stderr));
    let version = env!("CARGO_PKG_VERSION");
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    assert!(deb.file_name().unwrap().to_str().unwrap().starts_with(&format!("healthgate_{version}-1_")), "{deb:?}");

    let listing = dpkg_deb(&["-c"], &deb);
    let mode_of = |path: &str| -> Option<String> {
        listing.lines().find(|l| l.ends_with(&format!(" .{path}"))).map(|l| l[..10].to_owned())
    };
    for (path, mode) in [
        ("/usr/bin/healthgate", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/healthgate.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/healthgate.conf", "-rw-r--r--"),
        ("/etc/healthgate/healthgate.toml", "-rw-r-----"),
        ("/etc/healthgate/trust.toml", "-rw-r-----"),
        ("/usr/share/doc/healthgate/examples/healthgate.toml", "-rw-r--r--"),
        ("/usr/share/doc/healthgate/OPERATIONS.md", "-rw-r--r--"),
        ("/usr/share/healthgate/prometheus/healthgate.rules.yml", "-rw-r--r--"),
        ("/usr/share/healthgate/grafana/healthgate.json", "-rw-r--r--"),
    ] {
        assert_eq!(mode_of(path).as_deref(), Some(mode), "{path} in\n{listing}");
    }
    assert_eq!(dpkg_deb(&["-f"], &deb).lines().find(|l| l.starts_with("Package:")), Some("Package: healthgate"));
    assert!(dpkg_deb(&["-f"], &deb).contains(&format!("Version: {version}-1")));

    // What is inside is what the repository holds, and it works.
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(system_tool("dpkg-deb", "dpkg")).arg("-x").arg(&deb).arg(root.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let r = root.path();
    assert_eq!(
        std::fs::read(r.join("usr/lib/systemd/system/healthgate.service")).unwrap(),
        std::fs::read(workspace_root().join("config/systemd/healthgate.service")).unwrap()
    );
    let v = Command::new(r.join("usr/bin/healthgate")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("healthgate {version}"));
    let config = healthgate::operations::config::Config::load(&r.join("etc/healthgate/healthgate.toml"))
        .unwrap_or_else(|e| panic!("the packaged configuration does not load: {e}"));
    let log = config.log.expect("the packaged configuration logs");
    assert_eq!(log.dir, Path::new("/var/lib/healthgate"), "the log must be in the unit's StateDirectory");
    let sysusers = std::fs::read_to_string(r.join("usr/lib/sysusers.d/healthgate.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u healthgate ")), "{sysusers}");

    // Maintainer scripts: cargo-deb filled its fragments in, and they parse.
    let control = tempfile::tempdir().unwrap();
    let out = Command::new(system_tool("dpkg-deb", "dpkg")).arg("-e").arg(&deb).arg(control.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(conffiles.contains("/etc/healthgate/healthgate.toml") && conffiles.contains("/etc/healthgate/trust.toml"));
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    for want in ["systemd-sysusers", "healthgate.conf", "daemon-reload", "chown root:healthgate /etc/healthgate"] {
        assert!(postinst.contains(want), "postinst lacks {want}:\n{postinst}");
    }
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.path().join(script);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("#DEBHELPER#"), "{script} kept the placeholder");
        let sh = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(sh.status.success(), "{script} does not parse: {}", String::from_utf8_lossy(&sh.stderr));
    }
}
