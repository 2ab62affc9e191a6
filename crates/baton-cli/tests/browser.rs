//! The console's pages in a real browser: Debian's `chromium`, headless, driven through
//! `chromedriver` (WebDriver) with fantoccini, against `baton demo --serve`.
//!
//! Each test starts the demo with the console beside it on a free loopback port, and a
//! chromedriver of its own on another; they run one at a time (a browser is heavy for the
//! machines CI runs on). Without chromium or chromedriver the tests are skipped with the reason
//! printed, unless `CI=true`, where they fail: `.ci/run` installs both.
//!
//! With `BATON_SCREENSHOTS=1` they also save the screenshots docs/console.md shows, into
//! `docs/console/` (left alone otherwise, so a test run does not change the tree).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// How long a test waits for the page or the demo to get somewhere before it fails (a bound
/// on a hang, not a measure: nothing here asserts how fast anything is).
const LIMIT: Duration = Duration::from_secs(120);

/// The admin token of the console in the test that acts.
const TOKEN: &str = "browser-test-admin-token-0123456789";

/// One browser test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `name` on the `PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium and chromedriver, or `None` (the test is skipped) when one is missing and CI is
/// not set; under `CI=true` a missing one fails the test.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| on_path(n));
    let driver = on_path("chromedriver");
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, d) => {
            let missing: Vec<&str> = [(c.is_none(), "chromium"), (d.is_none(), "chromedriver")]
                .into_iter()
                .filter_map(|(gone, name)| gone.then_some(name))
                .collect();
            let why = format!(
                "{} not found on PATH (apt-get install chromium chromium-driver)",
                missing.join(" and ")
            );
            assert!(!ci, "{why}: CI=true needs the browser tests to run");
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// A process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port on the loopback interface (free when asked; taken by the caller right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A headless chromium driven through a chromedriver of its own.
struct Browser {
    client: Client,
    _driver: Killed,
}

impl Browser {
    async fn start() -> Option<Browser> {
        let (chromium, chromedriver) = tools()?;
        let port = free_port();
        let driver = Killed(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < LIMIT,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // Root (CI) needs --no-sandbox; /dev/shm is small in containers.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,1000",
                         "--hide-scrollbars", "--force-device-scale-factor=1"],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session with chromium");
        Some(Browser {
            client,
            _driver: driver,
        })
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        self.until(
            "the page is drawn",
            "document.body.dataset.ready === 'true'",
        )
        .await;
    }

    /// What `script` (a function body) returns.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    /// What the console's API answers at `path`, asked from the page.
    async fn api(&self, path: &str) -> Value {
        self.client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch(arguments[0]).then(r => r.json()).then(done);",
                vec![json!(path)],
            )
            .await
            .unwrap()
    }

    /// Waits until `expression` is truthy in the page; returns its value.
    async fn until(&self, what: &str, expression: &str) -> Value {
        let script = format!("return ({expression});");
        let started = Instant::now();
        loop {
            let value = self.eval(&script).await;
            if !matches!(value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("")
            {
                return value;
            }
            assert!(
                started.elapsed() < LIMIT,
                "waited for {what}: `{expression}` is still {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the element `css` finds, as shown (read in one step: a live page may draw
    /// the element again at any moment).
    async fn text(&self, css: &str) -> String {
        let text = self
            .client
            .execute(
                "const el = document.querySelector(arguments[0]); return el && el.innerText;",
                vec![json!(css)],
            )
            .await
            .unwrap();
        text.as_str()
            .unwrap_or_else(|| panic!("nothing matches {css}"))
            .to_owned()
    }

    /// Clicks the element `css` finds; again if the page drew it anew in between.
    async fn click(&self, css: &str) {
        let started = Instant::now();
        loop {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            match element.click().await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => {
                    assert!(started.elapsed() < LIMIT, "{css} kept being drawn anew");
                }
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
    }

    /// Saves a screenshot as `docs/console/<name>.png`, when `BATON_SCREENSHOTS=1`.
    async fn screenshot(&self, name: &str) {
        if std::env::var("BATON_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.client.screenshot().await.unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// `baton demo --serve 127.0.0.1:0` running, and what it printed.
struct Demo {
    _process: Killed,
    lines: Receiver<String>,
    printed: Vec<String>,
    /// The console, `http://127.0.0.1:PORT`.
    base: String,
    /// The run's id.
    flow: String,
}

impl Demo {
    fn start(db: &str, args: &[&str], token: Option<&str>) -> Demo {
        let mut all = vec!["demo", "--serve", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut cmd = support::command(Some(db), &all);
        cmd.env_remove("BATON_ADMIN_TOKEN");
        if let Some(token) = token {
            cmd.env("BATON_ADMIN_TOKEN", token);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the baton binary runs");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            _process: Killed(child),
            lines,
            printed: Vec::new(),
            base: String::new(),
            flow: String::new(),
        };
        let line = demo.wait_for("console: http://");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_owned();
        let (base, flow) = url
            .split_once("/flows/")
            .expect("the link is to the run's page");
        demo.base = base.to_owned();
        demo.flow = flow.to_owned();
        demo
    }

    /// Waits for a line holding `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.printed.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let started = Instant::now();
        loop {
            let left = LIMIT.saturating_sub(started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the demo did not print {needle:?}: {:#?}", self.printed)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the demo ended without printing {needle:?}: {:#?}",
                        self.printed
                    )
                }
            }
        }
    }

    fn page(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn flow_page(&self) -> String {
        self.page(&format!("/flows/{}", self.flow))
    }
}

/// The state the run's page shows.
const FLOW_STATE: &str = "document.querySelector('#flow-state .state')?.dataset.state";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lists_show_a_finished_run_and_lead_to_its_pages() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = support::sqlite_db();
    // A run that failed and was undone (as the demo expects of it), then one that succeeds.
    let failed = support::baton(
        &db.url,
        &[
            "demo",
            "--stack",
            "web",
            "--fail-at",
            "server-0",
            "--step-ms",
            "20",
        ],
    );
    assert_eq!(failed.status.code(), Some(baton_cli::exit::OK));
    let mut demo = Demo::start(&db.url, &["--step-ms", "50"], None);
    demo.wait_for("ended SUCCESS");

    // The flows page lists the runs, newest first, with their states.
    browser.goto(&demo.page("/flows")).await;
    let rows = browser
        .eval(
            "return [...document.querySelectorAll('#flows tbody tr')]
               .map(r => [r.children[1].textContent, r.querySelector('.state').dataset.state]);",
        )
        .await;
    assert_eq!(
        rows,
        json!([
            ["stack-create:demo", "SUCCESS"],
            ["stack-create:web", "REVERTED"]
        ])
    );
    browser.screenshot("flows").await;

    // Its filters: a state no run is in shows none; the run's state shows it again.
    browser.goto(&demo.page("/flows?state=FAILURE")).await;
    assert_eq!(
        browser.text("#list .empty").await,
        "No run matches these filters."
    );
    let select = browser
        .client
        .find(Locator::Css("select[name=state]"))
        .await
        .unwrap();
    select.select_by_value("SUCCESS").await.unwrap();
    browser.click("form.filters button[type=submit]").await;
    browser
        .until(
            "the filtered list",
            "location.search === '?state=SUCCESS' && document.body.dataset.ready === 'true' \
             && document.querySelectorAll('#flows tbody tr').length === 1",
        )
        .await;

    // Its link opens the run's page: every atom done, drawn left to right along its edges.
    browser
        .click(&format!("#flows tr[data-flow='{}'] a", demo.flow))
        .await;
    browser
        .until("the run's page", &format!("{FLOW_STATE} === 'SUCCESS'"))
        .await;
    let graph = browser
        .eval(
            "const nodes = [...document.querySelectorAll('svg.graph g.node')];
             return {
               states: [...new Set(nodes.map(n => n.dataset.state))],
               layers: Object.fromEntries(nodes.map(n => [n.dataset.atom, Number(n.dataset.layer)])),
               rows: document.querySelectorAll('#atom-table tbody tr').length,
             };",
        )
        .await;
    let api = browser.api(&format!("/api/flows/{}", demo.flow)).await;
    let atoms = api["atoms"].as_array().unwrap().len();
    assert!(atoms >= 8, "{api}");
    assert_eq!(graph["states"], json!(["SUCCESS"]));
    assert_eq!(graph["rows"], json!(atoms));
    assert_eq!(graph["layers"].as_object().unwrap().len(), atoms);
    let edges = api["graph"]["edges"].as_array().unwrap();
    assert!(!edges.is_empty());
    for edge in edges {
        let (from, to) = (edge[0].as_str().unwrap(), edge[1].as_str().unwrap());
        assert!(
            graph["layers"][from].as_u64() < graph["layers"][to].as_u64(),
            "edge {from} -> {to} does not point right: {graph}"
        );
    }
    assert_eq!(
        browser.text("#progress-text").await,
        format!("{atoms} of {atoms} atoms done")
    );

    // The jobs page lists the job; its page shows how it ended.
    browser.goto(&demo.page("/jobs")).await;
    let rows = browser
        .eval(
            "return [...document.querySelectorAll('#jobs tbody tr')]
               .map(r => [r.children[3].textContent, r.querySelector('.state').dataset.state]);",
        )
        .await;
    assert_eq!(
        rows,
        json!([["stack:web", "COMPLETE"], ["stack:demo", "COMPLETE"]]),
        "jobs in posting order, with their keys"
    );
    browser.screenshot("jobs").await;
    browser
        .click(&format!("#jobs tr[data-job='{}'] a", demo.flow))
        .await;
    browser
        .until(
            "the job's page",
            "document.querySelector('#job-state .state')?.dataset.state === 'COMPLETE'",
        )
        .await;
    assert!(
        browser.text("#outcome").await.contains("SUCCESS"),
        "the outcome names how the run ended"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_runs_page_follows_it_until_success_without_reloading() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = support::sqlite_db();
    follows_a_run_until_success(&browser, &db.url).await;
    browser.close().await;
}

/// The same on PostgreSQL, whose console hears of steps from the store's notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_runs_page_follows_it_until_success_on_postgres() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(db) = support::pg_db().await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    follows_a_run_until_success(&browser, &db.url).await;
    browser.close().await;
}

async fn follows_a_run_until_success(browser: &Browser, db: &str) {
    // Screenshots of the SQLite run only: one set for the docs.
    let shots = db.starts_with("sqlite:");
    let mut demo = Demo::start(db, &["--step-ms", "700"], None);

    // The fleet: the demo's conductor, alive, running the run (once it has claimed it).
    let started = Instant::now();
    loop {
        browser.goto(&demo.page("/conductors")).await;
        let runs = browser
            .eval(
                "const row = [...document.querySelectorAll('#conductors tbody tr')]
                   .find(r => r.children[2].textContent === 'demo');
                 return row ? [row.querySelector('.state').textContent,
                               [...row.querySelectorAll('a')].map(a => a.title)] : null;",
            )
            .await;
        if runs == json!(["alive", [demo.flow]]) {
            break;
        }
        assert!(started.elapsed() < LIMIT, "the fleet shows {runs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if shots {
        browser.screenshot("conductors").await;
    }

    browser.goto(&demo.flow_page()).await;
    // A mark in the page: a reload would lose it.
    browser
        .eval("window.batonMark = 'not reloaded'; return null;")
        .await;
    let mut seen = Vec::new();
    let mut shot = false;
    let started = Instant::now();
    loop {
        let now = browser
            .eval(&format!(
                "return [{FLOW_STATE}, document.querySelectorAll(\"svg.graph g.node[data-state='SUCCESS']\").length];"
            ))
            .await;
        // (No state before the conductor has claimed the job and made the run.)
        let state = now[0].as_str().unwrap_or_default().to_owned();
        if !state.is_empty() && seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "SUCCESS" {
            break;
        }
        if shots && !shot && now[1].as_u64() >= Some(4) {
            browser.screenshot("flow-running").await;
            shot = true;
        }
        assert!(started.elapsed() < LIMIT, "the run's page shows {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.contains(&"RUNNING".to_owned()),
        "the page showed the run going: {seen:?}"
    );
    assert_eq!(
        browser.eval("return window.batonMark;").await,
        json!("not reloaded")
    );
    let updates: u64 = browser
        .eval("return Number(document.body.dataset.updates);")
        .await
        .as_u64()
        .unwrap();
    assert!(
        updates > 2,
        "the page was drawn again as steps committed: {updates}"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('live').dataset.mode;")
            .await,
        json!("on"),
        "the page followed the server's events"
    );
    browser
        .until(
            "every atom drawn done",
            "[...document.querySelectorAll('svg.graph g.node')].every(n => n.dataset.state === 'SUCCESS')",
        )
        .await;
    assert!(browser.text("#history").await.contains("RUNNING"));
    if shots {
        browser.screenshot("flow-success").await;
    }
    demo.wait_for("ended SUCCESS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_runs_page_shows_the_failure_and_its_cause() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = support::sqlite_db();
    let mut demo = Demo::start(&db.url, &["--fail-at", "server-1", "--step-ms", "50"], None);
    demo.wait_for("ended REVERTED");

    browser.goto(&demo.flow_page()).await;
    browser
        .until("the reverted run", &format!("{FLOW_STATE} === 'REVERTED'"))
        .await;
    let failure = browser
        .text("#failure-list .failure[data-atom='server-1']")
        .await;
    assert!(
        failure.contains("server-1: server server-1 failed: quota exceeded"),
        "{failure}"
    );
    assert!(failure.contains("attempt 1"), "{failure}");
    browser
        .eval("document.getElementById('failure-list').scrollIntoView(); return null;")
        .await;
    browser.screenshot("flow-failed").await;

    // Nothing to act on in a run at rest whose job is done.
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#flow-actions button').length;")
            .await,
        json!(0)
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_is_refused_without_the_admin_token_and_reverts_it_with() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = support::sqlite_db();
    let mut demo = Demo::start(&db.url, &["--step-ms", "1500"], Some(TOKEN));

    browser.goto(&demo.flow_page()).await;
    browser
        .until(
            "a run with something to undo",
            "document.querySelectorAll(\"#atom-table tr[data-state='SUCCESS']\").length >= 1",
        )
        .await;
    browser
        .eval("window.batonMark = 'not reloaded'; return null;")
        .await;

    // Without the token: refused, and said so in the dialog.
    browser
        .click("#flow-actions button[data-action='cancel']")
        .await;
    browser
        .until("the dialog", "document.getElementById('confirm').open")
        .await;
    assert_eq!(
        browser
            .eval("return document.getElementById('confirm-token').value;")
            .await,
        json!("")
    );
    browser.click("#confirm-yes").await;
    let refused = browser
        .until(
            "the refusal",
            "!document.getElementById('confirm-error').hidden && \
             document.getElementById('confirm-error').textContent",
        )
        .await;
    let refused = refused.as_str().unwrap();
    assert!(refused.starts_with("Refused:"), "{refused}");
    assert!(refused.contains("admin token"), "{refused}");
    browser.screenshot("cancel-refused").await;
    let job = browser.api(&format!("/api/jobs/{}", demo.flow)).await;
    assert_eq!(job["cancel"], Value::Null, "nothing was asked of the run");
    assert_eq!(
        browser.eval(&format!("return {FLOW_STATE};")).await,
        json!("RUNNING")
    );

    // With it: the run reverts, and the page follows.
    browser
        .client
        .find(Locator::Css("#confirm-token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    browser.click("#confirm-yes").await;
    browser
        .until(
            "the dialog closed",
            "!document.getElementById('confirm').open",
        )
        .await;
    assert!(browser.text("#notice").await.contains("Cancel requested"));
    browser
        .until("the reverted run", &format!("{FLOW_STATE} === 'REVERTED'"))
        .await;
    // (Reverting the demo's few resources may take less than the console's polling of
    // SQLite, so the page need not have shown REVERTING: its history has it.)
    assert!(browser.text("#history").await.contains("REVERTING"));
    assert_eq!(
        browser.eval("return window.batonMark;").await,
        json!("not reloaded")
    );
    assert_eq!(
        browser
            .eval("return sessionStorage.getItem('baton.admin-token');")
            .await,
        json!(TOKEN),
        "the token is kept for the tab"
    );
    browser.screenshot("flow-reverted").await;
    demo.wait_for("ended REVERTED");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_console_refuses_actions_and_says_why() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = support::sqlite_db();
    let demo = Demo::start(&db.url, &["--step-ms", "1500"], None);

    browser.goto(&demo.flow_page()).await;
    browser
        .until("the running run", &format!("{FLOW_STATE} === 'RUNNING'"))
        .await;
    browser
        .click("#flow-actions button[data-action='cancel']")
        .await;
    browser
        .until("the dialog", "document.getElementById('confirm').open")
        .await;
    browser
        .client
        .find(Locator::Css("#confirm-token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    browser.click("#confirm-yes").await;
    let refused = browser
        .until(
            "the refusal",
            "!document.getElementById('confirm-error').hidden && \
             document.getElementById('confirm-error').textContent",
        )
        .await;
    assert!(refused.as_str().unwrap().contains("read-only"), "{refused}");
    // Back: nothing was asked of the run, which goes on.
    browser.click("#confirm-no").await;
    browser
        .until(
            "the dialog closed",
            "!document.getElementById('confirm').open",
        )
        .await;
    let job = browser.api(&format!("/api/jobs/{}", demo.flow)).await;
    assert_eq!(job["cancel"], Value::Null);
    browser.close().await;
}
