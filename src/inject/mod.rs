//! Injected credentials (issue 21): a credential whose value never enters
//! the session. The session's variable holds a random placeholder; for the
//! credential's hosts only, the egress proxy terminates the agent's TLS
//! with a leaf of a per-daemon CA, checks every request on the connection
//! and puts `format(value)` in the named header where the agent put the
//! placeholder, then forwards over TLS it verifies.
//!
//! - `placeholder`: the random stand-ins, kept 0600 in the state dir so a
//!   restarted daemon recognises them.
//! - `check`: PURE: what a request head may carry (`Host`, placeholders),
//!   and the substitution; also the absolute-form plaintext check.
//! - `ca`: the daemon CA, the leaves, the TLS configurations of both sides,
//!   the bundle files a session trusts.
//! - `intercept`: one intercepted connection, from the agent's TLS
//!   handshake to its end; `io`: the stream wrappers it meters through.
//! - `session`: one session's interceptions by target, its placeholders,
//!   and the CA variables it gets.
//!
//! The value is held in a [`SecretValue`] (zeroed on drop, never printed);
//! it reaches the wire as one header value and appears in no error, log
//! line or record.

pub mod ca;
pub mod check;
pub mod intercept;
pub mod io;
pub mod placeholder;
pub mod session;
#[doc(hidden)]
pub mod testkit;

use std::fmt;

use zeroize::Zeroizing;

pub use placeholder::Placeholder;

/// A credential's value: zeroed when dropped, never printed.
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Take ownership of the bytes (the caller's copy is the caller's to zero).
    pub fn new(bytes: Vec<u8>) -> SecretValue {
        SecretValue(Zeroizing::new(bytes))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Why a credential cannot be injected; never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(
        "the value of credential `{name}` cannot go in a header: it holds a control character or a line break (hint: store the bare token, one line)"
    )]
    NotAHeaderValue { name: String },
    #[error("the value of credential `{name}` is empty (hint: check its source)")]
    Empty { name: String },
}

/// One credential as the proxy applies it on its hosts.
#[derive(Debug)]
pub struct Injection {
    /// The session's variable (for messages; not secret).
    pub name: String,
    pub placeholder: Placeholder,
    /// Lower-case header name (validated with the profile).
    pub header: String,
    /// The header value is `prefix` + value + `suffix`.
    pub prefix: String,
    pub suffix: String,
    value: SecretValue,
}

impl Injection {
    /// `Err` when the value could not be a header value (a line break
    /// would let it split the request); the error does not hold it.
    pub fn new(
        name: &str,
        placeholder: Placeholder,
        inject: &crate::desired::Inject,
        value: SecretValue,
    ) -> Result<Injection, InjectError> {
        let v = value.bytes();
        if v.is_empty() {
            return Err(InjectError::Empty { name: name.into() });
        }
        if !v
            .iter()
            .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80)
        {
            return Err(InjectError::NotAHeaderValue { name: name.into() });
        }
        Ok(Injection {
            name: name.to_string(),
            placeholder,
            header: inject.header.clone(),
            prefix: inject.prefix.clone(),
            suffix: inject.suffix.clone(),
            value,
        })
    }

    /// `format(value)`: the one copy that goes on the wire, zeroed when
    /// dropped.
    fn header_value(&self) -> Zeroizing<Vec<u8>> {
        let v = self.value.bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(
            self.prefix.len() + v.len() + self.suffix.len(),
        ));
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(v);
        out.extend_from_slice(self.suffix.as_bytes());
        out
    }

    /// `format(placeholder)`: what a client that formats the variable
    /// itself (`Authorization: Bearer $TOKEN`) sends.
    fn formatted_placeholder(&self) -> String {
        format!(
            "{}{}{}",
            self.prefix,
            self.placeholder.as_str(),
            self.suffix
        )
    }
}
