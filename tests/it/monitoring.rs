//! The operator's monitoring, proven: the Prometheus rules pass their unit
//! tests under promtool, every alert has a test and a runbook entry, and a
//! real Prometheus scraping a demo under load finds data for every
//! expression of the rules and of the Grafana dashboard, so that none is a
//! typo that silently shows nothing.

use crate::cli::Demo;
use bytes::Bytes;
use healthgate::operations::auth::Role;
use healthgate_tests::promql::selectors;
use healthgate_tests::tools::{free_port, run_bounded, system_tool, tail, wait_until, workspace_root, KillOnDrop};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn promtool(args: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(system_tool("promtool", "prometheus"));
    cmd.args(args);
    // The rule tests take a few CPU-seconds; the bound leaves room for a
    // machine shared with builds.
    run_bounded(&mut cmd, Duration::from_secs(300))
}

/// `- alert: Name` lines of a rules file.
fn alert_names(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(|n| n.trim().to_owned()).collect()
}

#[test]
fn prometheus_rules_pass_their_unit_tests_and_each_alert_has_a_runbook() {
    let dir = workspace_root().join("config/prometheus");
    let rules = dir.join("healthgate.rules.yml");
    for args in [
        vec![Path::new("check"), Path::new("rules"), &rules],
        vec![Path::new("check"), Path::new("config"), &dir.join("prometheus.yml")],
        vec![Path::new("test"), Path::new("rules"), &dir.join("tests/healthgate.rules.test.yml")],
    ] {
        let out = promtool(&args);
        assert!(out.status.success(), "promtool {args:?}:\n{}{}", tail(&out.stdout), tail(&out.stderr));
    }
    let text = std::fs::read_to_string(&rules).unwrap();
    let tests = std::fs::read_to_string(dir.join("tests/healthgate.rules.test.yml")).unwrap();
    let runbook = std::fs::read_to_string(workspace_root().join("docs/OPERATIONS.md")).unwrap();
    let names = alert_names(&text);
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name} has no promtool unit test");
    }
    // Every alert has a runbook annotation, and each points at a heading of
    // OPERATIONS.md.
    let anchors: Vec<&str> =
        text.lines().filter_map(|l| l.trim().strip_prefix("runbook: docs/OPERATIONS.md#")).collect();
    assert_eq!(anchors.len(), names.len(), "an alert lacks its runbook annotation");
    for anchor in anchors {
        let heading = runbook
            .lines()
            .any(|l| l.strip_prefix("### ").is_some_and(|h| h.trim().to_lowercase().replace(' ', "-") == anchor));
        assert!(heading, "docs/OPERATIONS.md has no heading for #{anchor}");
    }
}

/// A Prometheus server of our own, stopped (by its process id) on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second and evaluating the
    /// shipped rules every second. Prometheus cannot listen on port 0 and
    /// tell us the port, so a free port is picked and the start retried if
    /// another process took it meanwhile.
    async fn start(target: &str) -> Prometheus {
        let bin = system_tool("prometheus", "prometheus");
        let rules = workspace_root().join("config/prometheus/healthgate.rules.yml");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: healthgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join("prometheus.log");
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut child = child;
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if get(&format!("{url}/-/ready")).await.is_some_and(|(s, _)| s == 200) {
                    return Prometheus { child, url, _dir: dir };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("prometheus did not become ready:\n{last_log}");
    }

    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(expr));
        let (status, body) = get(&url).await.ok_or("no answer")?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{status}: {e}"))?;
        if v["status"] != "success" {
            return Err(format!("{status}: {}", v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn rules(&self) -> Vec<Value> {
        let Some((_, body)) = get(&format!("{}/api/v1/rules", self.url)).await else { return Vec::new() };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str) -> Option<(u16, Bytes)> {
    let client = healthgate_tests::client();
    let req = http::Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.ok()?.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables, as the dashboard would fill them in for this demo.
fn fill_variables(expr: &str) -> String {
    let e = expr.replace("$__rate_interval", "1m").replace("$job", "healthgate").replace("$instance", ".+");
    assert!(!e.contains('$'), "unknown Grafana variable in {expr}");
    e
}

/// Every query of the dashboard: panel targets, and the variables'
/// `label_values(selector, label)` as `count by (label) (selector)`.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                for (k, x) in m {
                    if k == "templating" {
                        for var in x["list"].as_array().into_iter().flatten() {
                            if let Some(q) = var["query"]["query"].as_str() {
                                let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')'));
                                let (sel, label) = inner.and_then(|i| i.rsplit_once(',')).expect("label_values(...)");
                                out.push(format!("count by ({}) ({sel})", label.trim()));
                            }
                        }
                    } else {
                        walk(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// What must hold before the deadline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    /// The expression returns at least one sample.
    Data(String),
    /// The expression is valid (an alert condition is empty while all is
    /// well); its selectors are checked as `Data` on their own.
    Valid(String),
    /// The rule evaluated without an error.
    Healthy(String),
}

#[test]
fn every_rule_and_dashboard_expression_returns_data_on_a_live_prometheus() {
    // Held for the whole run, outside the runtime: nothing awaits the lock.
    let _heavy = healthgate_tests::tools::heavy();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(live_check());
}

async fn live_check() {
    let d = Demo::start();
    let admin = d.env.admin_url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&admin).await;

    // Give every part something to show: an authority batch, a reload,
    // and a short load of scans with every kind of answer.
    let bin = healthgate_tests::healthgate_bin();
    let push = Command::new(&bin)
        .args(["push", "--key", d.env.authority_key.to_str().unwrap(), "--admin", &d.env.admin_url])
        .args(["--api-key", d.env.api_key(Role::Authority)])
        // A holder outside the population, so that the load's expectations hold.
        .args(["--set", &format!("{}=red", d.env.population.stranger(1))])
        .output()
        .unwrap();
    assert!(push.status.success(), "{push:?}");
    let reload = crate::cli::http(&admin, "POST", "/v1/admin/reload", d.env.api_key(Role::Operator), "");
    assert!(reload.starts_with("HTTP/1.1 200"), "{reload}");
    let env_json = d.env.config.with_file_name("env.json");
    let mut load = Command::new(bin.with_file_name("healthgate-loadgen"))
        .arg("--env")
        .arg(&env_json)
        .args(["--rate", "30", "--duration", "10s", "--connections", "4", "--threads", "1", "--json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("start healthgate-loadgen");

    // What to check, from the rules Prometheus loaded and from the dashboard.
    let mut rules = Vec::new();
    for _ in 0..50 {
        rules = prometheus.rules().await;
        if !rules.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let alerts =
        alert_names(&std::fs::read_to_string(workspace_root().join("config/prometheus/healthgate.rules.yml")).unwrap());
    assert_eq!(
        rules.iter().filter(|r| r["type"] == "alerting").count(),
        alerts.len(),
        "Prometheus did not load every alert"
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("config/grafana/healthgate.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut checks = std::collections::BTreeSet::new();
    for r in &rules {
        let (name, query) = (r["name"].as_str().unwrap().to_owned(), r["query"].as_str().unwrap().to_owned());
        checks.insert(Check::Healthy(name.clone()));
        if r["type"] == "recording" {
            checks.insert(Check::Data(query.clone()));
            checks.insert(Check::Data(name));
        } else {
            checks.insert(Check::Valid(query.clone()));
        }
        checks.extend(selectors(&query).into_iter().map(Check::Data));
    }
    let panels = dashboard_queries(&dashboard);
    assert!(panels.len() >= 30, "{panels:?}");
    for q in panels {
        let q = fill_variables(&q);
        checks.extend(selectors(&q).into_iter().map(Check::Data));
        checks.insert(Check::Data(q));
    }
    // And the load is real: scans were scraped.
    checks.insert(Check::Data("sum(healthgate_scans_total) > 100".into()));

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut failing: BTreeMap<Check, String> = BTreeMap::new();
    loop {
        failing.clear();
        let health: BTreeMap<String, (String, String)> = prometheus
            .rules()
            .await
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (s("name"), (s("health"), s("lastError")))
            })
            .collect();
        for c in &checks {
            let verdict = match c {
                Check::Data(e) => match prometheus.query(e).await {
                    Ok(v) if v.is_empty() => Err("no data".to_owned()),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                },
                Check::Valid(e) => prometheus.query(e).await.map(|_| ()),
                Check::Healthy(n) => match health.get(n) {
                    Some((h, _)) if h == "ok" => Ok(()),
                    Some((h, err)) => Err(format!("health {h} {err}")),
                    None => Err("not loaded".to_owned()),
                },
            };
            if let Err(why) = verdict {
                failing.insert(c.clone(), why);
            }
        }
        if failing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        failing.is_empty(),
        "{} of {} checks failed on a live Prometheus:\n{}",
        failing.len(),
        checks.len(),
        failing.iter().map(|(c, why)| format!("  {c:?}: {why}")).collect::<Vec<_>>().join("\n")
    );
    let out = wait_until(&mut load.0, Instant::now() + Duration::from_secs(60));
    let mut summary = String::new();
    if let Some(mut s) = load.0.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut summary);
    }
    assert!(out.is_some_and(|s| s.success()), "the load generator failed: {summary}");
    let summary: Value = serde_json::from_str(&summary).expect("loadgen's JSON summary");
    assert_eq!(summary["mismatches"], 0, "{summary}");
}
