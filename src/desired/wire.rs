//! Wire types: the only serde structs for profile and request files.
//!
//! They mirror docs/desired-dir.md ("Profile fields", "Request fields")
//! field for field, reject unknown
//! fields, and carry no meaning beyond "what the file said". `validate.rs`
//! turns them into the domain types of `model.rs`. The JSON Schemas in
//! `schemas/` are generated from these structs (`agentd schema`), so the doc
//! comments here are what editors show as completion help.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// An agent profile: what image to run, which command, with which repository,
/// credentials and limits. One profile per file; the file stem is its name.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "agentd profile")]
#[schemars(extend("not" = { "required": ["repo_token", "repo_token_source"] }))]
pub struct ProfileFile {
    /// Must equal the file stem when present. Also the in-container user name.
    pub name: Option<String>,
    /// Image the session container runs (it needs `/bin/sh`).
    pub base_image: String,
    /// argv run as the session user from the repository folder.
    pub command: Vec<String>,
    /// Default repository: `https://`, `http://`, `git://`, `file://` URL or an
    /// absolute local path. Credentials in the URL are rejected: use
    /// `repo_token_source` or `repo_token`.
    pub repo: Option<String>,
    /// Patterns of repositories a request may name instead of `repo` (`*`
    /// matches within a path segment, `**` across), e.g.
    /// `https://git.example.com/team/*`. Without it a request cannot
    /// override the repository. Local paths and `file://` URLs of the same
    /// path are the same repository.
    #[serde(default)]
    pub allowed_repos: Vec<String>,
    /// 5-field cron expression or `@hourly`-style macro, daemon-local time.
    /// Requires `repo`.
    pub schedule: Option<String>,
    /// What a scheduled fire does while an earlier one still runs.
    pub concurrency_policy: Option<ConcurrencyPolicyWire>,
    /// Finished scheduled requests kept (default 10).
    pub history_limit: Option<u32>,
    /// How late a fire may still start (`10m`): a fire missed while the
    /// daemon was down runs at start-up if it is at most this old. Without
    /// it, missed fires are never backfilled.
    pub starting_deadline: Option<String>,
    /// Host folder mounted read-only at `/agentd/methodology`.
    pub methodology_dir: Option<String>,
    /// Environment variables of the session holding secret values, each
    /// from exactly one source: the daemon's environment, a systemd
    /// credential, a Podman secret or a file.
    #[serde(default)]
    pub credentials: Vec<CredentialWire>,
    /// Daemon environment variable holding a token used only to clone
    /// (https:// only; it never reaches the session). Exclusive with `repo_token`.
    pub repo_token_source: Option<String>,
    /// The clone token from another source: `{ systemd_credential = "..." }`,
    /// `{ file = "/abs/path" }` or `{ source = "ENV_VAR" }`. A Podman secret
    /// cannot be used here (git reads the token on the host). Exclusive with
    /// `repo_token_source`.
    pub repo_token: Option<TokenSourceWire>,
    /// Plain, non-secret environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra bind mounts.
    #[serde(default)]
    pub mounts: Vec<MountWire>,
    /// Session wall-clock limit: `90s`, `30m`, `2h`.
    pub timeout: Option<String>,
    /// Container memory limit, Podman syntax (`512m`, `2g`).
    pub memory: Option<String>,
    /// Container CPU limit (`1.5`).
    pub cpus: Option<f64>,
    /// Container process limit.
    pub pids_limit: Option<i64>,
    /// `default`, `none`, or a Podman network name. Exclusive with `egress`.
    pub network: Option<String>,
    /// The session's only way out: a proxy the daemon runs, announced by
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`, that allows exactly these
    /// destinations (an exact host and port each; `*.example.com` matches
    /// one or more labels below `example.com`). Names resolving to private,
    /// loopback or link-local addresses are refused unless the entry is an
    /// IP literal or says `allow_private = true`. Exclusive with `network`.
    pub egress: Option<Vec<EgressWire>>,
    /// Running sessions of this profile at once.
    pub max_concurrent: Option<u32>,
    /// True: admit no new sessions (running ones finish).
    pub suspend: Option<bool>,
    /// Push the agent's new commits to a branch of the cloned repository
    /// when the session ends with one of `when`'s outcomes (issue 20).
    pub push: Option<PushWire>,
    /// Cap in bytes on what a record keeps of the agent's changes (the
    /// bundle of its commits and the patches together); default 100 MiB.
    pub results_max_bytes: Option<u64>,
}

/// Where and when the agent's new commits are pushed: the daemon pushes
/// the session's HEAD to `refs/heads/<branch>` of the repository the
/// session cloned, never forced, over https with `token` (or to a local
/// repository without one). The agent never holds the token.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushWire {
    /// Branch name template (default `agentd/{profile}/{session_id}`);
    /// placeholders `{profile}`, `{session_id}`, `{request}`, `{work_unit}`
    /// (`none` when the request has none), each value mapped to
    /// `[A-Za-z0-9._-]` with anything else as `-`.
    pub branch: Option<String>,
    /// Outcomes after which the daemon pushes (default `["success"]`).
    pub when: Option<Vec<String>>,
    /// The push token: `{ systemd_credential = "..." }`, `{ file =
    /// "/abs/path" }` or `{ source = "ENV_VAR" }` (not a Podman secret).
    /// Required for an https:// repository; sent only to it.
    pub token: Option<TokenSourceWire>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyPolicyWire {
    /// Start every fire.
    Allow,
    /// Skip a fire while an earlier scheduled session of the profile is pending or running.
    Forbid,
    /// Cancel the running one and start the new one.
    Replace,
}

/// Session env var `name` gets a secret value from exactly one source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    { "required": ["source"] },
    { "required": ["systemd_credential"] },
    { "required": ["podman_secret"] },
    { "required": ["file"] },
]))]
pub struct CredentialWire {
    /// Environment variable name inside the session.
    pub name: String,
    /// Environment variable of the daemon holding the value (taken as is).
    pub source: Option<String>,
    /// Name of a systemd credential: the file `$CREDENTIALS_DIRECTORY/<name>`
    /// that `LoadCredential=`/`LoadCredentialEncrypted=` provide. One
    /// trailing newline is dropped.
    pub systemd_credential: Option<String>,
    /// Name of a Podman secret the operator created (`podman secret
    /// create`). It reaches the session as a file, never through
    /// `podman run --env`. One trailing newline is dropped.
    pub podman_secret: Option<String>,
    /// Absolute path of a file owned by the daemon's user and not readable
    /// by group or others (mode 0600 or 0400). One trailing newline is dropped.
    pub file: Option<String>,
    /// Keep the value out of the session: the variable holds a placeholder,
    /// and the egress proxy puts the value in `header` on requests to
    /// `hosts` only. Needs `egress`; not with `podman_secret`.
    pub inject: Option<InjectWire>,
}

/// Where an injected credential's value goes (`credentials[].inject`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectWire {
    /// The destinations whose requests get the value, each written exactly
    /// as an entry of `egress` (`api.example.com:443`; no wildcards).
    pub hosts: Vec<String>,
    /// The request header that carries the value (`x-api-key`,
    /// `authorization`).
    pub header: String,
    /// The header's value around the secret, with one `{}` where it goes
    /// (`"Bearer {}"`); default `"{}"`.
    pub format: Option<String>,
}

/// Where the clone token comes from: exactly one of these.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    { "required": ["source"] },
    { "required": ["systemd_credential"] },
    { "required": ["file"] },
]))]
pub struct TokenSourceWire {
    /// Environment variable of the daemon holding the token (taken as is).
    pub source: Option<String>,
    /// Name of a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`). One
    /// trailing newline is dropped.
    pub systemd_credential: Option<String>,
    /// Not supported for the clone token (git uses it on the host, and
    /// Podman cannot hand a secret's value back); kept so validation can say so.
    pub podman_secret: Option<String>,
    /// Absolute path of a file owned by the daemon's user, mode 0600 or
    /// 0400. One trailing newline is dropped.
    pub file: Option<String>,
}

/// One `egress` destination: `"host:port"` or `{ host, port, allow_private }`.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
pub enum EgressWire {
    /// `"host:port"`: a name (`api.example.com:443`), a wildcard
    /// (`*.example.com:443`), or an IP literal (`10.0.0.5:8080`,
    /// `[2001:db8::5]:443`). The port is required.
    Short(String),
    /// The table form, which can also allow private addresses.
    Table(EgressTableWire),
}

impl<'de> Deserialize<'de> for EgressWire {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = EgressWire;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a \"host:port\" string or a table { host, port, allow_private }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EgressWire, E> {
                Ok(EgressWire::Short(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<EgressWire, A::Error> {
                EgressTableWire::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(EgressWire::Table)
            }
        }
        d.deserialize_any(Entry)
    }
}

/// An `egress` destination as a table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressTableWire {
    /// A name, a wildcard (`*.example.com`) or an IP literal.
    pub host: String,
    /// The port (1-65535).
    #[schemars(range(min = 1))]
    pub port: u16,
    /// True: the name may resolve to a loopback, private, link-local or
    /// other internal address (a host on the operator's own network).
    pub allow_private: Option<bool>,
}

/// An extra bind mount.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MountWire {
    /// Absolute, existing host path.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only (default true: write access is opt-in).
    pub read_only: Option<bool>,
}

/// A one-shot session request. The file stem is the request id.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "agentd request")]
pub struct RequestFile {
    /// Profile name.
    pub profile: String,
    /// Overrides the profile's `repo`: must equal it or match one of the
    /// profile's `allowed_repos`, else the request is invalid.
    pub repo: Option<String>,
    /// Exported as `AGENTD_WORK_UNIT`.
    pub work_unit: Option<String>,
    /// Operator text, materialized as `/agentd/input/request.json`.
    pub request: Option<String>,
    /// JSON artifact materialized at `/agentd/input/<type>/<stem>.json`.
    pub artifact: Option<ArtifactWire>,
    /// Overrides the profile's timeout: `90s`, `30m`, `2h`.
    pub timeout: Option<String>,
    /// RFC 3339 time; set by the scheduler on the requests it materializes.
    pub scheduled_for: Option<String>,
}

/// `{type, path}` (a JSON file, relative to the request file's folder and
/// resolving inside `requests/`) or `{type, json}` (inline JSON text).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactWire {
    /// Artifact type: names the input folder and the schema
    /// `<methodology_dir>/schemas/<type>.schema.json`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path of a JSON file.
    pub path: Option<String>,
    /// Inline JSON: a string holding JSON text, or a structured value.
    pub json: Option<serde_json::Value>,
}
