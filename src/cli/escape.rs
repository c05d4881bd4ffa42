//! Escaping untrusted text for a terminal (docs/security.md, "Untrusted text
//! on your terminal"). Status
//! messages, repository URLs, work units, file names from audit records,
//! paths from the desired dir and the agent's console output are written by
//! people or programs agentd does not trust; printed as they are, an ESC or
//! a C1 control would let them move the cursor, rewrite earlier lines,
//! retitle the window or worse. One helper for every command, so the rule is
//! the same everywhere:
//!
//! - C0 controls (U+0000..U+001F), DEL and C1 controls (U+0080..U+009F)
//!   become `\n`, `\r`, `\t`, `\e` or `\xNN` / `\u{NN}` escapes;
//! - bidirectional overrides and isolates (U+202A..U+202E, U+2066..U+2069,
//!   U+200E, U+200F) become `\u{NNNN}`: they reorder what the eye reads;
//! - bytes that are not UTF-8 (console output only) become `\xNN`.
//!
//! Backslashes are left alone: escaping them too would mangle every Windows
//! path and regex in a console, and the escapes are meant for eyes, not to
//! be decoded back.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is.
fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{1b}' => out.push_str("\\e"),
        c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
    }
}

/// One line of untrusted text: every control character escaped, newline
/// and tab included (a table cell or a `path:line:col` line stays one line).
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_dangerous(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Console output, which arrives in chunks that may split a UTF-8 sequence:
/// a multi-byte character cut at a chunk's end is held until the next chunk.
/// Newline and tab pass through (a console is lines); every other control is
/// escaped, and so is every byte that is not UTF-8.
#[derive(Debug, Default)]
pub struct Console {
    /// The start of a UTF-8 sequence the last chunk ended in.
    held: Vec<u8>,
}

impl Console {
    /// Escape the next chunk; bytes of an unfinished character are kept.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.held);
        bytes.extend_from_slice(chunk);
        let mut out = String::with_capacity(bytes.len());
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    console_str(&mut out, s);
                    rest = &[];
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `good` is valid UTF-8 by the error's own report.
                    console_str(&mut out, std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            for b in &bad[..n] {
                                out.push_str(&format!("\\x{b:02x}"));
                            }
                            rest = &bad[n..];
                        }
                        None => {
                            // An unfinished sequence at the very end.
                            self.held = bad.to_vec();
                            rest = &[];
                        }
                    }
                }
            }
        }
        out.into_bytes()
    }

    /// The end of the stream: held bytes can no longer complete a character.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        held.iter()
            .map(|b| format!("\\x{b:02x}"))
            .collect::<String>()
            .into_bytes()
    }
}

fn console_str(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, '\n' | '\t') || !is_dangerous(c) {
            out.push(c);
        } else {
            push_escaped(out, c);
        }
    }
}

/// Escape a whole console capture at once.
pub fn console(bytes: &[u8]) -> Vec<u8> {
    let mut c = Console::default();
    let mut out = c.push(bytes);
    out.extend(c.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(text("hello, wörld / ünïcode"), Cow::Borrowed(_)));
    }

    #[test]
    fn text_escapes_every_control_and_bidi_override() {
        assert_eq!(
            text("a\x1b[2Jb\nc\td\re\x07\x7f\u{9b}31m\u{202e}x\0"),
            "a\\e[2Jb\\nc\\td\\re\\x07\\x7f\\x9b31m\\u{202e}x\\x00"
        );
    }

    #[test]
    fn console_keeps_newline_and_tab_and_escapes_the_rest() {
        let out = console(b"line 1\n\tindented\x1b]0;title\x07\r\x9b\xffok\n");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "line 1\n\tindented\\e]0;title\\x07\\r\\x9b\\xffok\n"
        );
    }

    #[test]
    fn console_escapes_c1_controls_encoded_as_utf8() {
        // U+009B (CSI) encoded in UTF-8 is C2 9B.
        assert_eq!(console("\u{9b}2J".as_bytes()), b"\\x9b2J");
    }

    #[test]
    fn console_joins_a_character_split_across_chunks() {
        let bytes = "é€\n".as_bytes();
        for cut in 0..=bytes.len() {
            let mut c = Console::default();
            let mut out = c.push(&bytes[..cut]);
            out.extend(c.push(&bytes[cut..]));
            out.extend(c.finish());
            assert_eq!(out, bytes, "cut at {cut}");
        }
    }

    #[test]
    fn console_escapes_an_unfinished_character_at_the_end() {
        assert_eq!(console(&[b'a', 0xe2, 0x82]), b"a\\xe2\\x82");
    }
}
