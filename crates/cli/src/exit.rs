//! Exit codes, documented in `--help` and the README.

use crate::client::CallError;

/// Process exit codes of `bulkhead` and its Qubes-named aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The daemon refused the operation with an error (bad value, wrong state…).
    Failed = 1,
    /// Bad command-line usage.
    Usage = 2,
    /// bulkheadd could not be reached.
    NoDaemon = 3,
    /// bulkheadd closed the request without an answer (not permitted).
    Refused = 4,
    /// The named qube, property, feature, tag or label does not exist.
    NotFound = 5,
}

impl From<Code> for std::process::ExitCode {
    fn from(c: Code) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success; 1 the daemon refused the operation; 2 usage error; \
3 bulkheadd unreachable; 4 refused without an answer (not permitted); 5 no such qube/property/feature/tag/label.";

/// Maps an error to its exit code.
pub fn code_for(e: &anyhow::Error) -> Code {
    if e.downcast_ref::<UsageError>().is_some() {
        return Code::Usage;
    }
    let Some(call) = e.downcast_ref::<CallError>() else {
        return Code::Failed;
    };
    match call {
        CallError::Io { .. } => Code::NoDaemon,
        CallError::Refused { .. } => Code::Refused,
        _ => match call.class() {
            Some(c) if c.ends_with("NotFoundError") || c == "QubesNoSuchPropertyError" => {
                Code::NotFound
            }
            _ => Code::Failed,
        },
    }
}

/// A usage problem found after parsing (e.g. an invalid name).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand: fail with a usage error.
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(msg.into()).into())
}
