//! `baton serve`: the console's server started by the real binary, its address printed, its
//! API answering, and stopped by SIGTERM; unsafe or unfit settings refused before anything is
//! served.

// Test helpers panic on purpose: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

use baton_cli::exit;
use support::{baton, command, run, sqlite_db, stderr};

/// One HTTP/1.0 request to `addr`; the whole answer as text.
fn http(addr: &str, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_prints_its_address_answers_and_stops_on_sigterm() {
    let db = sqlite_db();
    let posted = baton(&db.url, &["jobs", "post", "--factory", "steps", "--json"]);
    assert!(posted.status.success(), "{}", stderr(&posted));
    let mut cmd = command(Some(&db.url), &["serve", "--listen", "127.0.0.1:0"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let url = first
        .strip_prefix("baton console at http://")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"));
    let addr = url.split('/').next().unwrap().to_owned();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    assert!(second.starts_with("read-only"), "{second}");

    let health = http(&addr, "GET /healthz HTTP/1.0\r\n\r\n");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    assert!(health.ends_with("ok"), "{health}");
    let jobs = http(&addr, "GET /api/jobs HTTP/1.0\r\n\r\n");
    assert!(jobs.contains("\"factory\":\"steps\""), "{jobs}");
    let refused = http(
        &addr,
        "POST /api/jobs/00000000-0000-0000-0000-000000000000/retry HTTP/1.0\r\n\r\n",
    );
    assert!(refused.contains(" 403 "), "{refused}");

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(exit::OK));
}

#[test]
fn serve_refuses_unsafe_or_unfit_settings() {
    let db = sqlite_db();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tiny\n").unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "a-long-enough-admin-token\n").unwrap();

    // Beyond loopback without a token.
    let out = baton(&db.url, &["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(exit::BAD_INPUT), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("without an admin token"),
        "{}",
        stderr(&out)
    );
    // A token too short, or missing.
    let out = baton(
        &db.url,
        &["serve", "--admin-token-file", short.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(exit::BAD_INPUT), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fewer than the 16"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("tiny"), "the token is not shown");
    let out = baton(
        &db.url,
        &["serve", "--admin-token-file", "/nonexistent/token"],
    );
    assert_eq!(out.status.code(), Some(exit::BAD_INPUT), "{}", stderr(&out));
    // Given twice.
    let mut twice = command(
        Some(&db.url),
        &["serve", "--admin-token-file", good.to_str().unwrap()],
    );
    twice.env("BATON_ADMIN_TOKEN", "another-long-enough-token");
    let out = run(twice, None);
    assert_eq!(out.status.code(), Some(exit::BAD_INPUT), "{}", stderr(&out));
    assert!(stderr(&out).contains("given twice"), "{}", stderr(&out));
    // No option takes the token itself.
    let out = baton(
        &db.url,
        &["serve", "--admin-token", "a-long-enough-admin-token"],
    );
    assert_eq!(out.status.code(), Some(exit::USAGE));
}
