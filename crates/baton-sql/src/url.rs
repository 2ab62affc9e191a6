//! Showing a store URL without its secrets.

use std::borrow::Cow;

/// What stands in for a hidden secret.
const HIDDEN: &str = "***";

/// Query parameters whose values are hidden: any whose name contains one of these (ignoring
/// case), such as `password` (which sqlx's PostgreSQL driver reads), `sslpassword` or `token`.
const SECRET_PARAMETERS: [&str; 4] = ["pass", "pwd", "secret", "token"];

/// `url` with its secrets replaced by `***`, for showing in messages, logs and hints: the
/// password of the user part (`postgres://user:***@host/db`) and the values of query
/// parameters that look like secrets (`?password=***`). The rest is kept as written,
/// percent-encoding included.
///
/// It does not need a well-formed URL: text that does not parse as one is redacted by the
/// same rules (the user part runs from `://` to the last `@` before the query), so a URL
/// that a backend refuses can still be shown safely.
///
/// ```
/// use baton_sql::redact_url;
///
/// assert_eq!(redact_url("postgres://baton:s3cret@db.internal/ops"), "postgres://baton:***@db.internal/ops");
/// assert_eq!(redact_url("postgres://db/ops?user=baton&password=s3cret"), "postgres://db/ops?user=baton&password=***");
/// assert_eq!(redact_url("sqlite://baton.db"), "sqlite://baton.db");
/// ```
#[must_use]
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let query = url[start..]
        .find(['?', '#'])
        .map_or(url.len(), |i| start + i);
    let mut out = String::new();
    let mut copied = 0;
    // The user part: up to the last `@` before the query (a password may hold a raw `@` or
    // `/`); its password is what follows the first `:`.
    if let Some(at) = url[start..query].rfind('@').map(|i| start + i) {
        if let Some(colon) = url[start..at].find(':').map(|i| start + i) {
            if colon + 1 < at {
                out.push_str(&url[..=colon]);
                out.push_str(HIDDEN);
                copied = at;
            }
        }
    }
    for (_, value) in secret_parameters(url, query) {
        out.push_str(&url[copied..value.start]);
        out.push_str(HIDDEN);
        copied = value.end;
    }
    if copied == 0 {
        return Cow::Borrowed(url);
    }
    out.push_str(&url[copied..]);
    Cow::Owned(out)
}

/// The query parameters of `url` (whose query or fragment starts at `from`) that hold a
/// secret: the name of each, and where its value is (never empty).
fn secret_parameters(url: &str, from: usize) -> Vec<(&str, std::ops::Range<usize>)> {
    let mut found = Vec::new();
    let Some(q) = url[from..].find('?').map(|i| from + i) else {
        return found;
    };
    let end = url[q..].find('#').map_or(url.len(), |i| q + i);
    let mut pos = q + 1;
    for pair in url[q + 1..end].split('&') {
        if let Some((name, value)) = pair.split_once('=') {
            let lower = name.to_ascii_lowercase();
            if !value.is_empty() && SECRET_PARAMETERS.iter().any(|s| lower.contains(s)) {
                let value_at = pos + pair.len() - value.len();
                found.push((name, value_at..pos + pair.len()));
            }
        }
        pos += pair.len() + 1;
    }
    found
}

/// The first query parameter of a PostgreSQL `url` that holds a secret but is not one the
/// driver reads (only `password` is): the driver would ignore it, and log it, value and all.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn unread_secret(url: &str) -> Option<&str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let query = url[start..]
        .find(['?', '#'])
        .map_or(url.len(), |i| start + i);
    secret_parameters(url, query)
        .into_iter()
        .map(|(name, _)| name)
        .find(|name| *name != "password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_everything_else_kept() {
        for (url, shown) in [
            // A password, and none.
            (
                "postgres://baton:s3cret@db.internal:5432/ops",
                "postgres://baton:***@db.internal:5432/ops",
            ),
            (
                "postgresql://baton@db.internal/ops",
                "postgresql://baton@db.internal/ops",
            ),
            ("postgres://db.internal/ops", "postgres://db.internal/ops"),
            ("postgres://baton:@db/ops", "postgres://baton:@db/ops"),
            // Percent-encoded characters stay as written, in the user and around it.
            (
                "postgres://us%40er:p%40ss%3Aw%2Fd@db/my%20db",
                "postgres://us%40er:***@db/my%20db",
            ),
            // Raw characters a password should have had encoded: `@`, `/`, `:`, `?` before
            // the host.
            ("postgres://u:p@ss@db/ops", "postgres://u:***@db/ops"),
            ("postgres://u:pa:ss@db/ops", "postgres://u:***@db/ops"),
            ("postgres://u:pa/ss@db/ops", "postgres://u:***@db/ops"),
            // Secrets in the query, with and without a password before.
            (
                "postgres://db/ops?sslmode=disable&password=s3cret",
                "postgres://db/ops?sslmode=disable&password=***",
            ),
            (
                "postgres://u:pw@db/ops?PassWord=s3cret&application_name=x&sslpassword=k&token=t",
                "postgres://u:***@db/ops?PassWord=***&application_name=x&sslpassword=***&token=***",
            ),
            ("postgres://db/ops?password=", "postgres://db/ops?password="),
            ("postgres://db/ops?password", "postgres://db/ops?password"),
            (
                "postgres://db/ops?password=s3cret#frag",
                "postgres://db/ops?password=***#frag",
            ),
            // An `@` after the query is not a user part.
            ("postgres://db/ops?x=a:b@c", "postgres://db/ops?x=a:b@c"),
            // SQLite paths.
            ("sqlite://baton.db", "sqlite://baton.db"),
            ("sqlite:///tmp/a b/baton.db", "sqlite:///tmp/a b/baton.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            (
                "sqlite:///srv/me@host/baton.db",
                "sqlite:///srv/me@host/baton.db",
            ),
            // Not URLs at all, and no scheme: still no password shown.
            ("", ""),
            ("baton:s3cret@db/ops", "baton:***@db/ops"),
            ("postgres:baton:s3cret@db", "postgres:***@db"),
            ("日本:秘密@db", "日本:***@db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secrets_the_driver_would_not_read_are_named() {
        for (url, unread) in [
            ("postgres://db/ops?password=s3cret", None),
            ("postgres://u:pw@db/ops?sslmode=disable", None),
            ("postgres://db/ops?passwd=s3cret", Some("passwd")),
            (
                "postgres://db/ops?password=a&sslpassword=b",
                Some("sslpassword"),
            ),
            ("postgres://db/ops?Password=s3cret", Some("Password")),
            ("postgres://db/ops?token=", None),
        ] {
            assert_eq!(unread_secret(url), unread, "{url}");
        }
    }

    #[test]
    fn a_url_without_secrets_is_not_copied() {
        assert!(matches!(
            redact_url("postgres://baton@db/ops"),
            Cow::Borrowed(_)
        ));
    }
}
