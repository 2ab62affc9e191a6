//! How database errors are classified: what retrying may cure is `Unavailable`, with the
//! server's reason kept as its source.

use baton_core::model::Batch;
use baton_core::store::{Error, Store};
use baton_sql::{PostgresOptions, PostgresStore};
use sqlx::Connection;

use crate::cases::{atoms, new_flow, start};
use crate::support::{fresh_schema, pg_connect, postgres_url, skip};

/// The text of `err` and of every error under it.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// `url` with its database replaced by `db`, or its user by `user`.
fn with(url: &str, user: Option<&str>, db: Option<&str>) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (scheme, rest) = base.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => host,
        None => authority,
    };
    let userinfo = match (user, authority.rsplit_once('@')) {
        (Some(user), _) => format!("{user}@"),
        (None, Some((info, _))) => format!("{info}@"),
        (None, None) => String::new(),
    };
    let path = db.unwrap_or(path);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{scheme}://{userinfo}{host}/{path}{query}")
}

/// A database that does not exist cannot be reached: `Unavailable`, which the command line
/// reports as such (exit 5), with the server's reason under it.
#[tokio::test]
async fn a_database_that_does_not_exist_cannot_be_reached() {
    let Some(url) = postgres_url() else { return };
    let db = format!("baton_missing_{}", uuid::Uuid::now_v7().simple());
    let err = PostgresStore::connect(&with(&url, None, Some(&db)))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let text = chain(&err);
    assert!(
        text.contains(&format!("database \"{db}\" does not exist")),
        "{text}"
    );
}

/// A role the server does not know cannot reach the database either.
#[tokio::test]
async fn a_role_the_server_refuses_cannot_reach_the_database() {
    let Some(url) = postgres_url() else { return };
    let role = format!("baton_nobody_{}", uuid::Uuid::now_v7().simple());
    let err = baton_sql::open(&with(&url, Some(&role), None))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let text = chain(&err);
    assert!(text.contains(&role), "{text}");
}

/// Two stores on a fresh schema, the first with a run stored in it, the second knowing nothing
/// of the run; then every append to the step log is refused with SQLSTATE `code` (raised by a
/// trigger function). `None` without a server.
async fn refusing(
    url: &str,
    code: &str,
) -> Option<(
    PostgresStore,
    PostgresStore,
    baton_core::model::FlowRecord,
    String,
)> {
    let schema = fresh_schema();
    let options = || PostgresOptions::new().schema(&schema);
    let store = match PostgresStore::connect_with(url, options()).await {
        Ok(store) => store,
        Err(e) if e.is_transient() => return skip(&format!("PostgreSQL is unreachable: {e:?}")),
        Err(e) => panic!("{e:?}"),
    };
    let other = PostgresStore::connect_with(url, options()).await.unwrap();
    let flow = new_flow(&store).await;
    let mut conn = pg_connect(url, Some(&schema)).await;
    for sql in [
        format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'refused for the test' USING ERRCODE = '{code}'; END $$"
        ),
        "CREATE TRIGGER refuse BEFORE INSERT ON steps FOR EACH ROW EXECUTE FUNCTION refuse()"
            .to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    Some((store, other, flow, schema))
}

/// Closes the stores and drops their schema.
async fn done(url: &str, stores: [PostgresStore; 2], schema: &str) {
    for store in stores {
        store.close().await;
    }
    crate::postgres::drop_schema(url, schema).await;
}

/// A commit the server refuses with SQLSTATE `code` is `Unavailable`, by the one-statement
/// append and by the careful way alike, with the server's message under it.
async fn commit_refused_with_is_unavailable(code: &str) {
    let Some(url) = postgres_url() else { return };
    let Some((store, other, flow, schema)) = refusing(&url, code).await else {
        return;
    };
    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(start(&atoms()[0]));
    // `store` made the run: it appends in one statement. `other` knows nothing of it: it
    // goes the careful way.
    for (way, store) in [("one statement", &store), ("careful", &other)] {
        let err = store.commit(&batch).await.unwrap_err();
        assert!(
            matches!(err, Error::Unavailable(_)),
            "{code}, {way}: {err:?}"
        );
        let text = chain(&err);
        assert!(
            text.contains("refused for the test"),
            "{code}, {way}: {text}"
        );
    }
    done(&url, [store, other], &schema).await;
}

/// One test per SQLSTATE that retrying may cure beyond lost connections and shutdowns.
macro_rules! unavailable_when_refused_with {
    ($($name:ident: $code:literal,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                commit_refused_with_is_unavailable($code).await;
            }
        )*
    };
}

unavailable_when_refused_with! {
    too_many_connections_is_unavailable: "53300",
    a_serialization_failure_is_unavailable: "40001",
    a_deadlock_is_unavailable: "40P01",
    a_read_only_transaction_after_a_failover_is_unavailable: "25006",
    a_query_cancelled_by_the_server_is_unavailable: "57014",
    a_rejected_password_is_unavailable: "28P01",
}

/// Other errors stay `Backend`: retrying cannot cure them.
#[tokio::test]
async fn other_server_errors_are_not_transient() {
    let Some(url) = postgres_url() else { return };
    let Some((store, other, flow, schema)) = refusing(&url, "42501").await else {
        return;
    };
    let mut batch = Batch::new(flow.id, None);
    batch.writes.push(start(&atoms()[0]));
    for store in [&store, &other] {
        let err = store.commit(&batch).await.unwrap_err();
        assert!(matches!(err, Error::Backend(_)), "{err:?}");
    }
    done(&url, [store, other], &schema).await;
}
