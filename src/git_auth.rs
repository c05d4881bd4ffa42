//! The token handed to one git run (a clone of the mirror, a push): HTTP
//! basic auth as `http.extraHeader`, passed through the environment (never
//! argv), with redirects off. The header is not scoped to a host, so a
//! redirect would move git's base URL and take the token wherever it points
//! (issue 17); with a token, no redirect is followed at all.

/// The environment that gives one git run `token` for its one URL.
pub fn token_env(token: &str) -> [(&'static str, String); 5] {
    let header = format!(
        "Authorization: Basic {}",
        base64(format!("x-access-token:{token}").as_bytes())
    );
    [
        ("GIT_CONFIG_COUNT", "2".into()),
        ("GIT_CONFIG_KEY_0", "http.extraHeader".into()),
        ("GIT_CONFIG_VALUE_0", header),
        ("GIT_CONFIG_KEY_1", "http.followRedirects".into()),
        ("GIT_CONFIG_VALUE_1", "false".into()),
    ]
}

/// Standard base64 (RFC 4648) for the HTTP auth header.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn the_token_goes_as_basic_auth_and_no_redirect_is_followed() {
        let env = token_env("s3cret");
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_CONFIG_COUNT"), Some("2"));
        assert_eq!(get("GIT_CONFIG_KEY_0"), Some("http.extraHeader"));
        assert_eq!(
            get("GIT_CONFIG_VALUE_0"),
            Some(format!("Authorization: Basic {}", base64(b"x-access-token:s3cret")).as_str())
        );
        assert_eq!(get("GIT_CONFIG_KEY_1"), Some("http.followRedirects"));
        assert_eq!(get("GIT_CONFIG_VALUE_1"), Some("false"));
    }
}
