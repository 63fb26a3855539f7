//! The one error type the CLI returns. Each error carries the exit code it maps to and a
//! message that says what happened and what to do, printed as a single line on stderr.

use std::fmt;
use std::process::ExitCode;

use tally_api::{Code, ErrorCode};

/// Exit codes (documented in README.md; scripts depend on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1: the command failed (wrong password, missing key, node error, timeout, ...).
    Failure,
    /// 2: the command line is wrong (bad flag, malformed amount or address, bad name).
    Usage,
    /// 3: the node could not be reached (connection refused, DNS, timeout).
    Unreachable,
    /// 4: the node rejected the transaction (the node's reason code is in the message).
    Rejected,
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Failure => 1,
            Kind::Usage => 2,
            Kind::Unreachable => 3,
            Kind::Rejected => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Usage => "usage",
            Kind::Unreachable => "unreachable",
            Kind::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    /// The node's reason code when the node answered with an error.
    pub code: Option<Code>,
    message: String,
    /// The command already printed its JSON result (e.g. a bench report that ends in
    /// failure), so `--output json` must not add a second object.
    pub json_reported: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            message: one_line(&message.into()),
            json_reported: false,
        }
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(Kind::Failure, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unreachable, message)
    }

    pub fn rejected(code: Code, message: impl Into<String>) -> Self {
        let mut e = Self::new(Kind::Rejected, message);
        e.code = Some(code);
        e
    }

    pub fn with_code(mut self, code: Code) -> Self {
        self.code = Some(code);
        self
    }

    /// Whether the node answered with one of `codes`.
    pub fn is_node_code(&self, codes: &[ErrorCode]) -> bool {
        self.code
            .as_ref()
            .and_then(Code::known)
            .is_some_and(|c| codes.contains(&c))
    }

    pub fn json_reported(mut self) -> Self {
        self.json_reported = true;
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.exit_code())
    }

    /// Prefixes context ("sending to bob: ...").
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = one_line(&format!("{what}: {}", self.message));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Errors are printed as one line: a multi-line message would break log scrapers and
/// make the "what to do" part easy to miss.
pub fn one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_single_lines() {
        let e = Error::failure("first\n\n  second\n");
        assert_eq!(e.message(), "first; second");
        assert_eq!(e.kind.exit_code(), 1);
        assert_eq!(Error::usage("x").kind.exit_code(), 2);
        assert_eq!(Error::unreachable("x").kind.exit_code(), 3);
        assert_eq!(
            Error::rejected(ErrorCode::InsufficientFunds.into(), "x")
                .kind
                .exit_code(),
            4
        );
    }
}
