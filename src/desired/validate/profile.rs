//! One profile file, validated into a `Profile` (or every problem in it).

use super::*;

/// Validate one profile file.
pub fn profile(path: &Path, bytes: &[u8], host: &dyn HostView) -> Result<Profile, Vec<Diagnostic>> {
    let (text, w) = read_text::<ProfileFile>(path, bytes)?;
    let mut s = Sink {
        path,
        text,
        out: Vec::new(),
        keys: Default::default(),
        unlisted: 0,
    };
    let name = stem(path);

    if let Err(p) = rules::profile_name(&name) {
        s.out
            .push(Diagnostic::new(path, None, p.0).hint(p.1.unwrap_or_default()));
    }
    if let Some(n) = &w.name
        && n != &name
    {
        s.field(
            "name",
            format!("name `{n}` does not match the file name `{name}`"),
            "remove `name` or rename the file; the file stem is the profile's identity",
        );
    }
    if !rules::image_ref(&w.base_image) {
        s.field(
            "base_image",
            "base_image is empty or not an image reference",
            "name a local or pullable image, e.g. `localhost/agent:latest`",
        );
    }
    if w.command.is_empty() {
        s.field(
            "command",
            "command is empty",
            "give the argv to run, e.g. [\"/bin/sh\", \"-c\", \"make review\"]",
        );
    } else if w.command[0].trim().is_empty() {
        s.field(
            "command",
            "command[0] (the program) is empty",
            "name the program to run first",
        );
    }
    let repo = w.repo.as_deref().and_then(|r| match rules::repo(r) {
        Ok(r) => Some(r),
        Err(p) => {
            s.at("repo", 0, p);
            None
        }
    });
    let allowed_repos: Vec<_> = w
        .allowed_repos
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            repos::pattern(t)
                .map_err(|(m, h)| s.at("allowed_repos", 0, (format!("allowed_repos[{i}]: {m}"), h)))
                .ok()
        })
        .collect();
    let repo_token = token_source(&mut s, &w);
    if let (Some(t), Some(Repo::Url(u))) = (&repo_token, &repo)
        && u.starts_with("http://")
    {
        let (key, what) = match (&w.repo_token_source, t) {
            (Some(src), _) => ("repo_token_source", format!("repo_token_source `{src}`")),
            (None, t) => ("repo_token", format!("repo_token ({})", t.describe())),
        };
        s.field(
            key,
            format!("{what} would send the clone token over plain http:// (repo `{u}`)"),
            format!("use an https:// repo URL, or remove {key}"),
        );
    }
    let schedule_v = w.schedule.as_deref().and_then(|e| match cron::parse(e) {
        Ok(_) => Some(Schedule {
            expr: e.to_string(),
        }),
        Err(msg) => {
            s.field(
                "schedule",
                format!("invalid schedule `{e}`: {msg}"),
                "use 5 fields (minute hour day-of-month month day-of-week) or a macro like @hourly",
            );
            None
        }
    });
    if w.schedule.is_some() && w.repo.is_none() {
        s.field(
            "schedule",
            "schedule requires repo",
            "scheduled requests carry the profile's repo; add `repo`",
        );
    }
    let methodology_dir = w.methodology_dir.as_deref().and_then(|m| {
        // Resolved once, here: the session mounts the resolved folder, and
        // its start re-checks that no component became a symlink since.
        let written = resolve(path, m);
        let p = host.canonical(&written).unwrap_or(written);
        if p.to_string_lossy().contains(',') {
            s.field("methodology_dir", format!("methodology_dir `{}` contains a comma", p.display()),
                "Podman cannot bind-mount such a path; rename the folder");
            None
        } else if host.is_dir(&p) {
            Some(p)
        } else {
            s.field("methodology_dir", format!("methodology_dir `{}` is not an existing folder", p.display()),
                "create it, or give an absolute path (relative paths start at the profile file's folder)");
            None
        }
    });
    let mut seen_env = BTreeSet::new();
    let mut credentials = Vec::new();
    for (i, c) in w.credentials.iter().enumerate() {
        let name_nth = i + usize::from(w.name.is_some());
        if !rules::env_name(&c.name) || rules::reserved_env(&c.name) {
            s.at("name", name_nth, (
                format!("credentials[{i}].name `{}` is not a usable env var name", c.name),
                Some("use letters, digits and _, not starting with a digit; AGENTD_* (any case), HOME, USER and LOGNAME are agentd's".into()),
            ));
        }
        match sources::source(&format!("credentials[{i}]"), credential_given(c), false) {
            Ok(source) => credentials.push(Credential {
                name: c.name.clone(),
                source,
                inject: None,
            }),
            Err(problems) => {
                for (field, p) in problems {
                    // The nth key of that name: earlier credentials using
                    // the same form come first in the file.
                    let (key, nth) = match field {
                        Some(f) => (
                            f,
                            w.credentials[..i]
                                .iter()
                                .filter(|e| credential_uses(e, f))
                                .count(),
                        ),
                        None => ("name", name_nth),
                    };
                    s.at(key, nth, p);
                }
            }
        }
        if !seen_env.insert(c.name.clone()) {
            s.at(
                "credentials",
                0,
                (format!("credential `{}` is listed twice", c.name), None),
            );
        }
    }
    for k in w.env.keys() {
        if !rules::env_name(k) || rules::reserved_env(k) {
            s.at(k, 0, (format!("env key `{k}` is not a usable env var name"),
                Some("use letters, digits and _; AGENTD_* (any case), HOME, USER and LOGNAME are agentd's".into())));
        } else if seen_env.contains(k) {
            s.at(
                k,
                0,
                (
                    format!("env key `{k}` is also a credential name"),
                    Some("a variable comes from either `env` or `credentials`, not both".into()),
                ),
            );
        }
    }
    let mounts = mounts(&mut s, &w, &name, host);
    let timeout = w
        .timeout
        .as_deref()
        .and_then(|t| rules::duration(t).map_err(|p| s.at("timeout", 0, p)).ok());
    let starting_deadline = w.starting_deadline.as_deref().and_then(|t| {
        rules::duration(t)
            .map_err(|p| s.at("starting_deadline", 0, p))
            .ok()
    });
    if w.starting_deadline.is_some() && w.schedule.is_none() {
        s.field(
            "starting_deadline",
            "starting_deadline needs a schedule",
            "remove it, or add `schedule`",
        );
    }
    if let Some(m) = &w.memory
        && !rules::memory(m)
    {
        s.field(
            "memory",
            format!("invalid memory limit `{m}`"),
            "use Podman syntax: a number with b, k, m or g, e.g. `512m`",
        );
    }
    if let Some(c) = w.cpus
        && !(c.is_finite() && c > 0.0 && c <= 1024.0)
    {
        s.field(
            "cpus",
            format!("cpus must be a positive number, got {c}"),
            "e.g. `cpus = 1.5`",
        );
    }
    if let Some(p) = w.pids_limit
        && p < 1
    {
        s.field(
            "pids_limit",
            format!("pids_limit must be at least 1, got {p}"),
            "omit it for Podman's default",
        );
    }
    if w.max_concurrent == Some(0) {
        s.field(
            "max_concurrent",
            "max_concurrent must be at least 1",
            "to admit nothing, set `suspend = true`",
        );
    }
    let network = match w.network.as_deref() {
        None | Some("default") => Network::Default,
        Some("none") => Network::None,
        Some(n) if n.eq_ignore_ascii_case("host") && !host.allows_host_network() => {
            s.field(
                "network",
                format!("network `{n}` shares the host's network with the session: the agent reaches every service listening on the host's loopback (agentd's metrics listener among them)"),
                "use `default`, `none` or a Podman network; to give sessions the host's network on purpose, run the daemon (and `agentd validate`) with --allow-host-network (AGENTD_ALLOW_HOST_NETWORK=1)",
            );
            Network::Default
        }
        Some(n) if rules::network_name(n) => Network::Named(n.to_string()),
        Some(n) => {
            s.field(
                "network",
                format!("invalid network `{n}`"),
                "use `default`, `none`, or a Podman network name",
            );
            Network::Default
        }
    };
    let push = w.push.as_ref().and_then(|p| {
        super::super::push::validate(p, repo.as_ref())
            .map_err(|problems| problems.into_iter().for_each(|(k, p)| s.at(k, 0, p)))
            .ok()
    });
    let results_max_bytes = super::super::push::results_max_bytes(w.results_max_bytes)
        .map_err(|p| s.at("results_max_bytes", 0, p))
        .unwrap_or_default();
    let mut egress_problems = Vec::new();
    let egress = super::super::egress::profile(path, text, &w, &mut egress_problems);
    egress_problems.into_iter().for_each(|d| s.push(d));
    let mut inject_problems = Vec::new();
    super::super::inject::profile(
        path,
        text,
        &w,
        egress.as_ref(),
        &mut credentials,
        &mut inject_problems,
    );
    inject_problems.into_iter().for_each(|d| s.push(d));
    if !s.out.is_empty() {
        return Err(s.finish());
    }
    Ok(Profile {
        name,
        path: path.to_path_buf(),
        base_image: w.base_image,
        command: w.command,
        repo,
        allowed_repos,
        schedule: schedule_v,
        concurrency_policy: match w.concurrency_policy {
            None | Some(ConcurrencyPolicyWire::Allow) => ConcurrencyPolicy::Allow,
            Some(ConcurrencyPolicyWire::Forbid) => ConcurrencyPolicy::Forbid,
            Some(ConcurrencyPolicyWire::Replace) => ConcurrencyPolicy::Replace,
        },
        history_limit: w.history_limit.unwrap_or(10),
        starting_deadline,
        methodology_dir,
        credentials,
        repo_token,
        env: w.env,
        mounts,
        timeout,
        memory: w.memory,
        cpus: w.cpus,
        pids_limit: w.pids_limit,
        network: if egress.is_some() {
            Network::None
        } else {
            network
        },
        egress,
        max_concurrent: w.max_concurrent,
        suspend: w.suspend.unwrap_or(false),
        push,
        results_max_bytes,
    })
}

fn credential_given(c: &CredentialWire) -> sources::Given<'_> {
    sources::Given {
        source: c.source.as_deref(),
        systemd_credential: c.systemd_credential.as_deref(),
        podman_secret: c.podman_secret.as_deref(),
        file: c.file.as_deref(),
    }
}

/// Whether credential `c` writes the source field `field`.
fn credential_uses(c: &CredentialWire, field: &str) -> bool {
    let g = credential_given(c);
    match field {
        "source" => g.source.is_some(),
        "systemd_credential" => g.systemd_credential.is_some(),
        "podman_secret" => g.podman_secret.is_some(),
        _ => g.file.is_some(),
    }
}

/// The clone token's source: `repo_token_source` (the env form) or
/// `repo_token` (any form but a Podman secret), never both.
fn token_source(s: &mut Sink<'_>, w: &ProfileFile) -> Option<crate::desired::SecretSource> {
    match (&w.repo_token_source, &w.repo_token) {
        (Some(_), Some(_)) => {
            s.field(
                "repo_token",
                "repo_token and repo_token_source are exclusive",
                "keep one: `repo_token_source = \"VAR\"` is `repo_token = { source = \"VAR\" }`",
            );
            None
        }
        (Some(t), None) if !rules::env_name(t) => {
            s.field(
                "repo_token_source",
                format!("repo_token_source `{t}` is not an env var name"),
                "name the daemon's environment variable holding the clone token",
            );
            None
        }
        (Some(t), None) => Some(crate::desired::SecretSource::Env(t.clone())),
        (None, Some(t)) => {
            let g = sources::Given {
                source: t.source.as_deref(),
                systemd_credential: t.systemd_credential.as_deref(),
                podman_secret: t.podman_secret.as_deref(),
                file: t.file.as_deref(),
            };
            sources::source("repo_token", g, true)
                .map_err(|problems| {
                    for (_, p) in problems {
                        s.at("repo_token", 0, p);
                    }
                })
                .ok()
        }
        (None, None) => None,
    }
}

fn mounts(s: &mut Sink<'_>, w: &ProfileFile, profile: &str, host: &dyn HostView) -> Vec<Mount> {
    let mut out = Vec::new();
    // `source` keys of credentials (written before `mounts`) come first.
    let env_credentials = w.credentials.iter().filter(|c| c.source.is_some()).count();
    for (i, m) in w.mounts.iter().enumerate() {
        // Resolved once, like methodology_dir (and a comma can hide behind a link).
        let canonical = rules::clean_absolute(&m.source)
            .map(|p| host.canonical(&p).unwrap_or(p))
            .filter(|p| !p.to_string_lossy().contains(','));
        let source = match canonical {
            Some(p) if host.exists(&p) => Some(p),
            Some(p) => {
                s.at(
                    "source",
                    i + env_credentials,
                    (
                        format!("mounts[{i}].source `{}` does not exist", p.display()),
                        Some("create it on the host, or fix the path".into()),
                    ),
                );
                None
            }
            None => {
                s.at(
                    "source",
                    i + env_credentials,
                    (
                        format!(
                            "mounts[{i}].source `{}` is not a clean absolute path",
                            m.source
                        ),
                        Some("write it from `/`, without `.`, `..` or commas".into()),
                    ),
                );
                None
            }
        };
        let target = match rules::clean_absolute(&m.target) {
            None => {
                s.at(
                    "target",
                    i,
                    (
                        format!(
                            "mounts[{i}].target `{}` is not a clean absolute path",
                            m.target
                        ),
                        Some("write it from `/`, without `.`, `..` or commas".into()),
                    ),
                );
                None
            }
            Some(t) => {
                match rules::reserved_target(&t, profile) {
                    Some(why) => {
                        s.at("target", i, (format!("mounts[{i}].target `{}` is reserved: {why}", t.display()),
                        Some("mount somewhere else, e.g. under /mnt or /home/<profile>/<dir>".into())));
                        None
                    }
                    None => Some(t),
                }
            }
        };
        if let (Some(source), Some(target)) = (source, target) {
            out.push(Mount {
                source,
                target,
                read_only: m.read_only.unwrap_or(true),
            });
        }
    }
    for (a, b) in overlaps(&out) {
        s.at(
            "mounts",
            0,
            (
                format!(
                    "mount targets `{}` and `{}` overlap",
                    out[a].target.display(),
                    out[b].target.display()
                ),
                Some("targets must not be equal or nested".into()),
            ),
        );
    }
    out
}

/// Pairs `(a, b)`, `a < b`, of mounts whose targets are equal or nested:
/// each mount inside (or equal to) another is named once, with the nearest
/// target enclosing it, in file order of the inner one. Comparing every
/// pair would cost the square of the mounts, and report as many
/// (10,000 mounts at one target: 50 million diagnostics, issue 17).
fn overlaps(mounts: &[Mount]) -> Vec<(usize, usize)> {
    let mut sorted: Vec<usize> = (0..mounts.len()).collect();
    // Paths order by component, so a target's descendants follow it
    // directly; equal targets keep file order.
    sorted.sort_by(|a, b| mounts[*a].target.cmp(&mounts[*b].target).then(a.cmp(b)));
    let mut open: Vec<usize> = Vec::new();
    let mut pairs = Vec::new();
    for i in sorted {
        let t = &mounts[i].target;
        while open
            .last()
            .is_some_and(|o| !t.starts_with(&mounts[*o].target))
        {
            open.pop();
        }
        if let Some(&o) = open.last() {
            pairs.push((o.min(i), o.max(i)));
        }
        open.push(i);
    }
    pairs.sort_by_key(|(a, b)| (*b, *a));
    pairs
}
