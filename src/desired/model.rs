//! Domain types of the desired state: what validation produced, with every
//! rule of the contract already checked. The planner and executor only ever
//! see these, never the wire structs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Diagnostic;

/// Session wall-clock limit of a profile without `timeout`: nothing runs
/// forever, and a request may only shorten it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Largest `work_unit` of a request, in bytes. It is passed to the session
/// as an environment variable on `podman run`'s command line, where Linux
/// refuses any single argument over 128 KiB; a work unit is an id, not data.
pub const MAX_WORK_UNIT_BYTES: usize = 4 * 1024;

/// Largest `request` text, in bytes (it is materialized as a file).
pub const MAX_REQUEST_TEXT_BYTES: usize = 64 * 1024;

/// Largest artifact (the file named by `path`, or the inline `json` once
/// serialized), in bytes (it is materialized as a file).
pub const MAX_ARTIFACT_BYTES: usize = 1024 * 1024;

/// The whole desired dir, as one value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Valid profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// Profiles whose file was rejected, by name (the stem), with why.
    pub invalid_profiles: BTreeMap<String, Rejected>,
    /// Every request file by id, valid or not.
    pub requests: BTreeMap<String, RequestEntry>,
    /// Paths below `profiles/` or `requests/` that were not followed (a
    /// symlinked folder, a symlink loop), one diagnostic each: reported,
    /// and everything else goes on.
    pub skipped: Vec<Diagnostic>,
}

impl Desired {
    /// Every problem of every rejected file, sorted and de-duplicated.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut d: Vec<Diagnostic> = self
            .invalid_profiles
            .values()
            .chain(self.requests.values().filter_map(|e| match e {
                RequestEntry::Invalid(r) => Some(&**r),
                RequestEntry::Valid(_) => None,
            }))
            .flat_map(|r| r.diagnostics.iter().cloned())
            .chain(self.skipped.iter().cloned())
            .collect();
        d.sort();
        d.dedup();
        d
    }
}

/// A file that was rejected, with the diagnostics that say why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub path: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
    /// The file's sha256 when the file itself is valid and was rejected for
    /// a cross-file reason (its profile is missing, say): an admitted
    /// request whose profile vanished has not been edited.
    pub sha256: Option<String>,
}

impl Rejected {
    /// One line for a status message: the first problem, plus a count of the rest.
    pub fn summary(&self) -> String {
        match self.diagnostics.as_slice() {
            [] => format!("{}: rejected", self.path.display()),
            [only] => only.to_string(),
            [first, rest @ ..] => format!("{first} (and {} more problems)", rest.len()),
        }
    }
}

/// One request id's entry. A valid request is shared (`Arc`) with the
/// daemon's per-file cache that parsed it, so 10,000 finished requests are
/// held once, not twice; a rejection is boxed, so an entry is two words
/// (issue 12).
#[derive(Debug, Clone, PartialEq)]
pub enum RequestEntry {
    Valid(Arc<Request>),
    Invalid(Box<Rejected>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConcurrencyPolicy {
    #[default]
    Allow,
    Forbid,
    Replace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    pub base_image: String,
    pub command: Vec<String>,
    pub repo: Option<Repo>,
    /// Repositories a request may name instead of `repo` (issue 13).
    pub allowed_repos: Vec<RepoPattern>,
    pub schedule: Option<Schedule>,
    pub concurrency_policy: ConcurrencyPolicy,
    pub history_limit: u32,
    pub starting_deadline: Option<Duration>,
    pub methodology_dir: Option<PathBuf>,
    pub credentials: Vec<Credential>,
    /// The clone token's source (`repo_token_source` is the `Env` form).
    pub repo_token: Option<SecretSource>,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub timeout: Option<Duration>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub network: Network,
    /// `egress` (issue 19): the proxy's destinations; `network` is then `None`.
    pub egress: Option<super::egress::EgressPolicy>,
    pub max_concurrent: Option<u32>,
    pub suspend: bool,
    /// Where the agent's new commits are pushed (issue 20).
    pub push: Option<Push>,
    /// Cap on the bundle and patches a record keeps (issue 20).
    pub results_max_bytes: u64,
}

impl Profile {
    /// A profile with only the required fields and every default, as a
    /// file with just `base_image` and `command` would give (for tests and
    /// benchmarks that build models directly).
    pub fn minimal(name: &str, base_image: &str, command: &[&str]) -> Profile {
        Profile {
            name: name.into(),
            path: PathBuf::from(format!("profiles/{name}.toml")),
            base_image: base_image.into(),
            command: command.iter().map(|c| (*c).to_string()).collect(),
            repo: None,
            allowed_repos: Vec::new(),
            schedule: None,
            concurrency_policy: ConcurrencyPolicy::Allow,
            history_limit: 10,
            starting_deadline: None,
            methodology_dir: None,
            credentials: Vec::new(),
            repo_token: None,
            env: BTreeMap::new(),
            mounts: Vec::new(),
            timeout: None,
            memory: None,
            cpus: None,
            pids_limit: None,
            network: Network::Default,
            egress: None,
            max_concurrent: None,
            suspend: false,
            push: None,
            results_max_bytes: DEFAULT_RESULTS_MAX_BYTES,
        }
    }
}

/// A validated cron schedule; the expression is kept as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub expr: String,
}

/// A repository to clone: a URL of an allowed scheme, or an absolute local path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Repo {
    Url(String),
    Local(PathBuf),
}

impl Repo {
    /// The repository as the operator wrote it (it never carries credentials).
    pub fn as_str(&self) -> String {
        match self {
            Repo::Url(u) => u.clone(),
            Repo::Local(p) => p.display().to_string(),
        }
    }

    /// The host folder of a `file://` URL or local path, when the repo is on this host.
    pub fn local_path(&self) -> Option<PathBuf> {
        match self {
            Repo::Local(p) => Some(p.clone()),
            Repo::Url(u) => u.strip_prefix("file://").map(PathBuf::from),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    /// Env var name inside the session.
    pub name: String,
    /// Where its value comes from.
    pub source: SecretSource,
    /// `inject` (issue 21): the session holds a placeholder and the egress
    /// proxy puts the value on the wire.
    pub inject: Option<Inject>,
}

/// Where an injected credential's value goes: `header` (lower-case) on
/// requests to `hosts`, each the profile's `egress` rule it names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inject {
    pub hosts: Vec<super::egress::EgressRule>,
    /// A valid header name, lower-case, neither hop-by-hop nor `host`.
    pub header: String,
    /// The header value is `prefix` + secret + `suffix` (`format` split at
    /// its one `{}`).
    pub prefix: String,
    pub suffix: String,
}

/// Largest secret value read from a file (a systemd credential or a `file`),
/// in bytes: a credential is a token or a key, and the value ends up in one
/// environment variable (Linux refuses a single one over 128 KiB).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Where a secret value (a credential or the clone token) comes from.
/// Validation checked the form; whether the source exists is known only
/// when a session starts. Serializable (a name or path, never a value): a
/// session keeps its push token's source in its work folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SecretSource {
    /// An environment variable of the daemon; its value is taken as is.
    Env(String),
    /// `$CREDENTIALS_DIRECTORY/<name>` (systemd `LoadCredential=`); the
    /// name is one path component.
    SystemdCredential(String),
    /// A Podman secret the operator created, mounted into the session.
    PodmanSecret(String),
    /// A file owned by the daemon's user, not group/other accessible.
    File(PathBuf),
}

impl SecretSource {
    /// The source as an operator wrote it, for messages (never the value).
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(v) => format!("the daemon's environment variable `{v}`"),
            SecretSource::SystemdCredential(n) => format!("systemd credential `{n}`"),
            SecretSource::PodmanSecret(n) => format!("podman secret `{n}`"),
            SecretSource::File(p) => format!("file `{}`", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Default,
    None,
    Named(String),
}

/// A validated `allowed_repos` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern {
    /// As the operator wrote it (for messages).
    pub text: String,
    /// Normalized like a repo and decoded: wildcards where the operator
    /// wrote `*`, literal bytes everywhere else (`repos::pattern` makes
    /// them, `RepoPattern::matches` reads them).
    pub(super) toks: Vec<Tok>,
}

/// One element of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
    Lit(u8),
    /// One or more bytes other than `/`.
    Star,
    /// One or more bytes (whole segments: `pattern` allows `**` only as one).
    DoubleStar,
}

/// `results_max_bytes` when a profile does not set it: 100 MiB.
pub const DEFAULT_RESULTS_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// A validated `push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The branch name template (without `refs/heads/`), as written.
    pub branch: String,
    /// Outcomes after which the daemon pushes.
    pub when: Vec<crate::observed::Outcome>,
    /// Where the token comes from; `None` for a local repository.
    pub token: Option<SecretSource>,
}

/// A validated request. Serializable because the executor freezes it at
/// admission (`<state>/specs/<id>.json`) and starts the session from that copy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub id: String,
    pub path: PathBuf,
    pub profile: String,
    pub repo: Option<Repo>,
    pub input: Input,
    pub timeout: Option<Duration>,
    pub scheduled_for: Option<jiff::Timestamp>,
    /// sha256 of the file's bytes, lower-case hex: the frozen spec's identity.
    pub spec_sha256: String,
}

/// What the session is asked to work on; the three forms are exclusive.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub enum Input {
    #[default]
    None,
    WorkUnit(String),
    Text(String),
    Artifact {
        kind: String,
        /// Name of the file under `/agentd/input/<kind>/`, without `.json`.
        stem: String,
        /// The artifact, already parsed and schema-checked.
        json: serde_json::Value,
    },
}
