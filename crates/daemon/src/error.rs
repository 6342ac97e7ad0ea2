//! Errors of Admin API calls, named after Qubes' exception classes so that
//! Qubes' own client library maps them to the same Python exceptions.

use thiserror::Error;

/// A Qubes exception class (`qubes/exc.py`), sent as `2\0<Class>\0\0<message>\0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exc {
    QubesException,
    QubesVMNotFoundError,
    QubesVMInvalidUUIDError,
    QubesVMAlreadyExistsError,
    QubesVMInUseError,
    QubesVMNotHaltedError,
    QubesVMNotStartedError,
    QubesVMNotRunningError,
    QubesVMNotPausedError,
    QubesVMShutdownTimeoutError,
    QubesVMError,
    StoragePoolException,
    QubesValueError,
    QubesPropertyValueError,
    QubesNoSuchPropertyError,
    QubesFeatureNotFoundError,
    QubesTagNotFoundError,
    QubesLabelNotFoundError,
    QubesLabelInUseError,
    /// Qubes' `ProtocolError`: the client sent something it should have known
    /// was wrong (bad argument, missing payload, unknown method).
    ProtocolError,
    /// Qubes' `PermissionDenied`.
    PermissionDenied,
}

impl Exc {
    /// The class name exactly as Qubes spells it.
    pub fn class_name(self) -> &'static str {
        match self {
            Exc::QubesException => "QubesException",
            Exc::QubesVMNotFoundError => "QubesVMNotFoundError",
            Exc::QubesVMInvalidUUIDError => "QubesVMInvalidUUIDError",
            Exc::QubesVMAlreadyExistsError => "QubesVMAlreadyExistsError",
            Exc::QubesVMInUseError => "QubesVMInUseError",
            Exc::QubesVMNotHaltedError => "QubesVMNotHaltedError",
            Exc::QubesVMNotStartedError => "QubesVMNotStartedError",
            Exc::QubesVMNotRunningError => "QubesVMNotRunningError",
            Exc::QubesVMNotPausedError => "QubesVMNotPausedError",
            Exc::QubesVMShutdownTimeoutError => "QubesVMShutdownTimeoutError",
            Exc::QubesVMError => "QubesVMError",
            Exc::StoragePoolException => "StoragePoolException",
            Exc::QubesValueError => "QubesValueError",
            Exc::QubesPropertyValueError => "QubesPropertyValueError",
            Exc::QubesNoSuchPropertyError => "QubesNoSuchPropertyError",
            Exc::QubesFeatureNotFoundError => "QubesFeatureNotFoundError",
            Exc::QubesTagNotFoundError => "QubesTagNotFoundError",
            Exc::QubesLabelNotFoundError => "QubesLabelNotFoundError",
            Exc::QubesLabelInUseError => "QubesLabelInUseError",
            Exc::ProtocolError => "ProtocolError",
            Exc::PermissionDenied => "PermissionDenied",
        }
    }
}

/// A failed Admin API call: the exception class and the message for the user.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ApiError {
    pub exc: Exc,
    pub message: String,
}

impl ApiError {
    pub fn new(exc: Exc, message: impl Into<String>) -> Self {
        Self {
            exc,
            message: message.into(),
        }
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(Exc::ProtocolError, message)
    }

    pub fn value(message: impl Into<String>) -> Self {
        Self::new(Exc::QubesValueError, message)
    }

    /// `QubesVMNotFoundError` with Qubes' message.
    pub fn vm_not_found(name: &str) -> Self {
        Self::new(
            Exc::QubesVMNotFoundError,
            format!("No such domain: '{name}'"),
        )
    }

    /// `QubesNoSuchPropertyError` with Qubes' message.
    pub fn no_such_property(holder: &str, prop: &str) -> Self {
        Self::new(
            Exc::QubesNoSuchPropertyError,
            format!("Invalid property '{prop}' of {holder}"),
        )
    }

    /// `QubesPropertyValueError` with Qubes' message plus what to do.
    pub fn prop_value(holder: &str, prop: &str, value: &str, why: &str) -> Self {
        Self::new(
            Exc::QubesPropertyValueError,
            format!("Invalid value '{value}' for property '{prop}' of '{holder}': {why}"),
        )
    }
}

/// Result of an Admin API call.
pub type ApiResult<T> = Result<T, ApiError>;
