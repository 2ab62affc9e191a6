//! Every subcommand of the real `baton` binary with malformed, empty, huge and hostile values:
//! ids, durations, times, numbers, URLs, schemas, JSON, names, unicode, control characters,
//! and 100 KB strings (an argument can hold at most 128 KiB; 1 MB values come through
//! `--params @FILE` and standard input). Each case names the exit code it must end with, and
//! every run must report as the command line promises: nothing on standard error on success;
//! otherwise one `error: ...` line, with at most one `  caused by: ...` line after it (clap's
//! usage errors add their usage block), each of a readable length and free of control
//! characters; and never a panic.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use baton_cli::exit::{BAD_INPUT, NOT_FOUND, OK, UNAVAILABLE, USAGE};
use support::{command, run, sqlite_db, stderr};

/// A string of 100 000 characters: most of what one argument may hold.
fn big() -> String {
    "x".repeat(100_000)
}

/// A case: arguments (after `--db`) and the exit code they must end with.
struct Case {
    args: Vec<OsString>,
    code: i32,
    stdin: Option<Vec<u8>>,
}

fn case<S: Into<OsString> + Clone>(args: &[S], code: i32) -> Case {
    Case {
        args: args.iter().cloned().map(Into::into).collect(),
        code,
        stdin: None,
    }
}

/// A case of `baton conductor --demo` that exits once idle, with `extra` arguments.
fn conductor(extra: &[&str], code: i32) -> Case {
    let mut args = vec!["conductor", "--demo", "--exit-when-idle", "--poll-ms", "10"];
    args.extend_from_slice(extra);
    case(&args, code)
}

/// Runs every case against the database `db` (none: the arguments give it) and checks it.
fn check(db: Option<&str>, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let mut cmd = command(db, &case.args);
        cmd.env("RUST_BACKTRACE", "1");
        let out = run(cmd, case.stdin);
        let shown: Vec<String> = case
            .args
            .iter()
            .map(|a| {
                let a = a.to_string_lossy();
                if a.chars().count() > 40 {
                    format!(
                        "{}…({} chars)",
                        a.chars().take(30).collect::<String>(),
                        a.chars().count()
                    )
                } else {
                    a.into_owned()
                }
            })
            .collect();
        if let Err(why) = report_is_clean(&out, case.code, &case.args) {
            failures.push(format!("{shown:?}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Whether `out` ended with `code` and reported as the command line promises.
fn report_is_clean(out: &std::process::Output, code: i32, args: &[OsString]) -> Result<(), String> {
    let err = stderr(out);
    let clipped: String = err.chars().take(2000).collect();
    if out.status.code() != Some(code) {
        return Err(format!(
            "exit code {:?}, expected {code}: {clipped}",
            out.status.code()
        ));
    }
    if err.contains("panicked") || err.contains("stack backtrace") {
        return Err(format!("panicked: {clipped}"));
    }
    // The conductor reports that it runs, and its summary, on success.
    let conductor = args.first().is_some_and(|a| a == "conductor");
    if code == OK {
        return if err.is_empty() || conductor {
            Ok(())
        } else {
            Err(format!("succeeded with a message: {clipped}"))
        };
    }
    let mut lines = err.lines();
    if !lines.next().is_some_and(|l| l.starts_with("error: ")) {
        return Err(format!("the first line is not `error: ...`: {clipped}"));
    }
    if code == USAGE {
        // clap's own report: the error, then its usage block.
        return Ok(());
    }
    let causes: Vec<&str> = lines.collect();
    if causes.len() > 1 || causes.iter().any(|l| !l.starts_with("  caused by: ")) {
        return Err(format!("more than one line and a cause: {clipped}"));
    }
    for line in err.lines() {
        if line.chars().count() > 1100 {
            return Err(format!("a line of {} characters", line.chars().count()));
        }
        if line.chars().any(char::is_control) {
            return Err(format!("control characters: {line:?}"));
        }
    }
    Ok(())
}

/// Whether `text` is an id the commands accept (a UUID).
fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
}

/// Hostile ids for every command that takes one.
#[test]
fn ids() {
    let db = sqlite_db();
    let values = [
        "".to_owned(),
        " ".into(),
        "nope".into(),
        "0".into(),
        "-1".into(),
        "-".into(),
        "--".into(),
        "00000000-0000-0000-0000-00000000000g".into(),
        "01a212f7-9158-7702-bd62-5b79b774e652".into(),
        "01A212F7-9158-7702-BD62-5B79B774E652".into(),
        "01a212f7-9158-7702-bd62-5b79b774e652 ".into(),
        "é".into(),
        "\u{202e}01a212f7".into(),
        "a\nb".into(),
        "\x1b[31mred".into(),
        "{}".into(),
        big(),
    ];
    let mut cases = Vec::new();
    for v in &values {
        // clap reads `-1` as an option and `--` as the end of options; `-` is a value.
        let option_like = v.starts_with('-') && v.len() > 1;
        let found = if is_uuid(v) { NOT_FOUND } else { BAD_INPUT };
        let positional = if option_like { USAGE } else { found };
        for command in [
            &["flows", "show"][..],
            &["flows", "graph"],
            &["jobs", "show"],
            &["jobs", "abandon"],
            &["jobs", "trash"],
        ] {
            let mut args: Vec<&str> = command.to_vec();
            args.push(v);
            cases.push(case(&args, positional));
        }
        let listed = if option_like {
            USAGE
        } else if is_uuid(v) {
            OK
        } else {
            BAD_INPUT
        };
        cases.push(case(&["jobs", "list", "--owner", v], listed));
    }
    check(Some(&db.url), cases);
}

/// Hostile ages and times for the purges and the conductor's retention.
#[test]
fn durations_and_times() {
    let db = sqlite_db();
    let mut cases = Vec::new();
    for (age, purge, retain) in [
        ("", USAGE, USAGE),
        ("0", OK, OK),
        ("0s", OK, OK),
        ("-1s", USAGE, USAGE),
        ("1x", USAGE, USAGE),
        ("1e9y", USAGE, USAGE),
        ("18446744073709551616s", USAGE, USAGE),
        ("584942417356y", USAGE, USAGE),
        // Before any time a clock can show: nothing can be that old.
        ("500000y", BAD_INPUT, OK),
        ("1000000000y", BAD_INPUT, OK),
        ("1 fortnight", USAGE, USAGE),
        ("∞", USAGE, USAGE),
        ("\x1b[2J", USAGE, USAGE),
    ] {
        cases.push(case(&["flows", "purge", "--older-than", age], purge));
        cases.push(case(&["jobs", "purge", "--older-than", age], purge));
        cases.push(conductor(&["--retain", age], retain));
    }
    cases.push(case(&["jobs", "purge", "--older-than", &big()], USAGE));
    for (time, code) in [
        ("", BAD_INPUT),
        ("yesterday", BAD_INPUT),
        ("2026-13-01T00:00:00Z", BAD_INPUT),
        ("2026-01-01T00:00:00+25:00", BAD_INPUT),
        ("+262143-01-01T00:00:00Z", BAD_INPUT),
        ("9999-12-31T23:59:59Z", OK),
        ("0000-01-01T00:00:00Z", OK),
        ("-1", USAGE),
        ("\u{0660}", BAD_INPUT),
        (&big(), BAD_INPUT),
    ] {
        cases.push(case(&["flows", "purge", "--ended-before", time], code));
        cases.push(case(&["jobs", "purge", "--ended-before", time], code));
    }
    check(Some(&db.url), cases);
}

/// Hostile numbers: negative, zero, too big for their type, not numbers.
#[test]
fn numbers() {
    let db = sqlite_db();
    let mut cases = Vec::new();
    for (limit, code) in [
        ("-1", USAGE),
        // A page of nothing would name no next page.
        ("0", USAGE),
        ("18446744073709551615", OK),
        ("18446744073709551616", USAGE),
        ("1.5", USAGE),
        ("0x10", USAGE),
        ("", USAGE),
        ("١", USAGE),
    ] {
        cases.push(case(&["flows", "list", "--limit", limit], code));
        cases.push(case(&["jobs", "list", "--limit", limit], code));
    }
    for (batch, code) in [
        ("0", USAGE),
        ("-1", USAGE),
        ("4294967295", OK),
        ("4294967296", USAGE),
    ] {
        cases.push(case(
            &["flows", "purge", "--older-than", "1d", "--batch", batch],
            code,
        ));
    }
    for (priority, code) in [
        ("-2147483648", OK),
        ("2147483647", OK),
        ("2147483648", USAGE),
        ("-2147483649", USAGE),
        ("1e3", USAGE),
    ] {
        cases.push(case(
            &["jobs", "post", "--factory", "steps", "--priority", priority],
            code,
        ));
    }
    for (count, code) in [("0", USAGE), ("-1", USAGE), ("10001", USAGE), ("", USAGE)] {
        cases.push(case(
            &["demo", "post", "--factory", "steps", "--count", count],
            code,
        ));
    }
    for (option, value, code) in [
        ("--servers", "4294967295", BAD_INPUT),
        ("--servers", "4294967296", USAGE),
        ("--servers", "101", BAD_INPUT),
        ("--servers", "-1", USAGE),
        ("--volumes", "4294967295", BAD_INPUT),
    ] {
        cases.push(case(&["demo", "--step-ms", "0", option, value], code));
    }
    for (value, code) in [
        ("18446744073709551615", BAD_INPUT),
        ("3600001", BAD_INPUT),
        ("-0", USAGE),
        ("1e3", USAGE),
    ] {
        cases.push(case(&["demo", "--step-ms", value], code));
    }
    for (option, value, code) in [
        ("--lease-ms", "18446744073709551615", BAD_INPUT),
        ("--heartbeat-ms", "18446744073709551615", BAD_INPUT),
        ("--poll-ms", "18446744073709551616", USAGE),
        ("--gather-ms", "-1", USAGE),
        ("--concurrency", "18446744073709551616", USAGE),
        ("--concurrency", "18446744073709551615", OK),
    ] {
        cases.push(conductor(&[option, value], code));
    }
    check(Some(&db.url), cases);
}

/// Hostile JSON for `--params`: malformed, deep, huge (1 MB through a file and standard
/// input), of the wrong shape, not UTF-8.
#[test]
fn json_documents() {
    let db = sqlite_db();
    let mut cases = Vec::new();
    let deep = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
    let huge_string = serde_json::to_string(&big()).unwrap();
    for (params, jobs, demo) in [
        ("", BAD_INPUT, BAD_INPUT),
        ("{", BAD_INPUT, BAD_INPUT),
        ("[", BAD_INPUT, BAD_INPUT),
        ("null", OK, BAD_INPUT),
        ("[]", OK, BAD_INPUT),
        ("1e400", BAD_INPUT, BAD_INPUT),
        ("{\"a\": 1} trailing", BAD_INPUT, BAD_INPUT),
        ("\"\\u0000\"", OK, BAD_INPUT),
        ("\"\\ud800\"", BAD_INPUT, BAD_INPUT),
        (deep.as_str(), BAD_INPUT, BAD_INPUT),
        (huge_string.as_str(), OK, BAD_INPUT),
        ("{\"steps\": -1}", OK, BAD_INPUT),
        ("{\"steps\": 1e30}", OK, BAD_INPUT),
        ("{\"steps\": 4294967295}", OK, BAD_INPUT),
        ("{\"steps\": 1, \"step_ms\": 0, \"x\": 1}", OK, BAD_INPUT),
        ("{\"steps\": 2, \"step_ms\": 0}", OK, OK),
        ("{\"\\u001b[2J\": \"\\u001b[31m\"}", OK, BAD_INPUT),
    ] {
        cases.push(case(
            &["jobs", "post", "--factory", "steps", "--params", params],
            jobs,
        ));
        cases.push(case(
            &["demo", "post", "--factory", "steps", "--params", params],
            demo,
        ));
    }
    // Not UTF-8: clap refuses it.
    cases.push(case(
        &[
            OsString::from("jobs"),
            "post".into(),
            "--factory".into(),
            "steps".into(),
            "--params".into(),
            OsString::from_vec(b"{\"a\": \"\xff\"}".to_vec()),
        ],
        USAGE,
    ));
    // 1 MB, from a file and from standard input.
    let megabyte = serde_json::json!({ "steps": 1, "blob": "é".repeat(500_000) }).to_string();
    let file = db.dir.path().join("megabyte.json");
    std::fs::write(&file, &megabyte).unwrap();
    let at_file = format!("@{}", file.display());
    cases.push(case(
        &["jobs", "post", "--factory", "steps", "--params", &at_file],
        OK,
    ));
    cases.push(case(
        &["demo", "post", "--factory", "steps", "--params", &at_file],
        BAD_INPUT,
    ));
    let mut from_stdin = case(&["jobs", "post", "--factory", "steps", "--params", "-"], OK);
    from_stdin.stdin = Some(megabyte.into_bytes());
    cases.push(from_stdin);
    // A file that never ends.
    cases.push(case(
        &["jobs", "post", "--factory", "x", "--params", "@/dev/zero"],
        BAD_INPUT,
    ));
    check(Some(&db.url), cases);
}

/// Hostile database URLs and schemas: empty, malformed, unreachable, huge, unicode.
#[test]
fn urls_and_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string();
    let mut cases = Vec::new();
    for (url, code) in [
        (String::new(), BAD_INPUT),
        ("x".into(), BAD_INPUT),
        ("mysql://h/db".into(), BAD_INPUT),
        ("baton:s3cret@127.0.0.1:1/db".into(), BAD_INPUT),
        ("postgres://127.0.0.1:99999/db".into(), BAD_INPUT),
        ("postgres://u:p@[::1/db".into(), BAD_INPUT),
        ("postgres://127.0.0.1:1/db?sslmode=bogus".into(), BAD_INPUT),
        ("postgres://127.0.0.1:1/db?passwd=s3cret".into(), BAD_INPUT),
        (
            "postgres://127.0.0.1:1/db?statement-cache-capacity=-1".into(),
            BAD_INPUT,
        ),
        ("postgres://127.0.0.1:1/db".into(), UNAVAILABLE),
        ("postgres://:@127.0.0.1:1/".into(), UNAVAILABLE),
        (format!("postgres://127.0.0.1:1/{}", big()), UNAVAILABLE),
        (
            format!("postgres://u:{}@127.0.0.1:1/db", big()),
            UNAVAILABLE,
        ),
        (format!("sqlite://{base}/no/such/dir/baton.db"), UNAVAILABLE),
        (format!("sqlite://{base}"), UNAVAILABLE),
        ("sqlite:///dev/null".into(), UNAVAILABLE),
        (format!("sqlite://{base}/{}", big()), UNAVAILABLE),
        (format!("sqlite://{base}/é/ü.db"), UNAVAILABLE),
        (format!("sqlite://{base}/ok.db?mode=bogus"), BAD_INPUT),
        (format!("sqlite://{base}/ok.db?bogus=1"), BAD_INPUT),
        (format!("sqlite://{base}/é🎉 ok.db"), OK),
        (format!("sqlite:{base}/plain.db"), OK),
        ("sqlite::memory:".into(), OK),
    ] {
        cases.push(case(
            &["--db".to_owned(), url, "flows".into(), "list".into()],
            code,
        ));
    }
    let sqlite = format!("sqlite://{base}/schemas.db");
    for schema in [
        "",
        "Ops",
        "1abc",
        "a;drop table x",
        "é",
        &big(),
        "ok_schema",
    ] {
        cases.push(case(
            &["--db", &sqlite, "--schema", schema, "jobs", "list"],
            BAD_INPUT,
        ));
        let pg = if schema == "ok_schema" {
            UNAVAILABLE
        } else {
            BAD_INPUT
        };
        cases.push(case(
            &[
                "--db",
                "postgres://127.0.0.1:1/db",
                "--schema",
                schema,
                "jobs",
                "list",
            ],
            pg,
        ));
    }
    for color in ["", "sometimes", "ALWAYS"] {
        cases.push(case(
            &["--db", "sqlite::memory:", "--color", color, "flows", "list"],
            USAGE,
        ));
    }
    check(None, cases);
}

/// Hostile names, keys, states and reasons: accepted as data where they are data, refused
/// where they must name something that exists.
#[test]
fn names_and_text() {
    let db = sqlite_db();
    let big = big();
    let texts = [
        "",
        " ",
        "é🎉",
        "a\nb",
        "\x1b[2J\x1b[31m",
        "\u{202e}",
        big.as_str(),
    ];
    let mut cases = Vec::new();
    for t in texts {
        // A key is free text, but not blank.
        let key = if t.trim().is_empty() { BAD_INPUT } else { OK };
        cases.push(case(&["demo", "--step-ms", "0", "--stack", t], OK));
        cases.push(case(&["demo", "--step-ms", "0", "--fail-at", t], BAD_INPUT));
        cases.push(case(&["demo", "post", "--factory", t], BAD_INPUT));
        cases.push(case(
            &["demo", "post", "--factory", "steps", "--key", t],
            key,
        ));
        cases.push(case(
            &["jobs", "post", "--factory", "steps", "--key", t],
            key,
        ));
        cases.push(case(&["jobs", "list", "--key", t], OK));
        cases.push(case(&["flows", "list", "--name", t], OK));
        cases.push(case(&["flows", "list", "--state", t], BAD_INPUT));
        cases.push(case(&["jobs", "list", "--state", t], BAD_INPUT));
        cases.push(case(
            &[
                "jobs",
                "trash",
                "01a212f7-9158-7702-bd62-5b79b774e652",
                "--reason",
                t,
            ],
            NOT_FOUND,
        ));
        cases.push(conductor(&["--name", t], OK));
    }
    // A job's factory and name are free text, but not empty.
    for (factory, code) in [
        ("", BAD_INPUT),
        ("é🎉", OK),
        ("a\nb", OK),
        (big.as_str(), OK),
    ] {
        cases.push(case(&["jobs", "post", "--factory", factory], code));
    }
    cases.push(case(
        &["jobs", "post", "--factory", "steps", "--name", ""],
        BAD_INPUT,
    ));
    for state in ["running", "Success", "suspended"] {
        cases.push(case(&["flows", "list", "--state", state], OK));
    }
    cases.push(case(&["completions", "nosh"], USAGE));
    cases.push(case(
        &[
            "flows",
            "graph",
            "01a212f7-9158-7702-bd62-5b79b774e652",
            "--format",
            "png",
        ],
        USAGE,
    ));
    check(Some(&db.url), cases);
}

/// Commands with what they need missing, or with what they do not take.
#[test]
fn missing_and_unknown_arguments() {
    let db = sqlite_db();
    let mut cases = Vec::new();
    for args in [
        &[][..],
        &["flows"],
        &["flows", "show"],
        &["flows", "purge"],
        &["jobs", "post"],
        &["jobs", "post", "--factory"],
        &["demo", "post", "--params"],
        &["conductor"],
        &["conductors"],
        &["completions"],
        &["migrate", "now"],
        &["flows", "list", "--nope"],
        &["--db"],
        &[
            "jobs",
            "purge",
            "--older-than",
            "1d",
            "--ended-before",
            "2026-01-01T00:00:00Z",
        ],
    ] {
        cases.push(case(args, USAGE));
    }
    check(Some(&db.url), cases);
}
