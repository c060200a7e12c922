//! `healthgate demo`: a complete gateway on its embedded defaults.
//!
//! Writes into a directory everything a real deployment has (issuer and
//! authority keys, a trust list, a configuration with two regions and four
//! checkpoint classes, a seeded population covering every colour) plus
//! `env.json`, the manifest that the load generator and the tests read. No
//! external service is involved.

use crate::clock::UnixSecs;
use crate::color::Color;
use crate::durability::state_file as snapshot;
use crate::holder::HolderId;
use crate::operations::auth::{self, Role};
use crate::population::{Mix, Population};
use crate::state::HolderState;
use crate::store::Store;
use crate::token::KeyId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub size: u64,
    pub seed: u64,
    pub mix: Mix,
    /// Serve both listeners over HTTPS with a certificate from a private
    /// CA made for the demo (`DIR/tls/ca.pem`, named in env.json).
    pub tls: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { size: 100_000, seed: 1, mix: Mix::default(), tls: false }
    }
}

/// The manifest written to `DIR/env.json`. Paths are absolute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Env {
    pub public_url: String,
    pub admin_url: String,
    pub api_keys: BTreeMap<String, String>,
    /// Trusted issuer key (kid HB01) that signs the population's codes.
    pub issuer_key: PathBuf,
    /// A second trusted issuer (the national platform, kid NHC1).
    pub national_key: PathBuf,
    /// Same key id as `issuer_key`, another secret: its codes are forged.
    pub forged_key: PathBuf,
    /// A key whose id is in no trust list.
    pub untrusted_key: PathBuf,
    pub authority_key: PathBuf,
    pub trust: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub checkpoints: BTreeMap<String, Vec<String>>,
    pub holders: BTreeMap<String, Vec<HolderId>>,
    pub population: Population,
    /// The CA that signed the demo's certificate, when it serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl Env {
    pub fn load(path: &Path) -> std::io::Result<Env> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("env.json");
        let tmp = dir.join("env.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serialisable"))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    pub fn api_key(&self, role: Role) -> &str {
        self.api_keys.get(role.as_str()).map_or("", String::as_str)
    }
}

const CHECKPOINTS: &[(&str, &str, &str, Option<&str>)] = &[
    ("wuhan-metro-hankou-1", "metro", "wuhan", Some("wuhan-metro-hankou")),
    ("wuhan-metro-hankou-2", "metro", "wuhan", Some("wuhan-metro-hankou")),
    ("wuhan-metro-wuchang-1", "metro", "wuhan", None),
    ("ningbo-metro-east-1", "metro", "ningbo", None),
    ("wuhan-rail-hankou", "rail", "wuhan", None),
    ("ningbo-rail-south", "rail", "ningbo", None),
    ("wuhan-road-g4", "road", "wuhan", None),
    ("wuhan-clinic-jinyintan", "clinic", "wuhan", None),
];

fn key(dir: &Path, name: &str, kid: &str) -> std::io::Result<(PathBuf, ed25519_dalek::SigningKey)> {
    let prefix = dir.join(name);
    for ext in ["key", "pub"] {
        let _ = std::fs::remove_file(prefix.with_extension(ext));
    }
    let k = crate::operations::keyfiles::generate();
    let kid: KeyId = kid.parse().expect("demo key ids are valid");
    let (secret, _) = crate::operations::keyfiles::write_keypair(&prefix, kid, &k).map_err(std::io::Error::other)?;
    Ok((secret, k))
}

/// Why a folder cannot be resumed as a demo.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{dir} holds a gateway's data but no env.json, so it is not a demo this command can resume; \
         pass --fresh to delete it and start a new demo there"
    )]
    NotADemo { dir: PathBuf },
    #[error("{dir} holds a demo {what}; pass --fresh to delete it and start a new demo with these options")]
    Differs { dir: PathBuf, what: String },
    #[error("{dir}: env.json names {path}, which is missing; pass --fresh to start a new demo there")]
    Missing { dir: PathBuf, path: PathBuf },
}

/// What the user asked for on the command line: `None` where a flag was
/// not given (a resumed demo keeps what it was made with).
#[derive(Debug, Clone, Copy, Default)]
pub struct Requested {
    pub size: Option<u64>,
    pub seed: Option<u64>,
    pub tls: bool,
}

/// The demo already in `dir`, if there is one, for `healthgate demo` to
/// resume: its keys, configuration, state, log and index are reused as
/// they are. `Ok(None)` when `dir` holds no demo and no gateway data (a new
/// demo may be written there). A folder with a gateway's data but no
/// manifest, or a demo made with other options than `requested`, is an
/// error: nothing is deleted without `--fresh`.
pub fn existing(dir: &Path, requested: &Requested) -> Result<Option<Env>, ResumeError> {
    let env_path = dir.join("env.json");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ResumeError::Io { path, source }
    };
    let env = match Env::load(&env_path) {
        Ok(env) => env,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // `prepare` writes env.json only once it serves, so a folder
            // without one never acknowledged anything, unless a gateway's
            // data directory says otherwise.
            return if dir.join("data").exists() {
                Err(ResumeError::NotADemo { dir: dir.to_owned() })
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(io(&env_path)(e)),
    };
    for path in [&env.config, &env.trust, &env.issuer_key, &env.authority_key] {
        if !path.exists() {
            return Err(ResumeError::Missing { dir: dir.to_owned(), path: path.clone() });
        }
    }
    let differs = |what: String| Err(ResumeError::Differs { dir: dir.to_owned(), what });
    if let Some(size) = requested.size.filter(|s| *s != env.population.size) {
        return differs(format!("of {} holders, not {size}", env.population.size));
    }
    if let Some(seed) = requested.seed.filter(|s| *s != env.population.seed) {
        return differs(format!("seeded with {}, not {seed}", env.population.seed));
    }
    if requested.tls && env.ca_cert.is_none() {
        return differs("served over plain HTTP, not HTTPS".to_owned());
    }
    Ok(Some(env))
}

/// Writes keys, trust list, configuration and state into `dir` (replacing a
/// previous demo there, its log and tracing index included: `healthgate demo
/// --fresh`) and returns the manifest; the caller fills in the URLs once it
/// has bound, then writes it with [`Env::write`].
pub fn prepare(dir: &Path, opts: &DemoOptions, public: &str, admin: &str, now: UnixSecs) -> std::io::Result<Env> {
    std::fs::create_dir_all(dir.join("keys"))?;
    let dir = dir.canonicalize()?;
    // A new demo starts from its new population, not an old run's log; the
    // old manifest goes first, so that an interrupted start is never
    // resumed as the old demo with new keys.
    for file in ["env.json", "env.json.tmp"] {
        match std::fs::remove_file(dir.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(dir.join("data")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let keys = dir.join("keys");
    let (issuer_key, hubei) = key(&keys, "hubei", "HB01")?;
    let (national_key, national) = key(&keys, "national", "NHC1")?;
    let (forged_key, _) = key(&keys, "forged-hubei", "HB01")?;
    let (untrusted_key, _) = key(&keys, "untrusted", "XX01")?;
    let (authority_key, authority) = key(&keys, "authority", "AUTH")?;

    let hexpk = |k: &ed25519_dalek::SigningKey| hex::encode(k.verifying_key().to_bytes());
    let trust = format!(
        r#"# Trust list: issuers whose codes are accepted, by key id.
[[issuers]]
id = "hubei"
name = "Hubei Provincial Health Commission"
[[issuers.keys]]
kid = "HB01"
public_key = "{}"
not_before = "2020-01-01T00:00:00Z"
not_after = "2099-12-31T23:59:59Z"

[[issuers]]
id = "national"
name = "National health information platform"
[[issuers.keys]]
kid = "NHC1"
public_key = "{}"
not_before = "2020-01-01T00:00:00Z"
not_after = "2099-12-31T23:59:59Z"
"#,
        hexpk(&hubei),
        hexpk(&national)
    );
    let trust_path = dir.join("trust.toml");
    std::fs::write(&trust_path, trust)?;

    let mut api_keys = BTreeMap::new();
    let mut key_lines = String::new();
    for role in Role::ALL {
        let k = auth::generate_key();
        key_lines.push_str(&format!("{} = [\"{}\"]\n", role.as_str(), auth::hash_key(&k)));
        api_keys.insert(role.as_str().to_owned(), k);
    }
    let mut checkpoint_lines = String::new();
    let mut checkpoints: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, class, region, group) in CHECKPOINTS {
        checkpoint_lines.push_str(&format!(
            "\n[[checkpoints]]\nid = \"{id}\"\nclass = \"{class}\"\nregion = \"{region}\"\n{}",
            group.map(|g| format!("group = \"{g}\"\n")).unwrap_or_default()
        ));
        checkpoints.entry((*class).to_owned()).or_default().push((*id).to_owned());
    }
    let config = format!(
        r#"# healthgate demo configuration (written by `healthgate demo`).
trust = "trust.toml"
state = "state.hgs"
clock_skew_s = 30
default_region = "wuhan"

# The health authority signs colour updates and revocations with this key.
[[authority.keys]]
kid = "AUTH"
public_key = "{authority_pk}"

[revocations]
filter_capacity = 100000
filter_fp_rate = 0.001

[server]
public_addr = "{public}"
admin_addr = "{admin}"

# SHA-256 hashes of the API keys; the keys themselves are in env.json.
[api_keys]
{key_lines}
# Wuhan checked temperature twice a day and quarantined for 14 days;
# Ningbo used 7 days of quarantine for yellow.
[regions.wuhan]
utc_offset = "+08:00"
fever_threshold_c = 37.3
health_record_validity_s = 43200
fever_quarantine_s = 1209600
accept_issuers = ["hubei", "national"]

[regions.ningbo]
utc_offset = "+08:00"
fever_threshold_c = 37.3
health_record_validity_s = 86400
fever_quarantine_s = 604800
accept_issuers = ["hubei", "national"]

[classes.metro]
admit = ["green"]
anti_passback_s = 300

[classes.rail]
admit = ["green"]
requires_temperature = true
anti_passback_s = 600

[classes.road]
admit = ["green"]
requires_temperature = true

# A fever clinic admits yellow holders and people with fever.
[classes.clinic]
admit = ["green", "yellow"]
requires_temperature = true
admit_fever = true
{checkpoint_lines}"#,
        authority_pk = hexpk(&authority)
    );
    let config_path = dir.join("healthgate.toml");
    let ca_cert = if opts.tls { Some(write_tls(&dir, public, admin, now)?) } else { None };
    let config = if opts.tls {
        format!("{config}\n# HTTPS on both listeners; the certificate is re-read on reload.\n[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n")
    } else {
        config
    };
    std::fs::write(&config_path, config)?;

    let population = Population { seed: opts.seed, size: opts.size, mix: opts.mix };
    let store = Store::with_capacity(opts.size as usize + 8);
    let mut holders: BTreeMap<String, Vec<HolderId>> = BTreeMap::new();
    for (i, (id, color)) in population.iter().enumerate() {
        store.insert(id, HolderState::new(color, now, Some(now)), vec![]);
        let samples = holders.entry(color.as_str().to_owned()).or_default();
        if samples.len() < 5 && i < 1_000_000 {
            samples.push(id);
        }
    }
    // Greens whose last health record is older than any region's window
    // (rule 4): they show `no_health_record`. Not part of the population.
    let stale = now.saturating_sub(7 * 24 * 3600);
    let no_record: Vec<HolderId> = (0..5).map(|i| population.stranger(u64::MAX - i)).collect();
    for id in &no_record {
        store.insert(*id, HolderState::new(Color::Green, stale, Some(stale)), vec![]);
    }
    holders.insert("green_no_record".into(), no_record);
    let state_path = dir.join("state.hgs");
    snapshot::write_store(&state_path, &store, &snapshot::Meta::default(), || Ok(())).map_err(std::io::Error::other)?;

    Ok(Env {
        public_url: String::new(),
        admin_url: String::new(),
        api_keys,
        issuer_key,
        national_key,
        forged_key,
        untrusted_key,
        authority_key,
        trust: trust_path,
        config: config_path,
        state: state_path,
        checkpoints,
        holders,
        population,
        ca_cert,
    })
}

/// A private CA and a certificate for localhost, 127.0.0.1 and the
/// listeners' hosts, valid for a year, under `DIR/tls/`; returns the CA
/// file's path.
fn write_tls(dir: &Path, public: &str, admin: &str, now: UnixSecs) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let host = |a: &str| a.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_owned());
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for h in [host(public), host(admin)].into_iter().flatten() {
        if !h.is_empty() && h != "0.0.0.0" && !names.contains(&h) {
            names.push(h);
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let (ca, cert, key) = crate::operations::tls::generate(&names, now, 365).map_err(std::io::Error::other)?;
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    std::fs::write(tls.join("ca.pem"), ca)?;
    std::fs::write(tls.join("cert.pem"), cert)?;
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tls.join("key.pem"))?;
    std::io::Write::write_all(&mut f, key.as_bytes())?;
    Ok(tls.join("ca.pem"))
}

/// The walkthrough printed once the demo serves: one command per decision.
pub fn walkthrough(env: &Env, exe: &str) -> String {
    let first = |c: &str| env.holders.get(c).and_then(|v| v.first()).map(|h| h.to_hex()).unwrap_or_default();
    let metro = &env.checkpoints["metro"][0];
    let rail = &env.checkpoints["rail"][0];
    let key = env.api_key(Role::Turnstile);
    let issuer = env.issuer_key.display();
    let curl = match &env.ca_cert {
        Some(ca) => format!("curl -s --cacert {}", ca.display()),
        None => "curl -s".to_owned(),
    };
    let scan = |code: String, checkpoint: &str, extra: &str| {
        format!(
            "{curl} -H 'Authorization: Bearer {key}' -d \"{{\\\"code\\\":\\\"{code}\\\",\\\"checkpoint\\\":\\\"{checkpoint}\\\"{extra}}}\" {}/v1/scan; echo",
            env.public_url
        )
    };
    let issue = |keyfile: &dyn std::fmt::Display, holder: &str, more: &str| {
        format!("$({exe} issue --key {keyfile} --holder {holder}{more})")
    };
    let green = first("green");
    let anti = env.holders.get("green").and_then(|v| v.get(1)).map(|h| h.to_hex()).unwrap_or_default();
    let fever = env.holders.get("green").and_then(|v| v.get(2)).map(|h| h.to_hex()).unwrap_or_default();
    let cases: Vec<(&str, String)> = vec![
        ("pass (green)", scan(issue(&issuer, &green, ""), metro, "")),
        (
            "fever (37.3 °C or more; the holder turns yellow)",
            scan(issue(&issuer, &fever, ""), rail, ",\\\"temperature_c\\\":38.2"),
        ),
        ("not_green (yellow)", scan(issue(&issuer, &first("yellow"), ""), metro, "")),
        ("not_green (red)", scan(issue(&issuer, &first("red"), ""), metro, "")),
        ("pending", scan(issue(&issuer, &first("pending"), ""), metro, "")),
        ("no_health_record", scan(issue(&issuer, &first("green_no_record"), ""), metro, "")),
        ("anti_passback (run it twice: the second `in` is refused)", scan(issue(&issuer, &anti, ""), metro, "")),
        ("expired", scan(issue(&issuer, &green, " --issued-at 2020-04-25T08:30:00+08:00"), metro, "")),
        ("bad_signature (right key id, wrong key)", scan(issue(&env.forged_key.display(), &green, ""), metro, "")),
        ("unknown_issuer", scan(issue(&env.untrusted_key.display(), &green, ""), metro, "")),
        ("malformed", scan("HG1:NOT-A-CODE".into(), metro, "")),
    ];
    let mut out = format!(
        "healthgate demo is serving\n  public  {}\n  admin   {}   (GET /metrics, /readyz)\n  env     {}\n\nSee each decision (copy a line into a shell):\n",
        env.public_url,
        env.admin_url,
        env.config.with_file_name("env.json").display()
    );
    for (what, cmd) in cases {
        out.push_str(&format!("\n# {what}\n{cmd}\n"));
    }
    out.push_str(&format!(
        "\n# a holder's status (inspector key)\n{curl} -H 'Authorization: Bearer {}' {}/v1/holders/{green}; echo\n",
        env.api_key(Role::Inspector),
        env.public_url
    ));
    out.push_str(&format!("\n# metrics\n{curl} {}/metrics | grep healthgate_scans_total\n", env.admin_url));
    out
}
