//! Secret sources (issue 11): where a credential or the clone token comes
//! from. A profile names exactly one source per secret: the daemon's
//! environment, a systemd credential, a Podman secret or a file. Only the
//! form is checked here (PURE); whether the source exists is known when a
//! session starts, and a missing one is that session's `start_failed`.

use super::model::SecretSource;
use super::rules::{self, Problem};

/// The four source fields as written (a credential or `repo_token`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Given<'a> {
    pub source: Option<&'a str>,
    pub systemd_credential: Option<&'a str>,
    pub podman_secret: Option<&'a str>,
    pub file: Option<&'a str>,
}

/// The source fields, in the order they are documented.
pub const FIELDS: [&str; 4] = ["source", "systemd_credential", "podman_secret", "file"];

/// A problem with one secret: the field it is about (`None`: the secret as
/// a whole), and the message with its hint.
pub type Placed = (Option<&'static str>, Problem);

/// Whether `name` is a usable systemd credential name: one path component
/// of letters, digits, `.`, `_`, `-` (systemd's own rule is "a valid file
/// name"; agentd keeps to the portable subset so the name cannot climb out
/// of `$CREDENTIALS_DIRECTORY`).
pub fn systemd_credential_name(name: &str) -> bool {
    rules::path_component(name)
}

/// Whether `name` is a valid Podman secret name (Podman's own rule:
/// `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`, at most 253 characters). It also keeps
/// `,` and `=` out of `podman run --secret`.
pub fn podman_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 253
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The one source `g` names. `label` is how messages name the secret
/// (`credentials[0]`, `repo_token`); `token` refuses the
/// Podman form, which cannot reach git on the host.
pub fn source(label: &str, g: Given<'_>, token: bool) -> Result<SecretSource, Vec<Placed>> {
    let named: Vec<(&'static str, &str)> = FIELDS
        .iter()
        .zip([g.source, g.systemd_credential, g.podman_secret, g.file])
        .filter_map(|(f, v)| v.map(|v| (*f, v)))
        .collect();
    let forms = if token {
        "source (the daemon's env var), systemd_credential or file"
    } else {
        "source (the daemon's env var), systemd_credential, podman_secret or file"
    };
    let (field, value) = match named.as_slice() {
        [one] => *one,
        [] => {
            return Err(vec![(
                None,
                (
                    format!("{label} names no source"),
                    Some(format!("give exactly one of {forms}")),
                ),
            )]);
        }
        many => {
            let fields: Vec<&str> = many.iter().map(|(f, _)| *f).collect();
            return Err(vec![(
                None,
                (
                    format!(
                        "{label} names {} sources ({}); a secret comes from exactly one",
                        many.len(),
                        fields.join(", ")
                    ),
                    Some(format!("keep one of {forms}")),
                ),
            )]);
        }
    };
    let bad = |msg: String, hint: &str| -> Result<SecretSource, Vec<Placed>> {
        Err(vec![(Some(field), (msg, Some(hint.to_string())))])
    };
    match field {
        "source" if !rules::env_name(value) => bad(
            format!("{label}.source `{value}` is not an env var name"),
            "name the daemon's environment variable that holds the secret",
        ),
        "source" => Ok(SecretSource::Env(value.to_string())),
        "systemd_credential" if !systemd_credential_name(value) => bad(
            format!("{label}.systemd_credential `{value}` is not a credential name"),
            "use the name given to LoadCredential=NAME:... (letters, digits, . _ -, at most 128): agentd reads $CREDENTIALS_DIRECTORY/NAME",
        ),
        "systemd_credential" => Ok(SecretSource::SystemdCredential(value.to_string())),
        "podman_secret" if token => bad(
            format!("{label}.podman_secret: the clone token cannot come from a Podman secret"),
            "git uses the token on the host, and Podman (4.3) cannot hand a secret's value back to agentd; use systemd_credential, file or source",
        ),
        "podman_secret" if !podman_secret_name(value) => bad(
            format!("{label}.podman_secret `{value}` is not a Podman secret name"),
            "a Podman secret name starts with a letter or digit, then letters, digits, . _ - (at most 253)",
        ),
        "podman_secret" => Ok(SecretSource::PodmanSecret(value.to_string())),
        _ => match rules::clean_absolute(value) {
            Some(p) => Ok(SecretSource::File(p)),
            None => bad(
                format!("{label}.file `{value}` is not a clean absolute path"),
                "write it from `/`, without `.`, `..`, commas or control characters",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(field: &str, value: &'static str) -> Given<'static> {
        let mut g = Given::default();
        match field {
            "source" => g.source = Some(value),
            "systemd_credential" => g.systemd_credential = Some(value),
            "podman_secret" => g.podman_secret = Some(value),
            _ => g.file = Some(value),
        }
        g
    }

    #[test]
    fn each_form_gives_its_source_issue_11() {
        assert_eq!(
            source("c", given("source", "GH"), false),
            Ok(SecretSource::Env("GH".into()))
        );
        assert_eq!(
            source("c", given("systemd_credential", "gh.token"), true),
            Ok(SecretSource::SystemdCredential("gh.token".into()))
        );
        assert_eq!(
            source("c", given("podman_secret", "gh-token"), false),
            Ok(SecretSource::PodmanSecret("gh-token".into()))
        );
        assert_eq!(
            source("c", given("file", "/etc/agentd/gh"), false),
            Ok(SecretSource::File("/etc/agentd/gh".into()))
        );
    }

    #[test]
    fn bad_names_and_paths_are_refused_issue_11() {
        for (field, value) in [
            ("source", "bad-name"),
            ("systemd_credential", "../x"),
            ("systemd_credential", "a/b"),
            ("systemd_credential", ".."),
            ("podman_secret", "a,target=/etc"),
            ("podman_secret", "-x"),
            ("file", "relative/x"),
            ("file", "/etc/../x"),
        ] {
            let e = source("c", given(field, value), false).expect_err(value);
            assert_eq!(e[0].0, Some(field), "{value}");
            assert!(e[0].1.0.contains(value), "{:?}", e[0]);
        }
        assert!(!podman_secret_name(&"a".repeat(254)));
    }

    #[test]
    fn zero_or_two_sources_are_refused_issue_11() {
        let e = source("credentials[0]", Given::default(), false).expect_err("none");
        assert_eq!(e[0].1.0, "credentials[0] names no source");
        let g = Given {
            source: Some("A"),
            file: Some("/x"),
            ..Given::default()
        };
        let e = source("repo_token", g, true).expect_err("two");
        assert_eq!(
            e[0].1.0,
            "repo_token names 2 sources (source, file); a secret comes from exactly one"
        );
    }

    #[test]
    fn the_clone_token_cannot_be_a_podman_secret_issue_11() {
        let e = source("repo_token", given("podman_secret", "tok"), true).expect_err("token");
        assert!(e[0].1.0.contains("cannot come from a Podman secret"));
    }
}
