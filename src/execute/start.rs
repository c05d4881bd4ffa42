//! Starting a session: allocate its id and audit record, prepare the work
//! folder (clone, input, credentials), then one `podman run`.

use std::sync::Arc;

use super::workdir::WorkDir;
use super::{Shared, lock};
use crate::audit::{Record, SessionRecord};
use crate::desired::{DEFAULT_TIMEOUT, Network, Profile, Request, SecretSource};
use crate::fault;
use crate::observed::{Container, ContainerState, Phase};
use crate::runtime::surface::DaemonFolders;
use crate::runtime::{
    BindMount, ErrorKind, Identity, Limit, RuntimeError, SecretMount, SessionSpec,
};

/// Starts that fail transiently (Podman hung or missing) are retried this
/// many times before the request ends as `start_failed`.
const MAX_START_ATTEMPTS: u32 = 5;

/// Where the start gate (a FIFO) appears in the container.
const GATE_TARGET: &str = "/agentd/.gate";

/// Where the credentials file appears in the container.
const CREDENTIALS_TARGET: &str = "/agentd/credentials.sh";

/// 16 lowercase hex characters from the kernel's random source.
pub fn new_session_id() -> String {
    crate::fsutil::random_hex()
}

/// Why a start did not leave its session running. The kind decides what
/// comes next ([`StartError::next`]); the message is the status message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the frozen spec of {request}: {reason}")]
    Spec { request: String, reason: String },
    /// The audit record could not be made or written.
    #[error(transparent)]
    Record(#[from] crate::audit::AuditError),
    /// The profile, the request or the host refuses the session (a limit
    /// not enforced, a mount, a secret, the clone); the message names the
    /// field and the fix.
    #[error("{0}")]
    Refused(String),
    #[error("image `{image}` is not available locally (agentd never pulls): {source}")]
    ImageMissing { image: String, source: RuntimeError },
    #[error(
        "network: the default network of rootless Podman could not start: {cause}; hint: set `network = \"none\"` in profile {profile} if its sessions need no network, make /dev/net/tun usable for the daemon's user, or run agentd rootful; podman said: {source}"
    )]
    HostNetwork {
        cause: &'static str,
        profile: String,
        source: RuntimeError,
    },
    #[error(transparent)]
    Credentials(#[from] super::workdir::CredentialsError),
    #[error(transparent)]
    Secret(#[from] super::secrets::SecretError),
    #[error("cannot create work folder: {0}")]
    WorkFolder(std::io::Error),
    #[error("cannot create the start gate: {0}")]
    MakeGate(std::io::Error),
    #[error("cannot write input files: {0}")]
    Input(std::io::Error),
    #[error(transparent)]
    Clone(#[from] super::clone::CloneError),
    #[error(transparent)]
    ResultsBase(#[from] super::results::BaseError),
    #[error("cannot hand the home folder to the session user: {0}")]
    GiveHome(std::io::Error),
    #[error("cannot mark the work folder prepared: {0}")]
    MarkPrepared(std::io::Error),
    #[error(transparent)]
    Private(#[from] super::private_repo::PrivateRepoError),
    #[error("podman run failed: {0}")]
    Run(RuntimeError),
    #[error("cannot open the start gate: {0}")]
    Gate(std::io::Error),
    /// The runtime did not answer (or the name was taken) and no container
    /// turned up: another attempt, at most `MAX_START_ATTEMPTS`.
    #[error("podman run: {0}")]
    RunTransient(RuntimeError),
    /// An earlier attempt's container could not be looked for.
    #[error("checking for an earlier attempt's container: {0}")]
    Probe(RuntimeError),
}

/// What a failed start leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// `start_failed`, with the error as its message.
    Fail,
    /// Another attempt after the backoff, however many it takes.
    Retry,
    /// Another attempt, until `MAX_START_ATTEMPTS` have failed.
    RetryAtMost(u32),
}

impl StartError {
    /// PURE: what comes after this failure.
    pub fn next(&self) -> Next {
        match self {
            StartError::Probe(_) => Next::Retry,
            StartError::RunTransient(_) => Next::RetryAtMost(MAX_START_ATTEMPTS),
            _ => Next::Fail,
        }
    }

    /// PURE: a failed run of the container, classified. `None`: it may
    /// have gone through (timed out, a name taken by an earlier attempt):
    /// look before deciding.
    pub fn of_run(e: RuntimeError, profile: &Profile) -> Result<StartError, RuntimeError> {
        Ok(match e.kind() {
            ErrorKind::ImageMissing => StartError::ImageMissing {
                image: profile.base_image.clone(),
                source: e,
            },
            ErrorKind::HostNetwork(cause) => StartError::HostNetwork {
                cause,
                profile: profile.name.clone(),
                source: e,
            },
            ErrorKind::Failed => StartError::Run(e),
            ErrorKind::Transient | ErrorKind::NameInUse => return Err(e),
        })
    }
}

/// How a start that raised no error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// The command passed its gate: the session runs.
    Running,
    /// A container of an earlier attempt (or of this one's timed-out run)
    /// exists: the planner takes it from here.
    HandedOver,
}

/// Start `request`'s session. The one place a failed start becomes a retry
/// or `start_failed` (issue 18).
pub async fn start(sh: &Arc<Shared>, request: &str, profile: Profile) {
    // Set once the session's record exists: a failure after it seals the
    // record and removes the work folder.
    let mut session = None;
    let e = match try_start(sh, request, profile, &mut session).await {
        Ok(_) => return,
        Err(e) => e,
    };
    let session = session.as_deref();
    match e.next() {
        Next::Fail => super::finish::fail_start(sh, request, session, &e.to_string()).await,
        Next::Retry => {
            sh.retry_later(request, &e.to_string());
        }
        Next::RetryAtMost(max) => {
            if sh.retry_later(request, &e.to_string()) >= max {
                let why = match &e {
                    StartError::RunTransient(source) => source.to_string(),
                    other => other.to_string(),
                };
                let msg = format!("podman run failed {max} times: {why}");
                super::finish::fail_start(sh, request, session, &msg).await;
            }
        }
    }
}

async fn try_start(
    sh: &Arc<Shared>,
    request: &str,
    profile: Profile,
    session: &mut Option<String>,
) -> Result<Started, StartError> {
    let st = &sh.settings;
    let spec: Request = std::fs::read(st.spec_path(request))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|reason| StartError::Spec {
            request: request.to_string(),
            reason,
        })?;
    // A retried start (after a crash or a transient failure) keeps its
    // session id, so the request keeps one audit record. But first: an
    // earlier attempt may have got further than it knew (the run timed
    // out, the daemon died right after it). If its container exists, hand
    // it to the planner (adopt, finish or clean up) and touch nothing
    // else: its work folder may be in use.
    let prior = lock(&sh.store)
        .get(request)
        .and_then(|s| s.session_id.clone());
    if prior.is_some() {
        let found = sh
            .runtime
            .inspect(&st.container_name(request))
            .await
            .map_err(StartError::Probe)?;
        if let Some(i) = found {
            sh.remember(request, prior.as_deref(), &i);
            // Persist the `starting` that `apply` set in memory only.
            sh.update_status(request, |_| {});
            return Ok(Started::HandedOver);
        }
    }
    let session_id = prior.unwrap_or_else(new_session_id);
    // The status names the record before the record exists, so a crash
    // in between leaves nothing unreferenced (a retry reuses both).
    let start_ts = jiff::Timestamp::now();
    sh.update_status(request, |s| {
        s.phase = Phase::Starting;
        s.session_id = Some(session_id.clone());
        s.audit_dir = Some(Record::path_for(&st.audit_root, &profile.name, &session_id));
        s.message = None;
    });
    let record = Record::create(
        &st.audit_root,
        &profile.name,
        &session_id,
        st.host_session_uid(),
    )?;
    *session = Some(session_id.clone());
    let repo = spec.repo.clone().or(profile.repo.clone());
    tracing::info!(request, session = %session_id, profile = %profile.name, "session starting");
    let work_unit = match &spec.input {
        crate::desired::Input::WorkUnit(w) => Some(w.clone()),
        _ => None,
    };
    let session_rec = SessionRecord {
        schema_version: crate::audit::SCHEMA_VERSION,
        session_id: session_id.clone(),
        profile: profile.name.clone(),
        request: request.to_string(),
        spec_sha256: spec.spec_sha256.clone(),
        repo: repo.as_ref().map(|r| r.as_str()).unwrap_or_default(),
        work_unit: work_unit.clone(),
        start_timestamp: start_ts,
        end_timestamp: None,
        outcome: None,
        exit_code: None,
        image: profile.base_image.clone(),
        image_id: None,
        image_digest: None,
        message: None,
        cut: None,
        changes: None,
        push: None,
    };
    record.write_session(&session_rec)?;
    check_runtime_secrets(sh, &profile).await?;
    let (run_spec, clone_job) = prepare(sh, &session_id, &profile, &spec, repo.as_ref(), &record)?;
    let deadline = Some(run_spec.identity.deadline);
    // The container is created while the repository is cloned; its command
    // waits at the gate until both are done.
    let (run, prepared) = tokio::join!(sh.runtime.run(&run_spec), clone_job.run(sh));
    let running = match run {
        Ok(running) => running,
        Err(e) => {
            let e = match StartError::of_run(e, &profile) {
                Ok(fatal) => return Err(fatal),
                Err(transient) => transient,
            };
            // The container may exist anyway (a timed-out run that went
            // through, a name taken by an earlier attempt): look before
            // deciding.
            if let Ok(Some(i)) = sh.runtime.inspect(&run_spec.name).await {
                sh.remember(request, Some(&session_id), &i);
                if i.state == ContainerState::Running {
                    mark_running(sh, request, &run_spec.name);
                }
                return Ok(Started::HandedOver);
            }
            return Err(StartError::RunTransient(e));
        }
    };
    prepared?;
    fault::point("start-after-run");
    // A fast command may have died (and its exit been recorded) before we
    // get here: never overwrite what is known.
    lock(&sh.containers)
        .by_request
        .entry(request.to_string())
        .or_insert(Container {
            id: running.id,
            name: run_spec.name.clone(),
            request: Some(request.to_string()),
            session_id: Some(session_id.clone()),
            state: ContainerState::Running,
            deadline,
            started: true,
        });
    sh.open_gate(request, &session_id)
        .await
        .map_err(StartError::Gate)?;
    mark_running(sh, request, &run_spec.name);
    tracing::info!(request, session = %session_id, container = %run_spec.name, "session running");
    Ok(Started::Running)
}

/// Every Podman secret the profile's credentials name must exist before
/// the container is made: a missing one is `start_failed` naming the
/// credential and the secret. The runtime not answering is left to the run
/// (and its retries).
async fn check_runtime_secrets(sh: &Shared, profile: &Profile) -> Result<(), StartError> {
    for c in &profile.credentials {
        let SecretSource::PodmanSecret(secret) = &c.source else {
            continue;
        };
        match sh.runtime.secret_exists(secret).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(StartError::Refused(format!(
                    "credential `{}`: podman secret `{secret}` does not exist; hint: create it with `podman secret create {secret} FILE` as the user agentd runs as",
                    c.name
                )));
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(secret = %secret, error = %e, "cannot check a podman secret; podman run will tell");
            }
            Err(e) => {
                return Err(StartError::Refused(format!(
                    "credential `{}`: cannot check podman secret `{secret}`: {e}",
                    c.name
                )));
            }
        }
    }
    Ok(())
}

/// Record that the session's container runs.
fn mark_running(sh: &Shared, request: &str, name: &str) {
    sh.succeeded(request);
    sh.update_status(request, |s| {
        s.phase = Phase::Running;
        s.container = Some(name.to_string());
        s.started_at = s.started_at.or(Some(jiff::Timestamp::now()));
        s.message = None;
    });
}

/// Build the work folder and the `podman run` spec. Errors are the status
/// message of a `start_failed` session.
fn prepare(
    sh: &Shared,
    session_id: &str,
    profile: &Profile,
    spec: &Request,
    repo: Option<&crate::desired::Repo>,
    record: &Record,
) -> Result<(SessionSpec, CloneJob), StartError> {
    let st = &sh.settings;
    // Nothing silently weaker than the profile: a limit this host's Podman
    // would ignore (rootless on cgroup v1, or v2 without the controller
    // delegated) fails the start instead of running the session unlimited.
    let limits = [
        (Limit::Memory, profile.memory.is_some()),
        (Limit::Cpus, profile.cpus.is_some()),
        (Limit::PidsLimit, profile.pids_limit.is_some()),
    ];
    for (limit, set) in limits {
        if let Some(why) = set.then(|| sh.runtime.unenforced(limit)).flatten() {
            return Err(StartError::Refused(format!(
                "profile {}: {why}",
                profile.name
            )));
        }
    }
    // Validation refuses it without the flag; a profile is never more than
    // the daemon allows.
    let host_network =
        matches!(&profile.network, Network::Named(n) if n.eq_ignore_ascii_case("host"));
    if host_network && !st.allow_host_network {
        return Err(StartError::Refused(format!(
            "network: `host` needs the daemon to run with --allow-host-network; hint: set another network in profile {}",
            profile.name
        )));
    }
    // Inside the container the session runs as `session_uid`; on the host
    // its files belong to `host_uid` (see `Settings::host_session_uid`).
    let uid = st.session_uid;
    let host_uid = st.host_session_uid();
    let home = format!("/home/{}", profile.name);
    // Right before use, the host folders the profile names must still be
    // what validation resolved: no component may have become a symlink.
    let host_paths = profile
        .methodology_dir
        .iter()
        .map(|p| ("methodology_dir".to_string(), p))
        .chain(
            profile
                .mounts
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("mounts[{i}].source"), &m.source)),
        );
    // The daemon's control surface never reaches a session, inside or
    // around a mount (`Runtime::control_surface`, issue 17): rootless, the
    // agent has the daemon user's uid on the host. Computed only for a
    // profile that names host paths.
    let mut guarded = None;
    for (field, p) in host_paths {
        let guarded = guarded.get_or_insert_with(|| {
            sh.runtime.control_surface(&DaemonFolders {
                state: st.state.clone(),
                audit_root: st.audit_root.clone(),
                desired: st.desired.clone(),
            })
        });
        if let Some(link) = crate::fsutil::symlink_component(p) {
            return Err(StartError::Refused(format!(
                "{field} `{}`: `{}` is now a symlink (it was resolved when the profile was validated); fix the host path or re-save the profile",
                p.display(),
                link.display()
            )));
        }
        crate::runtime::surface::refuse(&field, p, guarded).map_err(StartError::Refused)?;
    }
    let work = WorkDir::create(st.work_dir(session_id)).map_err(StartError::WorkFolder)?;
    let env_lookup = |name: &str| std::env::var(name).ok();
    fault::point("start-before-credentials");
    let has_credentials = work.write_credentials(profile, host_uid, &env_lookup)?;
    fault::point("start-after-credentials");
    let repo = repo.ok_or_else(|| {
        StartError::Refused(
            "no repository to clone (neither request nor profile sets `repo`)".to_string(),
        )
    })?;
    // Validation admitted the request against the profile of its time; the
    // profile may have narrowed since (issue 13: a request never widens it).
    if !profile.allows_repo(repo) {
        return Err(StartError::Refused(format!(
            "repo: `{}` is not allowed by profile `{}` any more (its repo or allowed_repos changed since the request was admitted); hint: add a pattern to allowed_repos in profile {}",
            repo.as_str(),
            profile.name,
            profile.name
        )));
    }
    super::private_repo::refuse_private(
        repo,
        &[("state dir", &st.state), ("audit root", &st.audit_root)],
    )?;
    // The clone token is the profile's: it goes only to the profile's own
    // repository and those its allowed_repos admit, and only over https.
    let token = match &profile.repo_token {
        Some(src) if profile.token_goes_to(repo) => {
            Some(super::secrets::read("repo_token", src, &env_lookup)?)
        }
        Some(_) => {
            tracing::info!(session = %session_id, repo = %repo.as_str(), "the clone token goes only to allowed https:// repositories; cloning without it");
            None
        }
        None => None,
    };
    let clone_job = CloneJob {
        repo: repo.clone(),
        profile: profile.name.clone(),
        results: super::results::plan(profile, repo, session_id, spec),
        token,
        work: WorkDir {
            root: work.root.clone(),
        },
    };
    work.make_gate().map_err(StartError::MakeGate)?;
    let has_input = work.write_input(&spec.input).map_err(StartError::Input)?;

    let mut mounts = vec![
        BindMount {
            source: work.home(),
            target: home.clone(),
            read_only: false,
        },
        BindMount {
            source: record.session_dir(),
            target: format!("{home}/.agentd/audit"),
            read_only: false,
        },
        BindMount {
            source: work.gate(),
            target: GATE_TARGET.into(),
            read_only: true,
        },
    ];
    if let Some(m) = &profile.methodology_dir {
        mounts.push(BindMount {
            source: m.clone(),
            target: "/agentd/methodology".into(),
            read_only: true,
        });
    }
    if has_input {
        mounts.push(BindMount {
            source: work.input(),
            target: "/agentd/input".into(),
            read_only: true,
        });
    }
    if has_credentials {
        mounts.push(BindMount {
            source: work.credentials(),
            target: CREDENTIALS_TARGET.into(),
            read_only: true,
        });
    }
    for m in &profile.mounts {
        mounts.push(BindMount {
            source: m.source.clone(),
            target: m.target.display().to_string(),
            read_only: m.read_only,
        });
    }

    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), home.clone()),
        ("USER".into(), profile.name.clone()),
        ("LOGNAME".into(), profile.name.clone()),
        ("AGENTD_SESSION_ID".into(), session_id.into()),
        ("AGENTD_PROFILE".into(), profile.name.clone()),
        ("AGENTD_REQUEST".into(), spec.id.clone()),
        ("AGENTD_AUDIT_DIR".into(), format!("{home}/.agentd/audit")),
    ];
    if let crate::desired::Input::WorkUnit(w) = &spec.input {
        env.push(("AGENTD_WORK_UNIT".into(), w.clone()));
    }
    env.extend(profile.env.iter().map(|(k, v)| (k.clone(), v.clone())));

    // Every session has a deadline: a profile without `timeout` gets the
    // documented default, and a request only ever shortens it (validation
    // refuses a longer one; `min` keeps that true for specs frozen earlier).
    let limit = profile.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let timeout = spec.timeout.map_or(limit, |t| t.min(limit));
    let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2);
    let deadline = jiff::Timestamp::now().as_millisecond().saturating_add(ms);

    // Every session enters through a `/bin/sh -c` wrapper with the
    // profile's argv passed through untouched as "$@". It first waits at the
    // start gate (a FIFO the daemon writes `go` into once the clone is in
    // place, so `podman run` overlaps the clone), sources the credentials
    // file when there is one, then `exec`s: a missing or non-executable
    // program keeps its 127 or 126 (catatonit, PID 1 for signal forwarding,
    // would otherwise turn both into a plain 1).
    let creds = if has_credentials {
        format!(". {CREDENTIALS_TARGET} && ")
    } else {
        String::new()
    };
    let entry = format!("read -r agentd_gate < {GATE_TARGET} || exit 125; {creds}exec \"$@\"");
    let mut command = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        entry,
        "agentd-session".into(),
    ];
    command.extend(profile.command.iter().cloned());

    let run_spec = SessionSpec {
        name: st.container_name(&spec.id),
        image: profile.base_image.clone(),
        identity: Identity {
            instance: st.instance.clone(),
            session_id: session_id.to_string(),
            profile: profile.name.clone(),
            request: spec.id.clone(),
            deadline,
        },
        uid,
        gid: uid,
        user: profile.name.clone(),
        home: home.clone(),
        workdir: format!("{home}/repo"),
        env,
        mounts,
        secrets: profile
            .credentials
            .iter()
            .filter_map(|c| match &c.source {
                SecretSource::PodmanSecret(secret) => Some(SecretMount {
                    secret: secret.clone(),
                    target: super::secrets::secret_target(&c.name),
                }),
                _ => None,
            })
            .collect(),
        runtime_dir: work.root.clone(),
        // Twice the record's cap: the k8s-file framing roughly doubles short
        // lines, and the conversion into the record applies the exact cap.
        console_max_bytes: Some(st.audit_max_bytes.saturating_mul(2)),
        network: profile.network.clone(),
        memory: profile.memory.clone(),
        cpus: profile.cpus,
        pids_limit: profile.pids_limit,
        command,
    };
    Ok((run_spec, clone_job))
}

/// The part of a start that runs while `podman run` creates the container.
struct CloneJob {
    repo: crate::desired::Repo,
    /// The profile's name: keys a mirror fetched with its token.
    profile: String,
    /// What results capture and push need at the end (issue 20).
    results: crate::results::Plan,
    token: Option<String>,
    work: WorkDir,
}

impl CloneJob {
    /// Clone, hand the home to the session user, then mark the work folder
    /// prepared (what adoption checks before opening the gate).
    async fn run(self, sh: &Shared) -> Result<(), StartError> {
        let st = &sh.settings;
        let env = super::clone::CloneEnv {
            cache_root: &st.state.join("cache/git"),
            git_home: &st.state.join("git-home"),
            timeout: st.clone_timeout,
            cache: &sh.clone_cache,
            sandbox: &sh.clone_sandbox,
        };
        super::clone::clone(
            &self.repo,
            &self.work.repo(),
            self.token.as_deref(),
            &self.profile,
            &env,
        )
        .await?;
        super::results::record_base(sh, &self.work.root, self.results).await?;
        self.work
            .give_home_to(sh.settings.host_session_uid())
            .map_err(StartError::GiveHome)?;
        fault::point("start-before-prepared");
        self.work.mark_prepared().map_err(StartError::MarkPrepared)
    }
}
