//! What a start prepares before the container runs: the checks right
//! before use (limits the runtime would not enforce, host paths that became
//! symlinks or overlap the control surface, the repository still allowed),
//! the work folder (credentials, gate, input), the `SessionSpec` the
//! runtime runs, and the clone (and the results' base) that runs beside
//! it (`CloneJob`).

use super::Shared;
use super::start::StartError;
use super::workdir::WorkDir;
use crate::audit::Record;
use crate::desired::{DEFAULT_TIMEOUT, Network, Profile, Request, SecretSource};
use crate::fault;
use crate::runtime::surface::DaemonFolders;
use crate::runtime::{BindMount, Identity, Limit, SecretMount, SessionSpec};

/// Where the start gate (a FIFO) appears in the container.
const GATE_TARGET: &str = "/agentd/.gate";

/// Where the credentials file appears in the container.
const CREDENTIALS_TARGET: &str = "/agentd/credentials.sh";

/// Build the work folder and the `podman run` spec. Errors are the status
/// message of a `start_failed` session.
pub(super) fn prepare(
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
    // Injected credentials (issue 21): the session holds placeholders.
    let injected = super::session_inject::prepare(&sh.egress.tls, &work.root, &profile.credentials)
        .map_err(|e| StartError::Refused(e.to_string()))?;
    if injected.is_some() {
        // The values are read now as well (and dropped): a missing or
        // unusable one fails the start before any container exists. The
        // proxy reads them again when it is served.
        super::session_inject::injecting(&sh.egress.tls, &work.root, &profile.credentials, |c| {
            super::secrets::read(&format!("credential `{}`", c.name), &c.source, &env_lookup)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| StartError::Refused(e.to_string()))?;
    }
    let placeholders = injected
        .as_ref()
        .map(|i| i.placeholders.clone())
        .unwrap_or_default();
    let has_credentials = work.write_credentials(profile, host_uid, &placeholders, &env_lookup)?;
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
    if let Some(i) = &injected {
        mounts.push(BindMount {
            source: i.ca_dir.clone(),
            target: crate::inject::session::CA_DIR.into(),
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
    if let Some(policy) = &profile.egress {
        let port = super::SessionEgress::prepare(&work.root, policy, &profile.credentials)
            .map_err(|e| {
                StartError::Refused(format!("egress: cannot write the proxy's state: {e}"))
            })?;
        env.extend(super::SessionEgress::env(port));
    }
    if let Some(i) = &injected {
        env.extend(i.env.iter().cloned());
    }

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
pub(super) struct CloneJob {
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
    pub(super) async fn run(self, sh: &Shared) -> Result<(), StartError> {
        let st = &sh.settings;
        let env = super::clone::CloneEnv {
            cache_root: &st.state.join("cache/git"),
            git_home: &st.state.join("git-home"),
            timeout: st.clone_timeout,
            cache: &sh.clone_cache,
            sandbox: &sh.clone_sandbox,
        };
        // The seed, when the clone is a copy of one, is let go as soon as
        // the base has what it needs from it.
        let seed = super::clone::clone(
            &self.repo,
            &self.work.repo(),
            self.token.as_deref(),
            &self.profile,
            &env,
        )
        .await?;
        super::results::record_base(sh, &self.work.root, self.results, seed).await?;
        self.work
            .give_home_to(sh.settings.host_session_uid())
            .map_err(StartError::GiveHome)?;
        fault::point("start-before-prepared");
        self.work.mark_prepared().map_err(StartError::MarkPrepared)
    }
}
