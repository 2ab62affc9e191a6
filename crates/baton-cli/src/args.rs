//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::output::ColorChoice;

/// The default store: a SQLite file in the working directory.
pub const DEFAULT_DB: &str = "sqlite://baton.db";

/// The most jobs one `baton demo post` posts.
pub const MAX_POST_COUNT: i64 = 10_000;

/// baton: durable workflows. Inspect and administer flows, jobs and conductors, and run the
/// Heat-style demo.
#[derive(Debug, Parser)]
#[command(name = "baton", version, after_help = exit_codes_help())]
pub struct Cli {
    /// The store and job board: `sqlite://PATH`, `sqlite::memory:` or `postgres://...`.
    // The environment's value is not shown in the help: it may hold a password.
    #[arg(
        long,
        global = true,
        env = "BATON_DATABASE_URL",
        hide_env_values = true,
        default_value = DEFAULT_DB
    )]
    pub db: String,

    /// PostgreSQL only: the schema that holds baton's tables (default `baton`).
    #[arg(long, global = true, env = "BATON_SCHEMA")]
    pub schema: Option<String>,

    /// When to colour the output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn exit_codes_help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in crate::exit::TABLE {
        text.push_str(&format!("  {code:>3}  {meaning}\n"));
    }
    text
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the demo: post a stack-create job and run a conductor for it, showing progress.
    Demo(DemoArgs),
    /// Run a conductor with the demo flows until interrupted (SIGINT or SIGTERM).
    Conductor(ConductorArgs),
    /// Inspect flow runs.
    #[command(subcommand)]
    Flows(FlowsCommand),
    /// Inspect and administer jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Inspect the conductor fleet.
    #[command(subcommand)]
    Conductors(ConductorsCommand),
    /// Serve the operator's console (web pages and a JSON API) until interrupted.
    Serve(ServeArgs),
    /// Create or upgrade the database schema (every command does it on connecting, too).
    Migrate,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `baton serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on. Anything but loopback needs an admin token.
    #[arg(long, default_value = baton_console::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// A file holding the admin token that allows actions (cancel, retry, revert, ...): at
    /// least 16 visible ASCII characters. Or set BATON_ADMIN_TOKEN. Without either, the
    /// console is read-only. (There is no option taking the token itself: a command line is
    /// visible to every user of the machine.)
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
}

/// `baton demo`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    /// Post demo jobs instead of running one.
    #[command(subcommand)]
    pub post: Option<DemoCommand>,
    /// Make this atom fail, to watch the stack being undone (e.g. `server-1`).
    #[arg(long)]
    pub fail_at: Option<String>,
    /// The stack's name.
    #[arg(long, default_value = "demo")]
    pub stack: String,
    /// How many servers.
    #[arg(long, allow_negative_numbers = true, default_value_t = 2)]
    pub servers: u32,
    /// How many volumes.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    pub volumes: u32,
    /// How long each fake cloud call takes, in milliseconds.
    #[arg(long, allow_negative_numbers = true, default_value_t = 300)]
    pub step_ms: u64,
    /// Serve the operator's console beside the run, at ADDR (127.0.0.1:8080 when none is
    /// given; port 0 takes a free one), print the run's link, and keep serving once the run has
    /// ended, until interrupted (SIGINT or SIGTERM). Read-only unless BATON_ADMIN_TOKEN is set.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = baton_console::DEFAULT_LISTEN)]
    pub serve: Option<std::net::SocketAddr>,
}

/// `baton demo post`.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Post demo jobs for conductors to run.
    Post(DemoPostArgs),
}

/// `baton demo post`.
#[derive(Debug, Args)]
pub struct DemoPostArgs {
    /// The demo factory: stack-create, stack-update, stack-delete or steps.
    #[arg(long, default_value = "stack-create")]
    pub factory: String,
    /// The factory's parameters: a JSON object, `@FILE` to read it from a file, or `-` to
    /// read it from standard input.
    #[arg(long, default_value = "{}", value_name = "JSON|@FILE|-")]
    pub params: String,
    /// How many jobs to post (1 to 10000).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_POST_COUNT))]
    pub count: u32,
    /// A key shared by the jobs (they then run one at a time).
    #[arg(long)]
    pub key: Option<String>,
    /// Cancel and revert the unfinished jobs of the key first (see `jobs post --supersede`).
    #[arg(long, requires = "key")]
    pub supersede: bool,
    /// How long each run may take from now (e.g. `30s`): past it, the run is reverted.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: Option<std::time::Duration>,
    /// The factory version to run them with (default: the newest offered by the conductor
    /// that first claims each).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub version: Option<u32>,
    /// Print the posted jobs as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `baton conductor`.
#[derive(Debug, Args)]
pub struct ConductorArgs {
    /// Run the demo flows (the only registry this binary has; required for clarity).
    #[arg(long, required = true)]
    pub demo: bool,
    /// PostgreSQL: announce each step committed (`NOTIFY`), so that the console (`baton
    /// serve`) shows it at once rather than at its next poll.
    #[arg(long)]
    pub announce_steps: bool,
    /// A name for operators.
    #[arg(long, default_value = "conductor")]
    pub name: String,
    /// How many jobs to run at once (at least 1).
    #[arg(long, allow_negative_numbers = true, default_value_t = 4)]
    pub concurrency: usize,
    /// Claim lease, in milliseconds (at least three heartbeats).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Heartbeat interval, in milliseconds (at least 1, at most a third of the lease).
    #[arg(long, allow_negative_numbers = true, default_value_t = 2_000)]
    pub heartbeat_ms: u64,
    /// Poll interval when idle, in milliseconds (at least 1).
    #[arg(long, allow_negative_numbers = true, default_value_t = 250)]
    pub poll_ms: u64,
    /// How long a conductor already running jobs lets posted jobs gather after a wake-up
    /// before it claims, in milliseconds (0: claim at once).
    #[arg(long, allow_negative_numbers = true, default_value_t = 5)]
    pub gather_ms: u64,
    /// How long before its lease runs out a conductor that cannot renew a claim (its database
    /// does not answer) stops the job's tasks on its own, in milliseconds (default: a fifth of
    /// the lease; at most the lease less two heartbeats).
    #[arg(long, allow_negative_numbers = true)]
    pub self_fence_margin_ms: Option<u64>,
    /// When stopped (SIGINT, SIGTERM), how long to wait for running flows to reach a step
    /// boundary before halting them, in milliseconds (0: halt them at once).
    #[arg(long, allow_negative_numbers = true, default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
    /// Also delete runs and jobs that ended longer ago than this (e.g. `30d`), every ten
    /// minutes, beside the work; by default everything is kept.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retain: Option<std::time::Duration>,
    /// Which versions of the demo factories to offer, e.g. `1` or `1,2` (default: all). A
    /// factory without a version listed here keeps its only one.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub demo_versions: Option<Vec<u32>>,
    /// Append the demo providers' side effects to this file (one JSON object per line).
    #[arg(long)]
    pub effects: Option<PathBuf>,
    /// Exit once no job is waiting or running (for tests and scripts).
    #[arg(long)]
    pub exit_when_idle: bool,
    /// Serve this conductor's metrics in the Prometheus text format at
    /// `http://ADDR/metrics` (e.g. `127.0.0.1:9464`; port 0 picks a free one, printed at
    /// start). Read-only, and it shows no job data, so any address may be given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// How many rows `flows list` and `jobs list` print unless told otherwise: one page.
pub const PAGE: usize = 100;

/// A `--limit`: a whole number from 1 (a page of nothing would name no next page).
fn page_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("a page holds at least 1 row".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number of rows")),
    }
}

/// `baton flows ...`.
#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// List flow runs, newest first.
    List {
        /// Only runs in this state (e.g. RUNNING).
        #[arg(long)]
        state: Option<String>,
        /// Only runs with this name.
        #[arg(long)]
        name: Option<String>,
        /// Only runs built by this factory.
        #[arg(long)]
        factory: Option<String>,
        /// Only runs built by this version of their factory.
        #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
        version: Option<u32>,
        /// Only stranded runs: unfinished, and their job parked, ended or gone (no conductor
        /// will take them up by itself; see `flows revert` and `flows resume`).
        #[arg(long)]
        stranded: bool,
        /// At most this many: one page. When a page is full, the command names the next
        /// page's `--after` on stderr.
        #[arg(long, allow_negative_numbers = true, default_value_t = PAGE, value_parser = page_limit)]
        limit: usize,
        /// Start after this run (a flow id): the last row of the previous page. Runs are
        /// listed newest first, so the next page holds older runs.
        #[arg(long, value_name = "FLOW_ID")]
        after: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one run: its atoms, results, failures and history.
    Show {
        /// The flow id.
        id: String,
        /// Show results and failures in full.
        #[arg(long)]
        full: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draw a run's graph.
    Graph {
        /// The flow id.
        id: String,
        /// The output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Have a stranded or parked run rolled back: its job goes back on the board with a
    /// request to revert, and a conductor that has the run's definition reverts it.
    Revert(RecoverArgs),
    /// Have a stranded or parked run taken up again by a conductor, going on in the direction
    /// it was heading.
    Resume(RecoverArgs),
    /// Cancel a run its job's conductor is driving (or will): its running tasks are
    /// cancelled and it is reverted, or with `--no-revert` suspended and its job parked.
    Cancel(CancelArgs),
    /// Delete runs that ended (SUCCESS, FAILURE, REVERTED) before a time, with their atoms,
    /// step logs and histories. Runs that have not ended are never touched.
    Purge(PurgeArgs),
}

/// `baton flows revert`, `baton flows resume` and `baton jobs retry`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The flow id (for `jobs retry`, the job id; a job and its flow share their id).
    pub id: String,
    /// Wait until the job is at rest again (complete, trashed or parked), and exit with 1
    /// unless its run ended as asked.
    #[arg(long)]
    pub wait: bool,
    /// Print the job as JSON (when it was put back, and again at the end with `--wait`).
    #[arg(long)]
    pub json: bool,
}

/// `baton flows cancel` and `baton jobs cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The flow id (for `jobs cancel`, the job id; a job and its flow share their id).
    pub id: String,
    /// Suspend the run and park its job for an operator, instead of reverting it.
    #[arg(long)]
    pub no_revert: bool,
    /// Wait until the job is at rest (complete, trashed or parked), and exit with 1 unless its
    /// run ended as asked.
    #[arg(long)]
    pub wait: bool,
    /// Print the job as JSON (when the request was made, and again at the end with `--wait`).
    #[arg(long)]
    pub json: bool,
}

/// `baton flows purge` and `baton jobs purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Which ended runs or jobs: by age or by end time.
    #[command(flatten)]
    pub cutoff: Cutoff,
    /// How many to delete per transaction (at least 1); the command repeats until one
    /// deletes fewer.
    #[arg(long, allow_negative_numbers = true, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which ended runs or jobs a purge deletes: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Cutoff {
    /// Those that ended longer ago than this, e.g. `30d`, `12h`, `1h 30m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Those that ended before this time, in RFC 3339 (e.g. `2026-11-01T00:00:00Z`).
    #[arg(long)]
    pub ended_before: Option<String>,
}

/// `--format` of `flows graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

/// `baton jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs in posting order.
    List {
        /// Only jobs in this state (UNCLAIMED, CLAIMED, PARKED, COMPLETE, TRASHED).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs with this key.
        #[arg(long)]
        key: Option<String>,
        /// Only jobs claimed by this conductor id.
        #[arg(long)]
        owner: Option<String>,
        /// At most this many: one page. When a page is full, the command names the next
        /// page's `--after` on stderr.
        #[arg(long, allow_negative_numbers = true, default_value_t = PAGE, value_parser = page_limit)]
        limit: usize,
        /// Start after this job (a job id): the last row of the previous page.
        #[arg(long, value_name = "JOB_ID")]
        after: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Show {
        /// The job id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until a job is at rest (complete, trashed or parked), then say how it ended (with
    /// its flow's result, if it returns one); exit with 1 unless its run succeeded.
    Wait {
        /// The job id.
        id: String,
        /// Print the job as JSON when it is at rest.
        #[arg(long)]
        json: bool,
    },
    /// Post a job.
    Post {
        /// The flow factory that builds its flow.
        #[arg(long)]
        factory: String,
        /// A name (defaults to the factory's).
        #[arg(long)]
        name: Option<String>,
        /// The factory's parameters: JSON, `@FILE` to read it from a file, or `-` to read it
        /// from standard input.
        #[arg(long, default_value = "{}", value_name = "JSON|@FILE|-")]
        params: String,
        /// Run it only when no earlier job with this key is unfinished.
        #[arg(long)]
        key: Option<String>,
        /// Higher runs first.
        #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
        priority: i32,
        /// Cancel and revert the unfinished jobs of the same key, and run this one after them
        /// (a new update of a stack replacing the one in progress). Needs `--key`.
        #[arg(long, requires = "key")]
        supersede: bool,
        /// How long its run may take from now (e.g. `30s`, `10m`): past it, its running tasks
        /// are cancelled and the run is reverted.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        deadline: Option<std::time::Duration>,
        /// The factory version to run it with (default: the newest offered by the conductor
        /// that first claims it).
        #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
        version: Option<u32>,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a parked job back on the board (after deploying what it needed, say); its run goes
    /// on in the direction it was heading.
    Retry(RecoverArgs),
    /// Cancel a job: its owner (or whoever claims it next) cancels the running tasks and
    /// reverts the run, or with `--no-revert` suspends it and parks the job.
    Cancel(CancelArgs),
    /// Take a claimed job back from its owner, so another conductor resumes it at once.
    Abandon {
        /// The job id.
        id: String,
    },
    /// Delete jobs that ended (COMPLETE, TRASHED) before a time. Jobs waiting or running are
    /// never touched, nor are the runs the jobs drove (see `flows purge`).
    Purge(PurgeArgs),
    /// Retire a job for good.
    Trash {
        /// The job id.
        id: String,
        /// Why (recorded as the job's outcome).
        #[arg(long, default_value = "trashed by an operator")]
        reason: String,
        /// Trash it even though its run is unfinished (the run is left half done, and the
        /// job's key is freed: revert the run instead, with `flows revert`, unless you know
        /// better).
        #[arg(long)]
        force: bool,
    },
}

/// `baton conductors ...`.
#[derive(Debug, Subcommand)]
pub enum ConductorsCommand {
    /// List the live fleet.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
