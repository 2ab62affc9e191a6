//! Choosing a backend by URL.

use baton_sql::Error;

#[tokio::test]
async fn unknown_schemes_are_refused_by_name() {
    let err = baton_sql::connect("mysql://localhost/baton")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownScheme { scheme } if scheme == "mysql"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "unknown store url scheme \"mysql\": expected `sqlite:`, `postgres:` or `postgresql:`"
    );
    let err = baton_sql::connect("baton.db").await.unwrap_err();
    assert!(matches!(err, Error::UnknownScheme { .. }), "{err:?}");
}

#[tokio::test]
async fn sqlite_urls_open_a_sqlite_store() {
    let (_dir, url) = crate::support::sqlite_url();
    let store = baton_sql::connect(&url).await.unwrap();
    assert!(format!("{store:?}").contains("SqliteStore"));
    // `sqlite:path` works as well as `sqlite://path`.
    let short = url.replacen("sqlite://", "sqlite:", 1);
    let again = baton_sql::connect(&short).await.unwrap();
    let flow = crate::cases::new_flow(&store).await;
    assert_eq!(again.load_flow(flow.id).await.unwrap().flow.id, flow.id);
}

#[tokio::test]
async fn postgres_urls_open_a_postgres_store() {
    use sqlx::Connection;

    let Some(server) = crate::support::postgres_url() else {
        return;
    };
    // A database of its own: the store goes into the default schema, which a database shared
    // with other checkouts may hold at another version.
    let mut admin = match sqlx::PgConnection::connect(&server).await {
        Ok(conn) => conn,
        Err(e) => {
            crate::support::skip::<()>(&format!("PostgreSQL is unreachable: {e:?}"));
            return;
        }
    };
    let db = format!("baton_connect_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    // The same server and credentials, the new database.
    let (base, query) = server.split_once('?').unwrap_or((&server, ""));
    let authority_end = base
        .find("://")
        .and_then(|at| base[at + 3..].find('/').map(|p| at + 3 + p))
        .unwrap_or(base.len());
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let url = format!("{}/{db}{query}", &base[..authority_end]);
    let store = baton_sql::connect(&url).await.unwrap();
    assert!(format!("{store:?}").contains("PostgresStore"));
    let flow = crate::cases::new_flow(&store).await;
    assert_eq!(store.load_flow(flow.id).await.unwrap().flow.id, flow.id);
    drop(store);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_configuration_errors() {
    #[cfg(feature = "sqlite")]
    {
        let err = baton_sql::connect("sqlite://x.db?bogus=1")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
    }
    #[cfg(feature = "postgres")]
    {
        let err = baton_sql::PostgresStore::connect_with(
            "postgres://127.0.0.1/db",
            baton_sql::PostgresOptions::new().schema("Robert'); DROP TABLE students;--"),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::InvalidSchema { .. }), "{err:?}");
    }
}
