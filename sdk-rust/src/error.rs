//! The one error type of the ABI, and the `Result` alias every SDK function returns.

use std::fmt;

/// The ABI's `error` variant: what a host service answers when it refuses or fails, and what a
/// hook returns to the host when it fails. Every case carries a human-readable message.
///
/// `From` impls let `?` turn common failures into an `Error`: JSON parse errors, UTF-8 errors and
/// number parse errors become [`Error::InvalidInput`]; formatting errors become
/// [`Error::Failure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The plugin lacks the permission, or the host refused the request by policy.
    Denied(String),
    /// The thing asked for does not exist (unknown hook, missing key, ...).
    NotFound(String),
    /// The input was malformed: bad payload, bad key, bad URL, ...
    InvalidInput(String),
    /// A quota, size or rate limit was reached.
    LimitReached(String),
    /// Anything else went wrong (I/O error, remote failure, plugin bug).
    Failure(String),
}

/// `Result<T, plugbox_sdk::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Denied`] with this message.
    pub fn denied(message: impl Into<String>) -> Self {
        Error::Denied(message.into())
    }

    /// An [`Error::NotFound`] with this message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }

    /// An [`Error::InvalidInput`] with this message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// An [`Error::LimitReached`] with this message.
    pub fn limit_reached(message: impl Into<String>) -> Self {
        Error::LimitReached(message.into())
    }

    /// An [`Error::Failure`] with this message.
    pub fn failure(message: impl Into<String>) -> Self {
        Error::Failure(message.into())
    }

    /// The ABI name of the case: `denied`, `not-found`, `invalid-input`, `limit-reached` or
    /// `failure`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Denied(_) => "denied",
            Error::NotFound(_) => "not-found",
            Error::InvalidInput(_) => "invalid-input",
            Error::LimitReached(_) => "limit-reached",
            Error::Failure(_) => "failure",
        }
    }

    /// The message the error carries.
    pub fn message(&self) -> &str {
        match self {
            Error::Denied(m)
            | Error::NotFound(m)
            | Error::InvalidInput(m)
            | Error::LimitReached(m)
            | Error::Failure(m) => m,
        }
    }

    /// The ABI discriminant of the case (0 denied ... 4 failure).
    pub(crate) fn discriminant(&self) -> u8 {
        match self {
            Error::Denied(_) => 0,
            Error::NotFound(_) => 1,
            Error::InvalidInput(_) => 2,
            Error::LimitReached(_) => 3,
            Error::Failure(_) => 4,
        }
    }

    /// The case with ABI discriminant `tag`, or `None` for an unknown discriminant.
    pub(crate) fn from_discriminant(tag: u8, message: String) -> Option<Self> {
        Some(match tag {
            0 => Error::Denied(message),
            1 => Error::NotFound(message),
            2 => Error::InvalidInput(message),
            3 => Error::LimitReached(message),
            4 => Error::Failure(message),
            _ => return None,
        })
    }

    /// The same case with `context: ` put before the message.
    pub fn context(self, context: &str) -> Self {
        let wrap = |m: String| format!("{}: {}", context, m);
        match self {
            Error::Denied(m) => Error::Denied(wrap(m)),
            Error::NotFound(m) => Error::NotFound(wrap(m)),
            Error::InvalidInput(m) => Error::InvalidInput(wrap(m)),
            Error::LimitReached(m) => Error::LimitReached(wrap(m)),
            Error::Failure(m) => Error::Failure(wrap(m)),
        }
    }
}

impl fmt::Display for Error {
    /// `kind: message`, e.g. `denied: kv is not granted`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for Error {}

impl From<crate::json::ParseError> for Error {
    fn from(e: crate::json::ParseError) -> Self {
        Error::InvalidInput(format!("invalid JSON: {}", e))
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::InvalidInput(format!("invalid UTF-8: {}", e))
    }
}

impl From<std::string::FromUtf8Error> for Error {
    fn from(e: std::string::FromUtf8Error) -> Self {
        Error::InvalidInput(format!("invalid UTF-8: {}", e.utf8_error()))
    }
}

impl From<std::num::ParseIntError> for Error {
    fn from(e: std::num::ParseIntError) -> Self {
        Error::InvalidInput(format!("invalid integer: {}", e))
    }
}

impl From<std::num::ParseFloatError> for Error {
    fn from(e: std::num::ParseFloatError) -> Self {
        Error::InvalidInput(format!("invalid number: {}", e))
    }
}

impl From<std::num::TryFromIntError> for Error {
    fn from(e: std::num::TryFromIntError) -> Self {
        Error::InvalidInput(format!("number out of range: {}", e))
    }
}

impl From<fmt::Error> for Error {
    fn from(_: fmt::Error) -> Self {
        Error::Failure("formatting failed".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_kind() {
        let e = Error::denied("kv is not granted");
        assert_eq!(e.kind(), "denied");
        assert_eq!(e.to_string(), "denied: kv is not granted");
        assert_eq!(
            e.clone().context("probe").message(),
            "probe: kv is not granted"
        );
        for tag in 0..5u8 {
            let e = Error::from_discriminant(tag, "m".into()).unwrap();
            assert_eq!(e.discriminant(), tag);
        }
        assert!(Error::from_discriminant(5, String::new()).is_none());
    }

    #[test]
    fn question_mark_conversions() {
        fn utf8(b: &[u8]) -> Result<&str> {
            Ok(std::str::from_utf8(b)?)
        }
        fn int(s: &str) -> Result<i64> {
            Ok(s.parse::<i64>()?)
        }
        assert_eq!(utf8(&[0xff]).unwrap_err().kind(), "invalid-input");
        assert_eq!(int("x").unwrap_err().kind(), "invalid-input");
    }
}
