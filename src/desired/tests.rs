//! Data-driven validation tests: each case is a set of files and the exact
//! diagnostics `agentd validate` must print for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

/// A host with a few known paths; nothing else exists.
struct FakeHost {
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: Vec<PathBuf>,
}

impl FakeHost {
    fn new(inputs: &[(&str, &str)]) -> Self {
        let mut files: BTreeMap<PathBuf, Vec<u8>> = inputs
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.as_bytes().to_vec()))
            .collect();
        files.insert(
            "/srv/meth/schemas/review.schema.json".into(),
            br#"{"type":"object","required":["pr"],"properties":{"pr":{"type":"integer"}}}"#
                .to_vec(),
        );
        files.insert(
            "/srv/meth/schemas/broken.schema.json".into(),
            b"{nope".to_vec(),
        );
        files.insert("d/requests/pr.json".into(), br#"{"pr": 7}"#.to_vec());
        files.insert("d/requests/bad.json".into(), b"{".to_vec());
        FakeHost {
            files,
            dirs: vec!["/srv/meth".into(), "/srv/data".into(), "/srv".into()],
        }
    }
}

impl HostView for FakeHost {
    fn exists(&self, path: &Path) -> bool {
        self.is_dir(path) || self.files.contains_key(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d == path)
    }
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        self.files.get(path).cloned()
    }
}

const BASE: (&str, &str) = (
    "d/profiles/base.toml",
    "base_image = \"img\"\ncommand = [\"run\"]\nrepo = \"https://example.com/r.git\"\nmethodology_dir = \"/srv/meth\"\n",
);

/// Load `files` (plus the BASE profile) and render every diagnostic.
fn diagnostics(files: &[(&str, &str)]) -> Vec<String> {
    let mut all = vec![BASE];
    all.extend_from_slice(files);
    let host = FakeHost::new(&all);
    let inputs: Vec<(Kind, &Path, &[u8])> = all
        .iter()
        .map(|(p, c)| {
            let kind = if p.contains("/profiles/") {
                Kind::Profile
            } else {
                Kind::Request
            };
            (kind, Path::new(*p), c.as_bytes())
        })
        .collect();
    let (_, diags) = load(&inputs, &host);
    diags.iter().map(ToString::to_string).collect()
}

#[test]
fn network_host_is_an_error_naming_the_flag_unless_the_host_allows_it_issue_17() {
    let text = "base_image = \"i\"\ncommand = [\"x\"]\nnetwork = \"host\"\n";
    let got = diagnostics(&[("d/profiles/h.toml", text)]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("d/profiles/h.toml:3:1: network `host` shares the host's network"),
        "{got:?}"
    );
    assert!(got[0].contains("--allow-host-network"), "{got:?}");
    let host = FakeHost::new(&[("d/profiles/h.toml", text)]);
    let allowing = AllowHostNetwork(host);
    let p = validate_profile(Path::new("d/profiles/h.toml"), text.as_bytes(), &allowing)
        .expect("valid with the flag");
    assert_eq!(p.network, Network::Named("host".into()));
    // Other names are Podman networks as before.
    let text = "base_image = \"i\"\ncommand = [\"x\"]\nnetwork = \"hostnet\"\n";
    assert!(diagnostics(&[("d/profiles/n.toml", text)]).is_empty());
}

/// One bad input and the diagnostic it must produce (the hint is checked
/// separately by `every_diagnostic_has_a_hint_or_position`).
struct Case {
    path: &'static str,
    text: &'static str,
    expect: &'static str,
}

const P: &str = "d/profiles/p.toml";
const PY: &str = "d/profiles/p.yaml";
const R: &str = "d/requests/r.toml";
const RY: &str = "d/requests/r.yaml";

const CASES: &[Case] = &[
    // --- syntax and shape ---
    Case {
        path: P,
        text: "base_image = \n",
        expect: "d/profiles/p.toml:1:14: string values must be quoted, expected literal string",
    },
    Case {
        path: PY,
        text: "base_image: [unclosed\n",
        expect: "d/profiles/p.yaml:1:13: expected string scalar",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nbogus = 1\n",
        expect: "d/profiles/p.toml:3:1: unknown field `bogus`, expected one of",
    },
    Case {
        path: PY,
        text: "base_image: i\ncommand: [x]\nbogus: 1\n",
        expect: "d/profiles/p.yaml:3:1: unknown field `bogus`",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = \"x\"\n",
        expect: "d/profiles/p.toml:2:11: invalid type: string \"x\", expected a sequence",
    },
    Case {
        path: P,
        text: "command = [\"x\"]\n",
        expect: "d/profiles/p.toml:1:1: missing field `base_image`",
    },
    Case {
        path: PY,
        text: "base_image: i\n",
        expect: "d/profiles/p.yaml:1:1: missing field `command`",
    },
    Case {
        path: P,
        text: "",
        expect: "d/profiles/p.toml: file is empty",
    },
    Case {
        path: P,
        text: "   \n\n",
        expect: "d/profiles/p.toml: file is empty",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\0\n",
        expect: "d/profiles/p.toml: file is binary (contains NUL bytes)",
    },
    Case {
        path: P,
        text: "history_limit = -1\nbase_image = \"i\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/p.toml:1:17: invalid value: integer `-1`, expected u32",
    },
    // --- profile semantics ---
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = []\n",
        expect: "d/profiles/p.toml:2:1: command is empty",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"\"]\n",
        expect: "d/profiles/p.toml:2:1: command[0] (the program) is empty",
    },
    Case {
        path: P,
        text: "base_image = \"\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/p.toml:1:1: base_image is empty or not an image reference",
    },
    Case {
        path: P,
        text: "base_image = \"--privileged\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/p.toml:1:1: base_image is empty or not an image reference",
    },
    Case {
        path: P,
        text: "name = \"q\"\nbase_image = \"i\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/p.toml:1:1: name `q` does not match the file name `p`",
    },
    Case {
        path: "d/profiles/Site.toml",
        text: "base_image = \"i\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/Site.toml: invalid profile name `Site`",
    },
    Case {
        path: "d/profiles/root.toml",
        text: "base_image = \"i\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/root.toml: profile name `root` is reserved",
    },
    Case {
        path: "d/profiles/abcdefghijklmnopqrstuvwxyz0123456.toml",
        text: "base_image = \"i\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/abcdefghijklmnopqrstuvwxyz0123456.toml: invalid profile name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"ftp://h/x\"\n",
        expect: "d/profiles/p.toml:3:1: repo URL scheme `ftp` is not supported",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"https://alice:hunter2@github.com/a/b\"\n",
        expect: "d/profiles/p.toml:3:1: repo URL embeds credentials (https://***@github.com/a/b)",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"src/repo\"\n",
        expect: "d/profiles/p.toml:3:1: repo `src/repo` is neither a URL nor an absolute path",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"file://rel\"\n",
        expect: "d/profiles/p.toml:3:1: file URL `file://rel` must name an absolute path",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\nschedule = \"* * * *\"\n",
        expect: "d/profiles/p.toml:4:1: invalid schedule `* * * *`: expected 5 fields, found 4",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\nschedule = \"0 0 * * * *\"\n",
        expect: "d/profiles/p.toml:4:1: invalid schedule `0 0 * * * *`: expected 5 fields, found 6",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/r\"\nschedule = \"75 * * * *\"\n",
        expect: "d/profiles/p.toml:4:1: invalid schedule `75 * * * *`: ",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nschedule = \"@hourly\"\n",
        expect: "d/profiles/p.toml:3:1: schedule requires repo",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nstarting_deadline = \"5m\"\n",
        expect: "d/profiles/p.toml:3:1: starting_deadline needs a schedule",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nconcurrency_policy = \"sometimes\"\n",
        expect: "d/profiles/p.toml:3:22: unknown variant `sometimes`, expected one of `allow`, `forbid`, `replace`",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ntimeout = \"10 minutes\"\n",
        expect: "d/profiles/p.toml:3:1: invalid duration `10 minutes`",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ntimeout = \"0s\"\n",
        expect: "d/profiles/p.toml:3:1: duration `0s` is zero",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nmounts = [{ source = \"srv\", target = \"/m\" }]\n",
        expect: "d/profiles/p.toml:3:13: mounts[0].source `srv` is not a clean absolute path",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nmounts = [{ source = \"/nope\", target = \"/m\" }]\n",
        expect: "d/profiles/p.toml:3:13: mounts[0].source `/nope` does not exist",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nmounts = [{ source = \"/srv/data\", target = \"m\" }]\n",
        expect: "d/profiles/p.toml:3:35: mounts[0].target `m` is not a clean absolute path",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nmounts = [{ source = \"/srv/data\", target = \"/agentd/in\" }]\n",
        expect: "d/profiles/p.toml:3:35: mounts[0].target `/agentd/in` is reserved: `/agentd` and below are reserved for agentd",
    },
    Case {
        path: PY,
        text: "base_image: i\ncommand: [x]\nmounts:\n  - source: /srv/data\n    target: /home/p/repo/x\n",
        expect: "d/profiles/p.yaml:5:5: mounts[0].target `/home/p/repo/x` is reserved: `/home/p/repo` and below are reserved for agentd",
    },
    Case {
        path: PY,
        text: "base_image: i\ncommand: [x]\nmounts:\n  - source: /srv/data\n    target: /home\n",
        expect: "d/profiles/p.yaml:5:5: mounts[0].target `/home` is reserved: it would cover `/home/p/repo`, which agentd provides",
    },
    Case {
        path: PY,
        text: "base_image: i\ncommand: [x]\nmounts:\n  - source: /srv/data\n    target: /data\n  - source: /srv\n    target: /data/sub\n",
        expect: "d/profiles/p.yaml:3:1: mount targets `/data` and `/data/sub` overlap",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"1TOKEN\", source = \"T\" }]\n",
        expect: "d/profiles/p.toml:3:18: credentials[0].name `1TOKEN` is not a usable env var name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"AGENTD_X\", source = \"T\" }]\n",
        expect: "d/profiles/p.toml:3:18: credentials[0].name `AGENTD_X` is not a usable env var name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"agentd_v\", source = \"T\" }]\n",
        expect: "d/profiles/p.toml:3:18: credentials[0].name `agentd_v` is not a usable env var name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"T\", source = \"A\" }, { name = \"T\", source = \"B\" }]\n",
        expect: "d/profiles/p.toml:3:1: credential `T` is listed twice",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"T\", source = \"bad-name\" }]\n",
        expect: "d/profiles/p.toml:3:30: credentials[0].source `bad-name` is not an env var name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo_token_source = \"$TOKEN\"\n",
        expect: "d/profiles/p.toml:3:1: repo_token_source `$TOKEN` is not an env var name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\n[env]\nHOME = \"/x\"\n",
        expect: "d/profiles/p.toml:4:1: env key `HOME` is not a usable env var name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"T\", source = \"A\" }]\n[env]\nT = \"x\"\n",
        expect: "d/profiles/p.toml:5:1: env key `T` is also a credential name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nmethodology_dir = \"/nope\"\n",
        expect: "d/profiles/p.toml:3:1: methodology_dir `/nope` is not an existing folder",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nmemory = \"lots\"\n",
        expect: "d/profiles/p.toml:3:1: invalid memory limit `lots`",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncpus = 0\n",
        expect: "d/profiles/p.toml:3:1: cpus must be a positive number, got 0",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncpus = -1.5\n",
        expect: "d/profiles/p.toml:3:1: cpus must be a positive number, got -1.5",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\npids_limit = 0\n",
        expect: "d/profiles/p.toml:3:1: pids_limit must be at least 1, got 0",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nnetwork = \"-host\"\n",
        expect: "d/profiles/p.toml:3:1: invalid network `-host`",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nmax_concurrent = 0\n",
        expect: "d/profiles/p.toml:3:1: max_concurrent must be at least 1",
    },
    Case {
        path: "d/profiles/base.yaml",
        text: "base_image: i\ncommand: [x]\n",
        expect: "d/profiles/base.toml: duplicate profile `base`: defined by d/profiles/base.toml and d/profiles/base.yaml",
    },
    Case {
        path: "d/profiles/team/base.toml",
        text: "base_image = \"i\"\ncommand = [\"x\"]\n",
        expect: "d/profiles/team/base.toml: duplicate profile `base`: defined by d/profiles/base.toml and d/profiles/team/base.toml",
    },
    // --- requests ---
    Case {
        path: R,
        text: "repo = \"/r\"\n",
        expect: "d/requests/r.toml:1:1: missing field `profile`",
    },
    Case {
        path: R,
        text: "profile = \"ghost\"\n",
        expect: "d/requests/r.toml:1:1: profile `ghost` not found",
    },
    // A request writer squatting a fire's name (issue 13).
    Case {
        path: "d/requests/nightly-20260101T0200.toml",
        text: "profile = \"base\"\n",
        expect: "d/requests/nightly-20260101T0200.toml:1:1: request id `nightly-20260101T0200` is the name of a scheduled fire of profile `nightly`",
    },
    Case {
        path: "d/requests/base-20260101T0200.toml",
        text: "profile = \"base\"\n",
        expect: "d/requests/base-20260101T0200.toml:1:1: request id `base-20260101T0200` is the name of a scheduled fire of profile `base`",
    },
    Case {
        path: "d/requests/Fix-1.toml",
        text: "profile = \"base\"\n",
        expect: "d/requests/Fix-1.toml: invalid request id `Fix-1` (the file name)",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nwork_unit = \"a\"\nrequest = \"b\"\n",
        expect: "d/requests/r.toml:3:1: work_unit and request are mutually exclusive",
    },
    Case {
        path: RY,
        text: "profile: base\nrequest: b\nartifact: {type: review, json: '{}'}\n",
        expect: "d/requests/r.yaml:3:1: request and artifact are mutually exclusive",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nartifact = { type = \"review\", json = \"{oops\" }\n",
        expect: "d/requests/r.toml:2:31: artifact json is not valid JSON: key must be a string at line 1 column 2",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nartifact = { type = \"review\" }\n",
        expect: "d/requests/r.toml:2:1: artifact needs exactly one of `path` and `json`",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nartifact = { type = \"../etc\", json = \"{}\" }\n",
        expect: "d/requests/r.toml:2:14: artifact type `../etc` is not a plain name",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nartifact = { type = \"review\", path = \"missing.json\" }\n",
        expect: "d/requests/r.toml:2:31: artifact file `d/requests/missing.json` cannot be read",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nartifact = { type = \"review\", path = \"bad.json\" }\n",
        expect: "d/requests/r.toml:2:31: artifact file `d/requests/bad.json` is not valid JSON",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nartifact = { type = \"review\", json = '{\"pr\": \"seven\"}' }\n",
        expect: "d/requests/r.toml:2:1: artifact does not match `/srv/meth/schemas/review.schema.json`: /pr \"seven\" is not of type \"integer\"",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nartifact = { type = \"broken\", json = '{}' }\n",
        expect: "d/requests/r.toml:2:1: schema `/srv/meth/schemas/broken.schema.json` is not valid JSON",
    },
    Case {
        path: R,
        text: "profile = \"base\"\ntimeout = \"forever\"\n",
        expect: "d/requests/r.toml:2:1: invalid duration `forever`",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nscheduled_for = \"yesterday\"\n",
        expect: "d/requests/r.toml:2:1: scheduled_for `yesterday` is not an RFC 3339 time",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nrepo = \"https://tok@github.com/x\"\n",
        expect: "d/requests/r.toml:2:1: repo URL embeds credentials (https://***@github.com/x)",
    },
    // --- repositories a request may name (issue 13) ---
    Case {
        path: R,
        text: "profile = \"base\"\nrepo = \"https://example.com/other.git\"\n",
        expect: "d/requests/r.toml:2:1: repo: `https://example.com/other.git` differs from profile `base`'s repo `https://example.com/r.git`, and the profile has no allowed_repos; hint: add a pattern to allowed_repos in profile base (d/profiles/base.toml)",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nrepo = \"/var/lib/agentd\"\n",
        expect: "d/requests/r.toml:2:1: repo: `/var/lib/agentd` differs from profile `base`'s repo",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"http://git.example.com/a.git\"\nrepo_token_source = \"TOK\"\n",
        expect: "d/profiles/p.toml:4:1: repo_token_source `TOK` would send the clone token over plain http:// (repo `http://git.example.com/a.git`); hint: use an https:// repo URL",
    },
    // --- secret sources (issue 11) ---
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"T\" }]\n",
        expect: "d/profiles/p.toml:3:18: credentials[0] names no source; hint: give exactly one of source (the daemon's env var), systemd_credential, podman_secret or file",
    },
    Case {
        path: PY,
        text: "base_image: i\ncommand: [x]\ncredentials:\n  - name: A\n    source: A\n  - name: T\n    source: T\n    file: /etc/t\n",
        expect: "d/profiles/p.yaml:6:5: credentials[1] names 2 sources (source, file); a secret comes from exactly one",
    },
    Case {
        path: PY,
        text: "base_image: i\ncommand: [x]\ncredentials:\n  - {name: A, file: /etc/a}\n  - {name: T, file: etc/t}\n",
        expect: "d/profiles/p.yaml:5:15: credentials[1].file `etc/t` is not a clean absolute path",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"T\", systemd_credential = \"../etc/shadow\" }]\n",
        expect: "d/profiles/p.toml:3:30: credentials[0].systemd_credential `../etc/shadow` is not a credential name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"T\", podman_secret = \"a,target=/etc\" }]\n",
        expect: "d/profiles/p.toml:3:30: credentials[0].podman_secret `a,target=/etc` is not a Podman secret name",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\ncredentials = [{ name = \"T\", vault = \"x\" }]\n",
        expect: "d/profiles/p.toml:3:30: unknown field `vault`, expected one of `name`, `source`, `systemd_credential`, `podman_secret`, `file`",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo_token_source = \"TOK\"\nrepo_token = { file = \"/etc/tok\" }\n",
        expect: "d/profiles/p.toml:4:1: repo_token and repo_token_source are exclusive",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo_token = { podman_secret = \"tok\" }\n",
        expect: "d/profiles/p.toml:3:1: repo_token.podman_secret: the clone token cannot come from a Podman secret; hint: git uses the token on the host",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo_token = {}\n",
        expect: "d/profiles/p.toml:3:1: repo_token names no source; hint: give exactly one of source (the daemon's env var), systemd_credential or file",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"http://git.example.com/a.git\"\nrepo_token = { systemd_credential = \"tok\" }\n",
        expect: "d/profiles/p.toml:4:1: repo_token (systemd credential `tok`) would send the clone token over plain http:// (repo `http://git.example.com/a.git`); hint: use an https:// repo URL, or remove repo_token",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nallowed_repos = [\"/srv/git/*\", \"**\"]\n",
        expect: "d/profiles/p.toml:3:1: allowed_repos[1]: pattern `**` must start with a scheme (`https://`) or `/`",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nallowed_repos = [\"https://u:pw@h/*\"]\n",
        expect: "d/profiles/p.toml:3:1: allowed_repos[0]: pattern `https://u:pw@h/*`: repo URL embeds credentials",
    },
    Case {
        path: P,
        text: "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"/srv/git/../../root\"\n",
        expect: "d/profiles/p.toml:3:1: repo `/srv/git/../../root` has a `.` or `..` path segment",
    },
    Case {
        path: R,
        text: "profile = \"base\"\nextra = true\n",
        expect: "d/requests/r.toml:2:1: unknown field `extra`",
    },
    Case {
        path: "d/requests/r.yml",
        text: "profile: base\n",
        expect: "d/requests/r.toml: duplicate request `r`: defined by d/requests/r.toml and d/requests/r.yml",
    },
];

#[test]
fn every_bad_input_gets_its_message() {
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let mut files = vec![(case.path, case.text)];
        // Duplicate cases need a partner file.
        if case.path == "d/requests/r.yml" {
            files.push((R, "profile = \"base\"\n"));
        }
        let got = diagnostics(&files);
        if !got.iter().any(|d| d.starts_with(case.expect)) {
            failures.push(format!(
                "case {i} ({}): expected a line starting with\n    {}\n  got\n    {}",
                case.path,
                case.expect,
                got.join("\n    ")
            ));
        }
    }
    assert!(CASES.len() >= 30);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn every_diagnostic_has_a_hint_or_position() {
    for case in CASES {
        for d in diagnostics(&[(case.path, case.text)]) {
            let placed = d
                .split(':')
                .nth(1)
                .is_some_and(|s| s.parse::<u32>().is_ok());
            assert!(
                placed || d.contains("; hint: "),
                "neither placed nor hinted: {d}"
            );
        }
    }
}

#[test]
fn credentials_in_urls_are_never_echoed() {
    let out = diagnostics(&[(
        P,
        "base_image = \"i\"\ncommand = [\"x\"]\nrepo = \"https://alice:hunter2@github.com/a/b\"\n",
    )]);
    assert!(
        out.iter()
            .all(|d| !d.contains("hunter2") && !d.contains("alice")),
        "{out:?}"
    );
}

#[test]
fn all_problems_of_a_file_are_reported_together() {
    let out = diagnostics(&[(
        P,
        "base_image = \"\"\ncommand = []\ntimeout = \"x\"\nmemory = \"y\"\n",
    )]);
    assert_eq!(out.len(), 4, "{out:#?}");
}

#[test]
fn valid_files_produce_the_model() {
    let files = [
        (
            "d/profiles/rev.yaml",
            "base_image: img\ncommand: [sh, -c, review]\nrepo: file:///srv/git/x\nschedule: '@hourly'\nconcurrency_policy: forbid\nallowed_repos: ['file:///srv/git/*']\ncredentials:\n  - {name: GH_TOKEN, source: HOST_GH}\nenv: {LANG: C.UTF-8}\nmounts:\n  - {source: /srv/data, target: /data, read_only: false}\ntimeout: 1h30m\nnetwork: none\nsuspend: true\n",
        ),
        (
            "d/requests/one.toml",
            "profile = \"rev\"\nwork_unit = \"PR-7\"\n",
        ),
        (
            "d/requests/three.toml",
            "profile = \"rev\"\nrepo = \"/srv/git/other\"\n",
        ),
        (
            "d/requests/four.toml",
            "profile = \"rev\"\nrepo = \"/srv/git/x/\"\n",
        ),
        (
            "d/requests/two.toml",
            "profile = \"base\"\nartifact = { type = \"review\", path = \"pr.json\" }\n",
        ),
    ];
    let mut all = vec![BASE];
    all.extend_from_slice(&files);
    let host = FakeHost::new(&all);
    let inputs: Vec<(Kind, &Path, &[u8])> = all
        .iter()
        .map(|(p, c)| {
            (
                if p.contains("/profiles/") {
                    Kind::Profile
                } else {
                    Kind::Request
                },
                Path::new(*p),
                c.as_bytes(),
            )
        })
        .collect();
    let (d, diags) = load(&inputs, &host);
    assert!(diags.is_empty(), "{diags:?}");
    let rev = &d.profiles["rev"];
    assert_eq!(rev.concurrency_policy, ConcurrencyPolicy::Forbid);
    assert_eq!(rev.timeout, Some(std::time::Duration::from_secs(5400)));
    assert_eq!(rev.network, Network::None);
    assert!(rev.suspend && !rev.mounts[0].read_only);
    assert_eq!(rev.history_limit, 10);
    let RequestEntry::Valid(one) = &d.requests["one"] else {
        panic!("one invalid")
    };
    assert_eq!(one.input, Input::WorkUnit("PR-7".into()));
    assert_eq!(one.spec_sha256, sha256_hex(files[1].1.as_bytes()));
    // A request may name a repository its profile allows, as a local path
    // for a `file://` pattern or the profile's own repo with a trailing `/`.
    assert!(matches!(&d.requests["three"], RequestEntry::Valid(_)));
    assert!(matches!(&d.requests["four"], RequestEntry::Valid(_)));
    let RequestEntry::Valid(two) = &d.requests["two"] else {
        panic!("two invalid")
    };
    assert!(
        matches!(&two.input, Input::Artifact { kind, stem, .. } if kind == "review" && stem == "pr")
    );
}

#[test]
fn candidate_names() {
    for ok in ["a.toml", "a.yaml", "a.yml", "fix.1.toml"] {
        assert!(is_candidate(ok), "{ok}");
    }
    for junk in [
        ".a.toml",
        "a.toml~",
        "a.toml.swp",
        ".a.toml.swp",
        "a.tmp",
        "#a.toml#",
        "4913",
        "a.json",
        "README.md",
        "a.toml.tmp",
    ] {
        assert!(!is_candidate(junk), "{junk}");
    }
}

mod props {
    use super::*;
    use crate::testkit::within_budget;
    use proptest::prelude::*;

    struct Nothing;
    impl HostView for Nothing {
        fn exists(&self, _: &Path) -> bool {
            false
        }
        fn is_dir(&self, _: &Path) -> bool {
            false
        }
        fn read(&self, _: &Path) -> Option<Vec<u8>> {
            None
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn loaders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for path in ["d/profiles/x.toml", "d/profiles/x.yaml", "d/requests/x.toml", "d/requests/x.yml"] {
                let kind = if path.contains("profiles") { Kind::Profile } else { Kind::Request };
                // Issue 17: and in budget (1 s, 64 MiB), on a 2 MiB stack.
                within_budget(path, || load(&[(kind, Path::new(path), &bytes)], &Nothing), |_| ())
                    .map_err(TestCaseError::fail)?;
            }
        }

        #[test]
        fn loaders_never_panic_on_config_like_text(text in "[a-z_ =:\\[\\]{}\"',.\\-\n/@*&!?0-9]{0,400}") {
            for path in ["d/profiles/x.toml", "d/profiles/x.yaml", "d/requests/x.toml", "d/requests/x.yaml"] {
                let kind = if path.contains("profiles") { Kind::Profile } else { Kind::Request };
                within_budget(path, || load(&[(kind, Path::new(path), text.as_bytes())], &Nothing), |_| ())
                    .map_err(TestCaseError::fail)?;
            }
        }
    }

    #[test]
    fn huge_files_are_rejected_quickly() {
        let big = "a".repeat(5 * 1024 * 1024);
        let start = std::time::Instant::now();
        let (_, d) = load(
            &[(
                Kind::Profile,
                Path::new("d/profiles/x.yaml"),
                big.as_bytes(),
            )],
            &Nothing,
        );
        assert!(d[0].message.starts_with("file is too large"), "{d:?}");
        // Deeply nested YAML within the size cap must not overflow the stack.
        let nested = "[".repeat(200_000);
        let (_, d) = load(
            &[(
                Kind::Profile,
                Path::new("d/profiles/x.yaml"),
                nested.as_bytes(),
            )],
            &Nothing,
        );
        assert_eq!(d.len(), 1);
        let nested = "a = ".to_string() + &"[".repeat(200_000);
        let (_, d) = load(
            &[(
                Kind::Profile,
                Path::new("d/profiles/x.toml"),
                nested.as_bytes(),
            )],
            &Nothing,
        );
        assert_eq!(d.len(), 1);
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }
}

// --- issue 13: a request cannot widen its profile or exhaust the daemon ---

#[test]
fn a_request_timeout_may_only_shorten_the_profiles_issue_13() {
    let capped = (
        "d/profiles/capped.toml",
        "base_image = \"img\"\ncommand = [\"run\"]\nrepo = \"/r\"\ntimeout = \"1h\"\n",
    );
    let got = diagnostics(&[
        capped,
        (
            "d/requests/long.toml",
            "profile = \"capped\"\ntimeout = \"2h\"\n",
        ),
        (
            "d/requests/short.toml",
            "profile = \"capped\"\ntimeout = \"30m\"\n",
        ),
        (
            "d/requests/forever.toml",
            "profile = \"base\"\ntimeout = \"25h\"\n",
        ),
        (
            "d/requests/day.toml",
            "profile = \"base\"\ntimeout = \"24h\"\n",
        ),
    ]);
    assert_eq!(
        got,
        vec![
            "d/requests/forever.toml:2:1: timeout 25h is longer than the default timeout (24h); a request may only shorten it; hint: lower the request's `timeout`, or raise the profile's",
            "d/requests/long.toml:2:1: timeout 2h is longer than profile `capped`'s timeout (1h); a request may only shorten it; hint: lower the request's `timeout`, or raise the profile's",
        ]
    );
}

#[test]
fn request_fields_have_size_caps_with_a_clear_message_issue_13() {
    let big_unit = format!(
        "profile = \"base\"\nwork_unit = \"{}\"\n",
        "x".repeat(128 * 1024)
    );
    let ok_unit = format!(
        "profile = \"base\"\nwork_unit = \"{}\"\n",
        "x".repeat(MAX_WORK_UNIT_BYTES)
    );
    let big_text = format!(
        "profile = \"base\"\nrequest = \"{}\"\n",
        "y".repeat(MAX_REQUEST_TEXT_BYTES + 1)
    );
    let big_json = format!(
        "profile = \"base\"\n[artifact]\ntype = \"blob\"\njson = \"[{}0]\"\n",
        "0,".repeat(MAX_ARTIFACT_BYTES / 4)
    );
    let got = diagnostics(&[
        ("d/requests/unit.toml", &big_unit),
        ("d/requests/okunit.toml", &ok_unit),
        ("d/requests/text.toml", &big_text),
        ("d/requests/art.toml", &big_json),
    ]);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got[1].starts_with(
            "d/requests/text.toml:2:1: request is too large (65537 bytes; the limit is 65536 bytes)"
        ),
        "{got:#?}"
    );
    assert!(got[2].starts_with("d/requests/unit.toml:2:1: work_unit is too large (131072 bytes; the limit is 4096 bytes)"), "{got:#?}");
    // The inline artifact fits the 256 KiB file cap, so it is the file cap
    // that speaks first; an artifact file over 1 MiB is refused on its own.
    assert!(
        got[0].starts_with("d/requests/art.toml: file is too large"),
        "{got:#?}"
    );
}

#[test]
fn an_artifact_file_over_its_cap_is_refused_issue_13() {
    struct Big;
    impl HostView for Big {
        fn exists(&self, _: &Path) -> bool {
            false
        }
        fn is_dir(&self, _: &Path) -> bool {
            false
        }
        fn read(&self, _: &Path) -> Option<Vec<u8>> {
            None
        }
        fn read_beneath(&self, base: &Path, rel: &Path, cap: usize) -> Result<Vec<u8>, String> {
            assert_eq!(
                base,
                Path::new("d/requests"),
                "artifacts stay below requests/"
            );
            assert_eq!(rel, Path::new("team/in/a.json"));
            Ok(vec![b' '; cap + 1])
        }
    }
    let err = validate_request(
        Path::new("d/requests/team/r.toml"),
        b"profile = \"p\"\n[artifact]\ntype = \"t\"\npath = \"in/a.json\"\n",
        &Big,
    )
    .expect_err("too large");
    assert!(
        err[0].to_string().contains("is too large (over 1024 KiB)"),
        "{err:?}"
    );
}

#[test]
fn every_secret_source_form_is_valid_issue_11() {
    let text = "base_image: img\ncommand: [x]\nrepo: https://example.com/r.git\nrepo_token: {systemd_credential: clone.token}\ncredentials:\n  - {name: A, source: HOST_A}\n  - {name: B, systemd_credential: b.key}\n  - {name: C, podman_secret: c-key}\n  - {name: D, file: /etc/agentd/d}\n";
    let host = FakeHost::new(&[]);
    let p = validate_profile(Path::new("d/profiles/s.yaml"), text.as_bytes(), &host)
        .expect("valid profile");
    let sources: Vec<_> = p.credentials.iter().map(|c| c.source.clone()).collect();
    assert_eq!(
        sources,
        [
            SecretSource::Env("HOST_A".into()),
            SecretSource::SystemdCredential("b.key".into()),
            SecretSource::PodmanSecret("c-key".into()),
            SecretSource::File("/etc/agentd/d".into()),
        ]
    );
    assert_eq!(
        p.repo_token,
        Some(SecretSource::SystemdCredential("clone.token".into()))
    );
    let p = validate_profile(
        Path::new("d/profiles/s.toml"),
        b"base_image = \"i\"\ncommand = [\"x\"]\nrepo_token_source = \"TOK\"\n",
        &host,
    )
    .expect("valid profile");
    assert_eq!(p.repo_token, Some(SecretSource::Env("TOK".into())));
}
