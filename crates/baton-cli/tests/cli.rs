//! The real `baton` binary against SQLite (and PostgreSQL when the test server is set): the
//! demo, listings and their JSON, and errors as one clear line with a documented exit code.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use baton_cli::exit;
use serde_json::Value;
use support::{baton, command, pg_db, run, sqlite_db, stderr, stdout};

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
    // Version 2 of stack-create: 8 atoms and the security group.
    assert_eq!(shown["atoms"].as_array().unwrap().len(), 9);
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
        "ID  NAME  STATE  FACTORY  CREATED  UPDATED\n\
         <id>  stack-create:demo  SUCCESS  stack-create v2  <time>  <time>\n"
    );
    let flows = json(&baton(&db.url, &["flows", "list", "--json"]));
    let id = flows[0]["id"].as_str().unwrap();
    let show = normalise(&stdout(&baton(&db.url, &["flows", "show", id])));
    let head: Vec<&str> = show.lines().take(11).collect();
    assert_eq!(
        head,
        [
            "flow  <id>  stack-create:demo",
            "state  SUCCESS (heading: EXECUTE)",
            "created  <time>  updated <time>",
            "job  <id>",
            "factory  stack-create v2",
            &format!(
                "definition fingerprint {}",
                flows[0]["fingerprint"].as_str().unwrap()
            ),
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
        "ID  NAME  FACTORY  KEY  STATE  OWNER  ATTEMPTS  POSTED  NOTE\n\
         <id>  stack-create demo  stack-create v2  stack:demo  COMPLETE  -  1  <time>  -\n"
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

/// Asserts that `out` is a refusal with `code` whose one-line message contains `message`.
fn refused(out: &std::process::Output, code: i32, message: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(message), "expected {message:?} in: {err}");
    if code != exit::USAGE {
        assert!(err.lines().count() <= 2, "{err}");
    }
}

/// Conductor options that cannot work (a zero heartbeat panicked, a zero lease or a heartbeat
/// near the lease made jobs change hands, a zero poll spun, a zero concurrency became 1) are
/// refused with exit code 4 and what would work, before the database is touched.
#[test]
fn conductor_options_that_cannot_work_are_refused() {
    let db = sqlite_db();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--heartbeat-ms", "0"],
            exit::BAD_INPUT,
            "--heartbeat-ms 0 is too short: give 1 or more",
        ),
        (
            &["--lease-ms", "0"],
            exit::BAD_INPUT,
            "--lease-ms 0 is too short: give 1 or more",
        ),
        (
            &["--lease-ms", "1000", "--heartbeat-ms", "5000"],
            exit::BAD_INPUT,
            "--heartbeat-ms 5000 is more than a third of --lease-ms 1000, so one late heartbeat \
             would lose the claim: give --heartbeat-ms 333 or less, or --lease-ms 15000 or more",
        ),
        (
            &["--poll-ms", "0"],
            exit::BAD_INPUT,
            "--poll-ms 0 is too short: give 1 or more",
        ),
        (
            &["--concurrency", "0"],
            exit::BAD_INPUT,
            "--concurrency 0 would run no job: give 1 or more",
        ),
        (
            &["--lease-ms", "31536000001"],
            exit::BAD_INPUT,
            "--lease-ms 31536000001 is too long: give 31536000000 or less",
        ),
        (
            &["--gather-ms", "18446744073709551615"],
            exit::BAD_INPUT,
            "--gather-ms 18446744073709551615 is too long: give 200000 or less",
        ),
        (
            &["--self-fence-margin-ms", "0"],
            exit::BAD_INPUT,
            "--self-fence-margin-ms 0 is too short: give 1 or more",
        ),
        (
            &[
                "--lease-ms",
                "3000",
                "--heartbeat-ms",
                "500",
                "--self-fence-margin-ms",
                "2500",
            ],
            exit::BAD_INPUT,
            "--self-fence-margin-ms 2500 leaves less than two heartbeats (--heartbeat-ms 500) \
             of --lease-ms 3000: give --self-fence-margin-ms 2000 or less, or a longer lease",
        ),
        (
            &["--drain-timeout-ms", "31536000001"],
            exit::BAD_INPUT,
            "--drain-timeout-ms 31536000001 is too long: give 31536000000 or less",
        ),
        (&["--lease-ms", "-1"], exit::USAGE, "'-1'"),
        (&["--drain-timeout-ms", "-1"], exit::USAGE, "'-1'"),
        (&["--concurrency", "many"], exit::USAGE, "'many'"),
    ];
    for (options, code, message) in cases {
        let mut args = vec!["conductor", "--demo", "--exit-when-idle"];
        args.extend_from_slice(options);
        let out = baton(&db.url, &args);
        refused(&out, *code, message);
        assert!(
            !db.dir.path().join("baton.db").exists(),
            "{options:?} created the database"
        );
    }
    // The smallest values the rules allow run.
    let out = baton(
        &db.url,
        &[
            "conductor",
            "--demo",
            "--exit-when-idle",
            "--lease-ms",
            "3",
            "--heartbeat-ms",
            "1",
            "--poll-ms",
            "1",
            "--concurrency",
            "1",
            "--gather-ms",
            "0",
            "--drain-timeout-ms",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
}

/// `demo post --count 0` posted nothing and said nothing; a count out of range is a usage
/// error now, and nothing is posted.
#[test]
fn demo_post_refuses_a_count_that_makes_no_sense() {
    let db = sqlite_db();
    for count in ["0", "10001", "-1", "4294967296"] {
        let out = baton(
            &db.url,
            &["demo", "post", "--factory", "steps", "--count", count],
        );
        refused(&out, exit::USAGE, "--count");
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    }
    let jobs = json(&baton(&db.url, &["jobs", "list", "--json"]));
    assert_eq!(jobs, serde_json::json!([]));
}

/// `--params @FILE` and `--params -` pass parameters larger than one argument may be (the
/// system caps an argument at 128 KiB), to `jobs post` and `demo post`.
#[test]
fn params_can_come_from_a_file_or_standard_input() {
    let db = sqlite_db();
    let big = serde_json::json!({ "steps": 1, "blob": "x".repeat(200 * 1024) });
    let file = db.dir.path().join("params.json");
    // With a byte-order mark, as some editors write, and a trailing newline.
    std::fs::write(&file, format!("\u{feff}{big}\n")).unwrap();
    let at_file = format!("@{}", file.display());
    let posted = json(&baton(
        &db.url,
        &[
            "jobs",
            "post",
            "--factory",
            "steps",
            "--params",
            &at_file,
            "--json",
        ],
    ));
    assert_eq!(posted["params"], big);

    let out = run(
        command(
            Some(&db.url),
            &[
                "demo",
                "post",
                "--factory",
                "steps",
                "--params",
                "-",
                "--json",
            ],
        ),
        Some(br#"{"steps": 2, "step_ms": 1}"#.to_vec()),
    );
    let jobs = json(&out);
    assert_eq!(
        jobs[0]["params"],
        serde_json::json!({"steps": 2, "step_ms": 1})
    );
    let out = run(
        command(
            Some(&db.url),
            &[
                "jobs",
                "post",
                "--factory",
                "steps",
                "--params",
                "-",
                "--json",
            ],
        ),
        Some(big.to_string().into_bytes()),
    );
    assert_eq!(json(&out)["params"], big);
}

/// Parameters that cannot be read are refused with exit code 4 and a message that says why:
/// a missing or unreadable file, JSON that does not parse (with where), not an object where
/// one is required, more than the command reads.
#[test]
fn params_that_cannot_be_read_are_refused_clearly() {
    let db = sqlite_db();
    let dir = db.dir.path();
    let write = |name: &str, text: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        format!("@{}", path.display())
    };
    let broken = write("broken.json", b"{\n  \"steps\": 1,\n}\n");
    let array = write("array.json", b"[1, 2]");
    let huge = write("huge.json", &vec![b' '; (8 << 20) + 1]);
    let missing = format!("@{}", dir.join("missing.json").display());
    let folder = format!("@{}", dir.display());
    let cases: Vec<(&str, &str, Option<Vec<u8>>, String)> = vec![
        (
            "jobs",
            missing.as_str(),
            None,
            format!("cannot open --params file {:?}", dir.join("missing.json")),
        ),
        (
            "jobs",
            missing.as_str(),
            None,
            "No such file or directory".into(),
        ),
        ("jobs", folder.as_str(), None, "Is a directory".into()),
        (
            "jobs",
            "@",
            None,
            "--params @ names no file: give @PATH, or - for standard input".into(),
        ),
        (
            "jobs",
            broken.as_str(),
            None,
            "is not valid JSON: trailing comma at line 3 column 1".into(),
        ),
        (
            "demo",
            array.as_str(),
            None,
            "must be a JSON object, not an array".into(),
        ),
        (
            "demo",
            "null",
            None,
            "--params must be a JSON object, not null".into(),
        ),
        (
            "jobs",
            huge.as_str(),
            None,
            "holds more than 8 MiB, the most the command reads".into(),
        ),
        (
            "jobs",
            "-",
            Some(vec![b' '; (8 << 20) + 1]),
            "--params from standard input holds more than 8 MiB".into(),
        ),
        (
            "jobs",
            "-",
            Some(b"{\"steps\": \xff}".to_vec()),
            "--params from standard input is not valid JSON".into(),
        ),
        (
            "jobs",
            "-",
            Some(Vec::new()),
            "EOF while parsing a value at line 1 column 0".into(),
        ),
    ];
    for (which, params, stdin, message) in cases {
        let args: &[&str] = if which == "jobs" {
            &["jobs", "post", "--factory", "steps", "--params", params]
        } else {
            &["demo", "post", "--factory", "steps", "--params", params]
        };
        let out = run(command(Some(&db.url), args), stdin);
        refused(&out, exit::BAD_INPUT, &message);
    }
    // Nothing was posted; no database was even created.
    assert!(!dir.join("baton.db").exists());
}

/// The database URL's password shows nowhere: not in the help (the URL may come from
/// `BATON_DATABASE_URL`), not in errors or logs, whatever is wrong with the URL.
#[test]
fn the_database_password_is_never_shown() {
    let mut help = command::<&str>(None, &["--help"]);
    help.env(
        "BATON_DATABASE_URL",
        "postgres://baton:s3cret@127.0.0.1:1/db",
    );
    let out = run(help, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("BATON_DATABASE_URL"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("s3cret"), "{}", stdout(&out));

    let dir = tempfile::tempdir().unwrap();
    let urls = [
        "postgres://baton:s3cret@127.0.0.1:1/db".to_owned(),
        "postgres://baton:s3cret@127.0.0.1:99999/db".to_owned(),
        "postgres://baton:s3cret@[::1/db".to_owned(),
        "postgres://baton:s3%63ret@127.0.0.1:1/db".to_owned(),
        "postgres://127.0.0.1:1/db?sslmode=bogus&password=s3cret".to_owned(),
        "postgres://127.0.0.1:1/db?password=s3cret".to_owned(),
        // Not a parameter the driver reads: it would log it, value and all.
        "postgres://127.0.0.1:1/db?passwd=s3cret".to_owned(),
        "baton:s3cret@127.0.0.1:1/db".to_owned(),
        format!(
            "sqlite://baton:s3cret@{}/none/baton.db",
            dir.path().display()
        ),
    ];
    for url in &urls {
        for args in [
            &["flows", "list"][..],
            &["migrate"],
            &["conductor", "--demo", "--exit-when-idle"],
        ] {
            let mut cmd = command(Some(url), args);
            cmd.env("RUST_LOG", "trace");
            let out = run(cmd, None);
            assert!(!out.status.success(), "{url} {args:?}");
            for text in [stdout(&out), stderr(&out)] {
                assert!(
                    !text.contains("s3cret") && !text.contains("s3%63ret"),
                    "{url} {args:?}: {text}"
                );
            }
        }
    }
}

/// On a database reached with a password (the test server trusts every client, so any
/// password works), `migrate` and the demo's hints show the URL without it, and the
/// conductor's log, at every level, never has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_urls_are_shown_without_their_password() {
    let Some(db) = pg_db().await else { return };
    let url = db.url.replacen("://postgres@", "://postgres:s3cret@", 1);
    assert_ne!(url, db.url, "the test server's URL names the user postgres");
    let shown = url.replace(":s3cret@", ":***@");
    tokio::task::spawn_blocking(move || {
        let out = baton(&url, &["migrate"]);
        assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
        assert_eq!(
            stdout(&out),
            format!("the schema of {shown} is up to date\n")
        );
        let out = baton(&url, &["demo", "--step-ms", "1"]);
        assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains(&format!("--db '{shown}' flows show")),
            "{text}"
        );
        assert!(
            text.contains(
                "(the password is not shown: put the URL in BATON_DATABASE_URL and leave out --db)"
            ),
            "{text}"
        );
        let mut conductor = command(Some(&url), &["conductor", "--demo", "--exit-when-idle"]);
        conductor.env("RUST_LOG", "trace");
        let out = run(conductor, None);
        assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
        assert!(!stderr(&out).contains("s3cret"), "{}", stderr(&out));
        assert!(stderr(&out).contains(&shown), "the log names the database");
    })
    .await
    .unwrap();
}

/// The lines of the demo's "inspect it" hints.
fn hints(out: &std::process::Output) -> Vec<String> {
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(out));
    let text = stdout(out);
    let (_, hints) = text
        .split_once("\ninspect it:\n")
        .expect("the demo prints hints");
    hints.lines().map(|l| l.trim().to_owned()).collect()
}

/// The demo's hints run as printed: here, by the path the binary was started with, with a
/// note on installing it, since it runs from cargo's build directory.
#[test]
fn demo_hints_run_as_printed() {
    let db = sqlite_db();
    let shown = hints(&baton(&db.url, &["demo", "--step-ms", "1"]));
    let bin = env!("CARGO_BIN_EXE_baton");
    assert_eq!(shown.len(), 3, "{shown:?}");
    for hint in &shown[..2] {
        let words: Vec<&str> = hint.split(' ').collect();
        assert_eq!(&words[..3], [bin, "--db", db.url.as_str()], "{hint}");
        let out = run(command::<&str>(None, &words[1..]), None);
        assert_eq!(
            out.status.code(),
            Some(exit::OK),
            "{hint}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).contains("SUCCESS"), "{hint}: {}", stdout(&out));
    }
    assert_eq!(
        shown[2],
        format!(
            "(to type `baton` instead of `{bin}`, install it: cargo install --path crates/baton-cli)"
        )
    );
}

/// Under `cargo run` (the README's way), the hints say `cargo run -p baton-cli --`, and how to
/// install the command; `baton` itself would not be found.
#[test]
fn under_cargo_run_the_hints_say_cargo_run() {
    let db = sqlite_db();
    let mut demo = command(Some(&db.url), &["demo", "--step-ms", "1"]);
    demo.env("CARGO_PKG_NAME", "baton-cli");
    let shown = hints(&run(demo, None));
    let cargo_run = format!("cargo run -p baton-cli -- --db {}", db.url);
    assert!(
        shown[0].starts_with(&format!("{cargo_run} flows show ")),
        "{shown:?}"
    );
    assert!(
        shown[1].starts_with(&format!("{cargo_run} jobs show ")),
        "{shown:?}"
    );
    assert_eq!(
        shown[2],
        "(to type `baton` instead of `cargo run -p baton-cli --`, install it: cargo install --path crates/baton-cli)"
    );
}

/// A database given by `BATON_DATABASE_URL` is left out of the hints (the environment still
/// gives it); one given on the command line is repeated, quoted if a shell would split it.
#[test]
fn hints_repeat_only_what_the_command_line_gave_and_quote_it() {
    let db = sqlite_db();
    let mut demo = command::<&str>(None, &["demo", "--step-ms", "1"]);
    demo.env("BATON_DATABASE_URL", &db.url);
    let from_env = hints(&run(demo, None));
    let bin = env!("CARGO_BIN_EXE_baton");
    assert!(
        from_env[0].starts_with(&format!("{bin} flows show ")),
        "{from_env:?}"
    );
    // It still names the same database.
    let words: Vec<&str> = from_env[0].split(' ').collect();
    let mut show = command::<&str>(None, &words[1..]);
    show.env("BATON_DATABASE_URL", &db.url);
    let out = run(show, None);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));

    let spaced = db.dir.path().join("my stacks");
    std::fs::create_dir(&spaced).unwrap();
    let url = format!("sqlite://{}", spaced.join("baton.db").display());
    let quoted = hints(&baton(&url, &["demo", "--step-ms", "1"]));
    assert!(
        quoted[0].starts_with(&format!("{bin} --db '{url}' flows show ")),
        "{quoted:?}"
    );
}

/// A negative number is read as a value, not as an unknown option: `--priority -5` posts a job
/// that runs after the others, and a negative limit is refused as out of range.
#[test]
fn negative_numbers_are_read_as_numbers() {
    let db = sqlite_db();
    let job = json(&baton(
        &db.url,
        &[
            "jobs",
            "post",
            "--factory",
            "steps",
            "--priority",
            "-5",
            "--json",
        ],
    ));
    assert_eq!(job["priority"], -5);
    let out = baton(&db.url, &["flows", "list", "--limit", "-1"]);
    refused(
        &out,
        exit::USAGE,
        "invalid value '-1' for '--limit <LIMIT>'",
    );
}

/// `flows show` tells when an atom waiting for its retry policy's next call will be called,
/// and lists the failure that made it wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_show_tells_when_a_retried_atom_is_called_again() {
    use baton_core::retry::{Backoff, RetryPolicy};
    use baton_core::{Atom, Engine, Flow, FlowState, TaskError};

    let db = sqlite_db();
    let store = baton_sql::connect(&db.url).await.unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let flow = Flow::linear("flaky")
        .add(
            Atom::from_fn("call", |_| async {
                Err::<Value, _>(TaskError::msg("the cloud is busy").retryable())
            })
            .retries(RetryPolicy::attempts(3).backoff(Backoff::exponential(hour, hour))),
        )
        .compile()
        .unwrap();
    let engine = Engine::from_arc(store);
    let id = engine.create(&flow, Default::default()).await.unwrap();
    let outcome = baton_testkit::run_until_retrying(&engine, &flow, id).await;
    assert_eq!(outcome.state, FlowState::Suspended);
    let url = db.url.clone();
    let show = tokio::task::spawn_blocking(move || {
        normalise(&stdout(&baton(&url, &["flows", "show", &id.to_string()])))
    })
    .await
    .unwrap();
    assert!(
        show.contains("call  task  RETRYING  1  <time>  <took>  failed: the cloud is busy; retrying at <time>\n"),
        "{show}"
    );
    assert!(
        show.contains("failures:\n  call (attempt 1, Execute): the cloud is busy\n"),
        "{show}"
    );
}

/// The ids of a listing's `--json` rows, in order.
fn ids_of(out: &std::process::Output) -> Vec<String> {
    json(out)
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Pages `baton <what> list` with `--limit size`, each page `--after` the last id of the one
/// before, as a script would: every row once, in order. A full page names the next `--after`
/// on stderr; the last (short) page names none.
fn page_through(url: &str, what: &str, size: usize) -> Vec<String> {
    let limit = size.to_string();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec![what, "list", "--json", "--limit", &limit];
        if let Some(a) = &after {
            args.extend(["--after", a]);
        }
        let out = baton(url, &args);
        let page = ids_of(&out);
        assert!(page.len() <= size, "{page:?}");
        let hint = stderr(&out);
        if page.len() < size {
            assert!(
                !hint.contains("--after"),
                "a short page names no next one: {hint}"
            );
            seen.extend(page);
            return seen;
        }
        let last = page.last().unwrap().clone();
        assert!(
            hint.contains(&format!("the next page is --after {last}")),
            "a full page names the next one: {hint}"
        );
        seen.extend(page);
        after = Some(last);
    }
}

/// `flows list` and `jobs list` page with `--limit` and `--after`; the default page is 100
/// rows; a bad cursor or limit is refused, naming it.
#[test]
fn listings_page_with_limit_and_after() {
    let db = sqlite_db();
    let out = baton(
        &db.url,
        &["demo", "post", "--factory", "steps", "--count", "5"],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    let out = baton(
        &db.url,
        &["conductor", "--demo", "--exit-when-idle", "--poll-ms", "20"],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));

    for what in ["flows", "jobs"] {
        let everything = ids_of(&baton(&db.url, &[what, "list", "--json"]));
        assert_eq!(everything.len(), 5, "{what}: {everything:?}");
        for size in [1, 2, 5, 6] {
            assert_eq!(
                page_through(&db.url, what, size),
                everything,
                "{what} by {size}"
            );
        }
        // The human listing names the next page too.
        let out = baton(&db.url, &[what, "list", "--limit", "2"]);
        assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
        assert!(
            stderr(&out).contains(&format!("--after {}", everything[1])),
            "{}",
            stderr(&out)
        );
        // A cursor naming no row, or no id at all, is refused and named.
        let ghost = uuid::Uuid::now_v7().to_string();
        let out = baton(&db.url, &[what, "list", "--after", &ghost]);
        refused(
            &out,
            exit::NOT_FOUND,
            &format!("cannot list after {}", &what[..what.len() - 1]),
        );
        assert!(stderr(&out).contains(&ghost), "{}", stderr(&out));
        let out = baton(&db.url, &[what, "list", "--after", "not-an-id"]);
        refused(&out, exit::BAD_INPUT, "--after");
        let out = baton(&db.url, &[what, "list", "--limit", "0"]);
        refused(&out, exit::USAGE, "a page holds at least 1 row");
    }
    // The runs are the jobs' (a run has its job's id), whatever order the conductor made
    // them in.
    let mut jobs = ids_of(&baton(&db.url, &["jobs", "list", "--json"]));
    let mut flows = ids_of(&baton(&db.url, &["flows", "list", "--json"]));
    jobs.sort();
    flows.sort();
    assert_eq!(flows, jobs);
}

/// Without `--limit`, a listing prints one page of 100 rows and names the next.
#[test]
fn listings_print_one_page_by_default() {
    let db = sqlite_db();
    let out = baton(
        &db.url,
        &["demo", "post", "--factory", "steps", "--count", "101"],
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr(&out));
    let out = baton(&db.url, &["jobs", "list", "--json"]);
    let first = ids_of(&out);
    assert_eq!(first.len(), 100);
    assert!(
        stderr(&out).contains(&format!("the next page is --after {}", first[99])),
        "{}",
        stderr(&out)
    );
    let out = baton(&db.url, &["jobs", "list", "--json", "--after", &first[99]]);
    let rest = ids_of(&out);
    assert_eq!(rest.len(), 1);
    assert!(!first.contains(&rest[0]));
    assert!(!stderr(&out).contains("--after"), "{}", stderr(&out));
    let out = baton(&db.url, &["jobs", "list"]);
    assert_eq!(stdout(&out).lines().count(), 101, "a header and 100 rows");
}
