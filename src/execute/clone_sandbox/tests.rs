//! Unit tests of the helper's command line, its config and the daemon's
//! hide list.

use super::*;

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn settings() -> super::super::Settings {
    super::super::Settings {
        desired: "/srv/agentd/desired".into(),
        state: "/srv/agentd/state".into(),
        audit_root: "/srv/agentd/audit".into(),
        instance: "test".into(),
        max_sessions: 1,
        max_pending: 1,
        status_retention: std::time::Duration::from_secs(60),
        session_uid: 10_001,
        stop_grace: std::time::Duration::from_secs(1),
        audit_max_bytes: 1 << 20,
        clone_timeout: std::time::Duration::from_secs(60),
        allow_host_network: false,
        egress_ca_file: None,
        session_files_owner: 10_001,
    }
}

/// The Podman backend as `podman info` of that mode would set it up.
fn podman(rootless: bool) -> crate::runtime::podman::Podman {
    let (graph, run, sock) = if rootless {
        (
            "/home/u/.local/share/containers/storage",
            "/run/user/1001/containers",
            "/run/user/1001/podman/podman.sock",
        )
    } else {
        (
            "/var/lib/containers/storage",
            "/run/containers/storage",
            "/run/podman/podman.sock",
        )
    };
    crate::runtime::podman::Podman::with_host(
        "test",
        crate::runtime::podman::Host {
            version: "4.3.1".into(),
            rootless,
            cgroup_version: "v2".into(),
            cgroup_manager: "systemd".into(),
            cgroup_controllers: vec![],
            network_backend: "netavark".into(),
            storage_driver: "overlay".into(),
            graph_root: graph.into(),
            run_root: run.into(),
            volume_path: format!("{graph}/volumes"),
            socket: sock.into(),
            mapped_ids: None,
        },
    )
}

#[test]
fn the_daemons_sandbox_hides_podmans_run_root_tmp_dir_and_exit_files_too_issue_17() {
    let hide = Sandbox::for_daemon(&settings(), &podman(false)).hide;
    for p in [
        "/srv/agentd/state",
        "/srv/agentd/audit",
        "/srv/agentd/desired/profiles",
        "/srv/agentd/desired/requests",
        "/var/lib/containers/storage",
        "/run/containers/storage",
        "/run/podman/podman.sock",
        "/run/libpod",
    ] {
        assert!(hide.contains(&PathBuf::from(p)), "{p} not hidden: {hide:?}");
    }
    if let Some(exits) = crate::runtime::podman::exit_dir() {
        assert!(hide.contains(&exits), "{exits:?} not hidden: {hide:?}");
    }
    let hide = Sandbox::for_daemon(&settings(), &podman(true)).hide;
    for p in [
        "/run/user/1001/containers",
        "/home/u/.local/share/containers/storage",
    ] {
        assert!(hide.contains(&PathBuf::from(p)), "{p} not hidden: {hide:?}");
    }
    // Rootless, the user's home stays clonable (a clone only reads);
    // the credentials in it stay hidden.
    if let Some(home) = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
    {
        assert!(!hide.contains(&home), "{home:?} hidden: {hide:?}");
        assert!(hide.contains(&home.join(".docker/config.json")), "{hide:?}");
    }
}

#[test]
fn helper_arguments_parse_and_refuse_what_is_not_absolute_issue_17() {
    let a = Args::parse(
        os(&[
            "--hide",
            "/s",
            "--keep",
            "/s/w/repo",
            "--home",
            "/s/h",
            "--hide",
            "/a",
            "--trust",
            "/r",
            "--",
            "git",
            "-c",
            "x=y",
            "clone",
        ])
        .into_iter(),
    )
    .expect("parses");
    assert_eq!(a.hide, vec![PathBuf::from("/s"), PathBuf::from("/a")]);
    assert_eq!(a.trust, vec![PathBuf::from("/r")]);
    assert_eq!(a.program, "git");
    assert_eq!(a.args, os(&["-c", "x=y", "clone"]));
    for bad in [
        &["--keep", "rel", "--home", "/h", "--", "git"][..],
        &["--keep", "/k", "--", "git"],
        &["--keep", "/k", "--home", "/h", "--"],
        &["--keep", "/k", "--home", "/h", "git"],
        &["--bogus", "/x", "--", "git"],
    ] {
        assert!(
            matches!(
                Args::parse(os(bad).into_iter()),
                Err(SandboxError::Usage(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn the_generated_config_trusts_exactly_the_given_paths_quoted_issue_17() {
    let text = gitconfig(&[
        PathBuf::from("/srv/git/a b.git"),
        PathBuf::from("/srv/git/q\"uote\\d"),
    ])
    .expect("config");
    assert_eq!(
        text,
        "[safe]\n\tdirectory = \"/srv/git/a b.git\"\n\tdirectory = \"/srv/git/q\\\"uote\\\\d\"\n"
    );
    assert!(!text.contains('*'));
    assert!(gitconfig(&[PathBuf::from("/srv/a\nb")]).is_err());
}

#[test]
fn the_command_names_every_hidden_folder_and_the_program_last_issue_17() {
    let s = Sandbox {
        exe: PathBuf::from("/bin/agentd"),
        hide: vec![PathBuf::from("/state"), PathBuf::from("/audit")],
    };
    let cmd = s.command(
        Path::new("/srv/r"),
        Path::new("/state/w/repo"),
        Path::new("/state/git-home"),
        &[PathBuf::from("/srv/r")],
        "git",
    );
    let argv: Vec<&OsStr> = cmd.as_std().get_args().collect();
    assert_eq!(
        argv,
        [
            SUBCOMMAND,
            "--hide",
            "/state",
            "--hide",
            "/audit",
            "--source",
            "/srv/r",
            "--keep",
            "/state/w/repo",
            "--home",
            "/state/git-home",
            "--trust",
            "/srv/r",
            "--",
            "git"
        ]
        .map(OsStr::new)
    );
    assert_eq!(cmd.as_std().get_program(), "/bin/agentd");
}
