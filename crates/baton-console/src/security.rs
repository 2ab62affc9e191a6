//! The console's protections: the admin token, the headers every answer carries, and the
//! check that guards every action.

use std::net::IpAddr;
use std::path::Path;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use subtle::ConstantTimeEq as _;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::{ApiError, TokenError};

/// The shortest admin token the console accepts, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The environment variable an admin token is read from.
pub const TOKEN_ENV: &str = "BATON_ADMIN_TOKEN";

/// The credential that lets a console act (cancel, retry, revert, resume, abandon, trash):
/// requests carry it as `Authorization: Bearer <token>`. It is compared in constant time and
/// never shown (its `Debug` hides it).
#[derive(Clone)]
pub struct AdminToken(Box<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// `token`, trimmed of surrounding white space, if it is fit: at least
    /// [`MIN_TOKEN_BYTES`] bytes of visible ASCII (what a header carries unchanged).
    ///
    /// # Errors
    /// [`TokenError::Unfit`], naming `from` (where the token came from) and what is wrong.
    pub fn new(token: &str, from: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        let unfit = |why: String| TokenError::Unfit {
            from: from.to_owned(),
            why,
        };
        if token.len() < MIN_TOKEN_BYTES {
            return Err(unfit(format!(
                "it has {} bytes, fewer than the {MIN_TOKEN_BYTES} required",
                token.len()
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(unfit(
                "it may hold only visible ASCII characters (no spaces or control characters)"
                    .to_owned(),
            ));
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// The token in the environment variable [`TOKEN_ENV`] (`BATON_ADMIN_TOKEN`), if it is
    /// set and not empty.
    ///
    /// # Errors
    /// As [`AdminToken::new`].
    pub fn from_env() -> Result<Option<Self>, TokenError> {
        match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.trim().is_empty() => Self::new(&token, TOKEN_ENV).map(Some),
            _ => Ok(None),
        }
    }

    /// The token in the file at `path` (its contents, trimmed).
    ///
    /// # Errors
    /// [`TokenError::Read`] if the file cannot be read; as [`AdminToken::new`].
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text, &format!("file {}", path.display()))
    }

    /// Whether `given` is this token, compared in constant time.
    fn matches(&self, given: &[u8]) -> bool {
        // `ct_eq` of slices of different lengths is false at once: the length is not secret.
        bool::from(self.0.as_ref().ct_eq(given))
    }
}

/// Checks that a request may act: the console has a token (else 403 `read_only`) and the
/// request carries it as `Authorization: Bearer <token>` (else 401 `unauthorized`).
pub(crate) fn authorize(token: Option<&AdminToken>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::read_only());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("an action needs the admin token: Authorization: Bearer <token>")
        })?
        .as_bytes();
    let bearer = given
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| given.get(7..))
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be: Bearer <token>")
        })?;
    if token.matches(bearer) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("wrong admin token"))
    }
}

/// Whether a request's `Host` names this machine by address or as `localhost`: what a
/// console listening on loopback accepts. A web page of another site that has its name
/// resolve to 127.0.0.1 (DNS rebinding) makes the browser send that name, so it cannot read
/// the console through the operator's browser. A request without `Host` (HTTP/1.0) passes:
/// browsers always send it.
pub(crate) fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((address, _port)) => address,
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<IpAddr>().is_ok()
}

/// The Content-Security-Policy of every answer: everything from the console itself, nothing
/// inline, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'";

/// Layers that set the protective headers on every answer (overriding none a handler set).
pub(crate) fn headers<S>(router: axum::Router<S>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    router
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
        .layer(set(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_long_and_plain() {
        assert!(AdminToken::new("short", "test").is_err());
        assert!(AdminToken::new("sixteen bytes!!!", "test").is_err());
        assert!(AdminToken::new("0123456789abcdef", "test").is_ok());
        assert!(AdminToken::new("  0123456789abcdef\n", "test").is_ok());
        assert!(AdminToken::new("0123456789abcdé", "test").is_err());
    }

    #[test]
    fn actions_need_the_token() {
        let token = AdminToken::new("0123456789abcdef", "test").unwrap();
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert_eq!(
            authorize(None, &with("Bearer 0123456789abcdef")).map_err(|e| e.code()),
            Err("read_only")
        );
        assert_eq!(
            authorize(Some(&token), &HeaderMap::new()).map_err(|e| e.code()),
            Err("unauthorized")
        );
        assert_eq!(
            authorize(Some(&token), &with("Bearer 0123456789abcdeF")).map_err(|e| e.code()),
            Err("unauthorized")
        );
        assert_eq!(
            authorize(Some(&token), &with("Basic 0123456789abcdef")).map_err(|e| e.code()),
            Err("unauthorized")
        );
        assert!(authorize(Some(&token), &with("Bearer 0123456789abcdef")).is_ok());
        assert!(authorize(Some(&token), &with("bearer 0123456789abcdef")).is_ok());
    }

    #[test]
    fn local_hosts_are_addresses_and_localhost() {
        let host = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            local_host(&h)
        };
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:80",
            "10.0.0.5:8080",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "127.0.0.1.evil.example",
            "[::1",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(local_host(&HeaderMap::new()));
    }

    #[test]
    fn the_token_is_never_shown() {
        let token = AdminToken::new("0123456789abcdef", "test").unwrap();
        assert!(!format!("{token:?}").contains("0123"));
    }
}
