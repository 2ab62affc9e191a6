//! The real `baton` binary against SQLite (and PostgreSQL when the test server is set): the
//! demo, listings and their JSON, and errors as one clear line with a documented exit code.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use baton_cli::exit;
use serde_json::Value;
use support::{baton, pg_db, sqlite_db, stderr, stdout};

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Replaces ids and times with placeholders, so human output can be compared as text.
fn normalise(text: &str) -> String {
    let uuid =
        regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    let time = regex::Regex::new(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").unwrap();
    let clock = regex::Regex::new(r"\d\d:\d\d:\d\d\.\d{3}").unwrap();
    let took = regex::Regex::new(r"\b\d+(\.\d)?m?s\b").unwrap();
    let hash = regex::Regex::new(r"-[0-9a-f]{6}\b").unwrap();
    let text = uuid.replace_all(text, "<id>");
    let text = time.replace_all(&text, "<time>");
    let text = clock.replace_all(&text, "<clock>");
    let text = took.replace_all(&text, "<took>");
    let text = hash.replace_all(&text, "-<hash>");
    // Column widths depend on the placeholders' lengths: compare columns, not padding.
    let gaps = regex::Regex::new(r" {2,}").unwrap();
    gaps.replace_all(&text, "  ").into_owned()
}

fn demo_then_inspect(db: &str) {
    let out = baton(db, &["demo", "--step-ms", "5", "--stack", "inspect"]);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ended SUCCESS"), "{text}");
    assert!(
        text.contains("flows show"),
        "the demo says how to inspect it: {text}"
    );

    let flows = json(&baton(db, &["flows", "list", "--json"]));
    let flow = flows
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "stack-create:inspect")
        .expect("the demo's flow is listed");
    assert_eq!(flow["state"], "SUCCESS");
    let id = flow["id"].as_str().unwrap();

    let shown = json(&baton(db, &["flows", "show", id, "--json"]));
    assert_eq!(shown["atoms"].as_array().unwrap().len(), 8);
    assert!(shown["history"].as_array().unwrap().len() > 16);

    let human = stdout(&baton(db, &["flows", "show", id]));
    assert!(
        human.contains("network") && human.contains("SUCCESS"),
        "{human}"
    );

    let dot = stdout(&baton(db, &["flows", "graph", id]));
    assert!(dot.contains("a0 [label=\"network\", shape=box];"), "{dot}");
    assert!(dot.contains("a1 [label=\"subnet\", shape=box];"), "{dot}");
    assert!(dot.contains("a0 -> a1;"), "{dot}");
    let mermaid = stdout(&baton(db, &["flows", "graph", id, "--format", "mermaid"]));
    assert!(mermaid.starts_with("flowchart TD"), "{mermaid}");

    let jobs = json(&baton(
        db,
        &["jobs", "list", "--json", "--key", "stack:inspect"],
    ));
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["state"], "COMPLETE");
    assert_eq!(jobs[0]["outcome"]["state"], "SUCCESS");
    let job = json(&baton(
        db,
        &["jobs", "show", jobs[0]["id"].as_str().unwrap(), "--json"],
    ));
    assert_eq!(job["factory"], "stack-create");

    let fleet = json(&baton(db, &["conductors", "list", "--json"]));
    assert!(
        fleet.as_array().unwrap().is_empty(),
        "the demo's conductor left the fleet"
    );
}

#[test]
fn sqlite_demo_creates_the_stack_and_can_be_inspected() {
    let db = sqlite_db();
    demo_then_inspect(&db.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_demo_creates_the_stack_and_can_be_inspected() {
    let Some(db) = pg_db().await else { return };
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || demo_then_inspect(&url))
        .await
        .unwrap();
}

#[test]
fn demo_fail_at_shows_the_revert() {
    let db = sqlite_db();
    let out = baton(
        &db.url,
        &["demo", "--step-ms", "5", "--fail-at", "server-1"],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ended REVERTED"), "{text}");
    assert!(
        text.contains("server server-1 failed: quota exceeded"),
        "{text}"
    );
    assert!(
        text.contains("0 left"),
        "everything created was deleted: {text}"
    );
}

#[test]
fn listings_have_a_stable_layout() {
    let db = sqlite_db();
    assert!(baton(&db.url, &["demo", "--step-ms", "1"]).status.success());
    let list = normalise(&stdout(&baton(&db.url, &["flows", "list"])));
    assert_eq!(
        list,
        "ID  NAME  STATE  CREATED  UPDATED\n\
         <id>  stack-create:demo  SUCCESS  <time>  <time>\n"
    );
    let flows = json(&baton(&db.url, &["flows", "list", "--json"]));
    let id = flows[0]["id"].as_str().unwrap();
    let show = normalise(&stdout(&baton(&db.url, &["flows", "show", id])));
    let head: Vec<&str> = show.lines().take(9).collect();
    assert_eq!(
        head,
        [
            "flow  <id>  stack-create:demo",
            "state  SUCCESS (heading: EXECUTE)",
            "created  <time>  updated <time>",
            "job  <id>",
            "",
            "ATOM  KIND  STATE  ATTEMPT  STARTED  TOOK  RESULT",
            "network  task  SUCCESS  1  <time>  <took>  {\"id\":\"network-network-<hash>\",\"kind\":\"network\"}",
            "subnet  task  SUCCESS  1  <time>  <took>  {\"id\":\"subnet-subnet-<hash>\",\"kind\":\"subnet\"}",
            "router  task  SUCCESS  1  <time>  <took>  {\"id\":\"router-router-<hash>\",\"kind\":\"router\"}",
        ]
    );
    assert!(
        show.contains(
            "\nhistory:\nSEQ  AT  SUBJECT  FROM  TO  ATTEMPT\n1  <clock>  flow  PENDING  RUNNING\n"
        ),
        "{show}"
    );
    let jobs = normalise(&stdout(&baton(&db.url, &["jobs", "list"])));
    assert_eq!(
        jobs,
        "ID  NAME  FACTORY  KEY  STATE  OWNER  ATTEMPTS  POSTED\n\
         <id>  stack-create demo  stack-create  stack:demo  COMPLETE  -  1  <time>\n"
    );
}

#[test]
fn jobs_can_be_posted_trashed_and_refused() {
    let db = sqlite_db();
    let posted = json(&baton(
        &db.url,
        &[
            "jobs",
            "post",
            "--factory",
            "steps",
            "--params",
            r#"{"steps": 2}"#,
            "--key",
            "k1",
            "--json",
        ],
    ));
    assert_eq!(posted["state"], "UNCLAIMED");
    let id = posted["id"].as_str().unwrap();
    let out = baton(&db.url, &["jobs", "trash", id, "--reason", "not needed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = json(&baton(&db.url, &["jobs", "show", id, "--json"]));
    assert_eq!(job["state"], "TRASHED");
    assert_eq!(job["outcome"]["trashed"], "not needed");
    // Releasing a finished job is refused.
    let out = baton(&db.url, &["jobs", "abandon", id]);
    assert_eq!(out.status.code(), Some(exit::CONFLICT));
}

/// Purging deletes what ended before the cutoff and nothing that is still open; a cutoff that
/// is missing, doubled or unreadable is refused as bad input.
#[test]
fn ended_runs_and_jobs_can_be_purged() {
    let db = sqlite_db();
    let out = baton(&db.url, &["demo", "--step-ms", "1", "--stack", "old"]);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    let waiting = json(&baton(
        &db.url,
        &["jobs", "post", "--factory", "steps", "--json"],
    ));
    let count = |what: &str| {
        json(&baton(&db.url, &[what, "list", "--json"]))
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!((count("flows"), count("jobs")), (1, 2));
    // Nothing ended a day ago, and nothing younger than ten minutes is purged whatever the
    // cutoff: the demo's run ended just now.
    for age in ["1d", "0s"] {
        let purged = json(&baton(
            &db.url,
            &["flows", "purge", "--older-than", age, "--json"],
        ));
        assert_eq!(purged["purged"], 0, "--older-than {age}");
    }
    backdate_ended_runs(&db.url);
    let purged = json(&baton(
        &db.url,
        &[
            "flows",
            "purge",
            "--ended-before",
            "2999-01-01T00:00:00Z",
            "--batch",
            "1",
            "--json",
        ],
    ));
    assert_eq!(purged["purged"], 1);
    let out = baton(&db.url, &["jobs", "purge", "--older-than", "0s"]);
    assert!(
        stdout(&out).starts_with("purged 1 job that ended before"),
        "{}",
        stdout(&out)
    );
    assert_eq!((count("flows"), count("jobs")), (0, 1));
    let left = json(&baton(&db.url, &["jobs", "list", "--json"]));
    assert_eq!(left[0]["id"], waiting["id"]);

    // clap refuses a missing or doubled cutoff and an unreadable age as usage errors; an
    // unreadable time is bad input.
    for (bad, code) in [
        (&["flows", "purge"][..], exit::USAGE),
        (
            &[
                "flows",
                "purge",
                "--older-than",
                "1d",
                "--ended-before",
                "2026-01-01T00:00:00Z",
            ],
            exit::USAGE,
        ),
        (&["jobs", "purge", "--older-than", "soon"], exit::USAGE),
        (
            &["jobs", "purge", "--ended-before", "yesterday"],
            exit::BAD_INPUT,
        ),
    ] {
        let out = baton(&db.url, bad);
        assert_eq!(out.status.code(), Some(code), "{bad:?}: {}", stderr(&out));
    }
}

/// `baton conductor --retain` purges what ended longer ago than that, and says so.
#[test]
fn a_conductor_can_purge_beside_its_work() {
    let db = sqlite_db();
    let out = baton(&db.url, &["demo", "--step-ms", "1", "--stack", "old"]);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    backdate_ended_runs(&db.url);
    let out = baton(
        &db.url,
        &[
            "conductor",
            "--demo",
            "--exit-when-idle",
            "--poll-ms",
            "50",
            "--retain",
            "0s",
        ],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["purged_runs"], 1, "{summary}");
    assert_eq!(summary["purged_jobs"], 1, "{summary}");
    let flows = json(&baton(&db.url, &["flows", "list", "--json"]));
    assert_eq!(flows.as_array().unwrap().len(), 0);
}

/// Makes the ended runs of the SQLite database at `url` look as if they had ended in 2000.
fn backdate_ended_runs(url: &str) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(
            "UPDATE flows SET updated_at = '2000-01-01T00:00:00.000000000Z' \
             WHERE state IN ('SUCCESS', 'FAILURE', 'REVERTED')",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    });
}

/// Every error: one line naming the problem (plus at most a cause), the documented code.
#[test]
fn errors_are_one_clear_line_with_a_documented_code() {
    let db = sqlite_db();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["flows", "show", "nope"],
            exit::BAD_INPUT,
            "invalid flow id: \"nope\" is not a UUID",
        ),
        (
            &["flows", "show", "01a212f7-9158-7702-bd62-5b79b774e652"],
            exit::NOT_FOUND,
            "not found",
        ),
        (
            &["jobs", "show", "01a212f7-9158-7702-bd62-5b79b774e652"],
            exit::NOT_FOUND,
            "not found",
        ),
        (
            &["jobs", "post", "--factory", "steps", "--params", "{bad"],
            exit::BAD_INPUT,
            "--params is not valid JSON",
        ),
        (
            &["jobs", "list", "--state", "SLEEPING"],
            exit::BAD_INPUT,
            "unknown job state \"SLEEPING\"",
        ),
        (
            &["demo", "--fail-at", "volcano"],
            exit::BAD_INPUT,
            "--fail-at \"volcano\" names no atom",
        ),
        (
            &[
                "demo",
                "post",
                "--factory",
                "stack-create",
                "--params",
                r#"{"servers": "two"}"#,
            ],
            exit::BAD_INPUT,
            "bad parameter `servers`",
        ),
    ];
    for (args, code, message) in cases {
        let out = baton(&db.url, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(err.lines().count() <= 2, "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    let out = baton("mysql://localhost/x", &["flows", "list"]);
    assert_eq!(out.status.code(), Some(exit::BAD_INPUT));
    assert!(stderr(&out).contains("unknown store url scheme \"mysql\""));
    let out = baton("postgres://postgres@127.0.0.1:1/none", &["flows", "list"]);
    assert_eq!(
        out.status.code(),
        Some(exit::UNAVAILABLE),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).starts_with("error: the database cannot be reached"));
    let out = baton(&db.url, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(exit::USAGE));
    let out = baton(&db.url, &["--schema", "ops", "flows", "list"]);
    assert_eq!(out.status.code(), Some(exit::BAD_INPUT));
    assert!(stderr(&out).contains("a schema applies to PostgreSQL only"));
}

/// `--schema` puts baton's tables in a schema of its own: what is posted there is not seen
/// in the default schema, and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_option_selects_the_schema() {
    let Some(db) = pg_db().await else { return };
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let posted = baton(
            &url,
            &[
                "--schema",
                "ops_baton",
                "jobs",
                "post",
                "--factory",
                "steps",
                "--name",
                "in-ops",
            ],
        );
        assert_eq!(posted.status.code(), Some(exit::OK), "{}", stderr(&posted));
        let listed = baton(&url, &["--schema", "ops_baton", "jobs", "list", "--json"]);
        assert_eq!(listed.status.code(), Some(exit::OK), "{}", stderr(&listed));
        let jobs = json(&listed);
        assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
        assert_eq!(jobs[0]["name"], "in-ops");
        let default = baton(&url, &["jobs", "list", "--json"]);
        assert_eq!(
            default.status.code(),
            Some(exit::OK),
            "{}",
            stderr(&default)
        );
        assert_eq!(json(&default).as_array().map(Vec::len), Some(0));
        let bad = baton(&url, &["--schema", "Ops-Baton", "jobs", "list"]);
        assert_eq!(bad.status.code(), Some(exit::BAD_INPUT), "{}", stderr(&bad));
        assert!(
            stderr(&bad).contains("invalid schema name"),
            "{}",
            stderr(&bad)
        );
    })
    .await
    .unwrap();
}

#[test]
fn completions_are_generated() {
    let db = sqlite_db();
    let out = baton(&db.url, &["completions", "bash"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("baton"));
}
