//! The console's errors: [`Error`] for starting it, [`ApiError`] for what a request is
//! answered with.

use std::net::SocketAddr;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_core::{board, recovery, store};

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Asked to listen on an address other than loopback without an admin token: anyone who
    /// can reach it would see every run, so the console refuses.
    #[error("refusing to listen on {addr} without an admin token: only a loopback address (127.0.0.1, ::1) may be served without one; set BATON_ADMIN_TOKEN or give --admin-token-file")]
    UnsafeBind {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the console's server failed")]
    Serve(#[source] std::io::Error),
    /// The admin token could not be read, or is unfit.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Why an admin token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the admin token file {path:?}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is shorter than [`MIN_TOKEN_BYTES`](crate::MIN_TOKEN_BYTES) (after trimming
    /// white space), or is not text that fits in an HTTP header.
    #[error("the admin token from {from} is unfit: {why}")]
    Unfit {
        /// Where it came from: the variable or the file.
        from: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The result type of the console's API handlers.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// An answer other than success: a status, a code and a sentence, sent as
/// `{"error": "<sentence>", "code": "<code>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized` (answered with `WWW-Authenticate: Bearer`).
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `read_only`.
    pub(crate) fn read_only() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this console is read-only: it was started without an admin token",
        )
    }

    /// 404 `not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed here: reads are GET, actions are POST",
        )
    }

    /// 409 `conflict`.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413 `too_large`.
    pub(crate) fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the request body is over the limit of {} bytes",
                crate::MAX_BODY_BYTES
            ),
        )
    }

    /// 415 `unsupported_media_type`.
    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a request body must be JSON, sent with Content-Type: application/json",
        )
    }

    /// 500 `internal`: the sentence is fixed, the error goes to the log.
    pub(crate) fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %Chain(error), "the console could not answer a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the console met an error reading the database (its log says more)",
        )
    }

    /// 503 `unavailable`.
    pub(crate) fn unavailable(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %Chain(error), "the database cannot be reached");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database cannot be reached right now; try again shortly",
        )
    }

    /// The status it is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its code, e.g. `not_found`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Its sentence.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// An error and its sources, on one line, for the log.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        match &e {
            store::Error::FlowNotFound(_) | store::Error::AtomNotFound { .. } => {
                ApiError::not_found(e.to_string())
            }
            store::Error::UnknownCursor(_) => ApiError::bad_request(format!(
                "{e}: `after` takes the id of the last row of a page"
            )),
            store::Error::Conflict { .. }
            | store::Error::IllegalTransition { .. }
            | store::Error::Fenced { .. }
            | store::Error::FlowExists(_) => ApiError::conflict(e.to_string()),
            store::Error::Unavailable(_) => ApiError::unavailable(&e),
            _ => ApiError::internal(&e),
        }
    }
}

impl From<board::Error> for ApiError {
    fn from(e: board::Error) -> Self {
        match &e {
            board::Error::JobNotFound(_) => ApiError::not_found(e.to_string()),
            board::Error::UnknownCursor(_) => ApiError::bad_request(format!(
                "{e}: `after` takes the id of the last row of a page"
            )),
            board::Error::InvalidJob(_) | board::Error::TooLarge { .. } => {
                ApiError::bad_request(e.to_string())
            }
            board::Error::InvalidState { .. }
            | board::Error::ClaimLost { .. }
            | board::Error::Ended { .. } => ApiError::conflict(e.to_string()),
            board::Error::Unavailable(_) => ApiError::unavailable(&e),
            _ => ApiError::internal(&e),
        }
    }
}

impl From<recovery::Error> for ApiError {
    fn from(e: recovery::Error) -> Self {
        match e {
            recovery::Error::Store(s) => s.into(),
            recovery::Error::Board(b) => b.into(),
            recovery::Error::NoJob { .. } => ApiError::not_found(e.to_string()),
            other => ApiError::conflict(other.to_string()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::bad_request(format!("bad path: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query: {}", e.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large()
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
        }
    }
}
