//! Stdout for commands whose exit code is a verdict (`validate`, `plan`,
//! `audit verify`). A reader that goes away early (`agentd validate | head
//! -1`) ends the output, not the command: the remaining lines are dropped
//! and the exit code still says what was found. Other commands let the
//! `EPIPE` error travel up to `main`, which ends them quietly with 0.

use std::fmt::Display;
use std::io::{ErrorKind, Write};

pub struct Lines<W: Write> {
    w: W,
    /// The reader closed the pipe: everything after is dropped.
    closed: bool,
}

impl<W: Write> Lines<W> {
    pub fn new(w: W) -> Self {
        Lines { w, closed: false }
    }

    /// Write one line; a broken pipe is not an error.
    pub fn line(&mut self, text: impl Display) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match writeln!(self.w, "{text}").and_then(|()| self.w.flush()) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn broken_pipe_ends_output_quietly_other_errors_do_not() {
        let mut l = Lines::new(Closed);
        assert!(l.line("a").is_ok() && l.line("b").is_ok());
        let mut full = Lines::new(std::io::Cursor::new([0u8; 1]));
        assert!(full.line("too long").is_err());
    }
}
