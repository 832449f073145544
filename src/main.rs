//! The `clearance` command: parses the CLI, loads the configuration, and
//! calls into the library. All logic lives in the `clearance` crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use clearance::config::{self, Config};

#[derive(Parser)]
#[command(
    name = "clearance",
    version,
    about = "Streaming export-control decisions for AI model access"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// Configuration file (TOML). Defaults, then this file, then CLEARANCE_* variables.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the configuration).
    #[arg(long)]
    bootstrap: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        let mut cfg = config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(b) = &self.bootstrap {
            cfg.kafka.bootstrap_servers = b.clone();
        }
        Ok(cfg)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine.
    Run(ConfigArgs),
    /// Run the whole pipeline on synthetic data, in one command.
    Demo {
        /// Use this broker; without it, an in-process librdkafka mock cluster.
        #[arg(long)]
        bootstrap: Option<String>,
        /// Synthetic subjects.
        #[arg(long, default_value_t = 2000)]
        subjects: usize,
        /// Requests.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Keep the engine serving after the demo, until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Publish synthetic requests and measure decisions.
    Loadgen {
        #[command(flatten)]
        config: ConfigArgs,
        /// Requests to send.
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        /// Requests per second (omit for as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Synthetic subjects.
        #[arg(long, default_value_t = 10_000)]
        subjects: usize,
        /// Do not publish the subjects' eligibility records first.
        #[arg(long)]
        no_seed: bool,
        /// Engine admin address, to wait until it has applied the seeded feed.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Give up waiting for decisions after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Check a configuration: print the effective values, or every error.
    Config(ConfigArgs),
    /// Policy tools: check, test, diff, publish.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Decide a window of the decision log again from its recorded inputs,
    /// with the recorded policy versions (fidelity, the default) or a
    /// candidate policy (what-if, --policy), and report every difference.
    /// Exit code 0: no difference; 1: differences or bad records; 2: error.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Start of the window (RFC 3339, inclusive), by record timestamp.
    #[arg(long, conflicts_with_all = ["offsets", "input"])]
    from: Option<String>,
    /// End of the window (RFC 3339, exclusive); default: the current end.
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Explicit offsets of the decisions topic: P:START-END,... (END exclusive).
    #[arg(long, conflicts_with = "input")]
    offsets: Option<String>,
    /// A JSONL export instead of the topic: one decision per line (`-`: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// What-if: decide with this candidate policy instead of the recorded ones.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Fidelity: more policy texts for the history, besides the policy topic
    /// and the configured `policy.file` (repeatable).
    #[arg(long)]
    history_file: Vec<PathBuf>,
    /// Write every changed decision here (JSONL, or CSV for a `.csv` name).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Format of --out: jsonl or csv (default: by the file's extension).
    #[arg(long)]
    format: Option<String>,
    /// Write every bad record here (JSONL).
    #[arg(long)]
    bad_out: Option<PathBuf>,
    /// Only read the window, decoding nothing (measures the read rate).
    #[arg(long, conflicts_with = "policy")]
    no_work: bool,
    /// Also write every record of the window here, as read (JSONL: a copy
    /// that `--input` replays later).
    #[arg(long, conflicts_with = "input")]
    export: Option<PathBuf>,
    /// Deciding threads (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
}

/// `clearance replay`: the exit code (0 clean, 1 differences or bad
/// records, 2 error).
fn replay_command(a: ReplayArgs) -> i32 {
    match run_replay(a) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            2
        }
    }
}

fn run_replay(a: ReplayArgs) -> Result<bool> {
    use clearance::replay::{self, Format, Mode, Window};
    use std::io::IsTerminal;
    use std::sync::Arc;

    let window = match (&a.from, &a.offsets, &a.input) {
        (Some(from), None, None) => Some(Window::Times {
            from: replay::parse_time(from)?,
            to: a.to.as_deref().map(replay::parse_time).transpose()?,
        }),
        (None, Some(o), None) => Some(Window::Offsets(replay::parse_offsets(o)?)),
        (None, None, Some(_)) => None,
        _ => bail!("give exactly one of --from, --offsets, --input"),
    };
    let format = match &a.format {
        Some(f) => Some(Format::parse(f).with_context(|| format!("--format {f}: jsonl or csv"))?),
        None => None,
    };
    let cfg = a.config.load()?;
    let mode = if a.no_work {
        Mode::NoWork
    } else if let Some(p) = &a.policy {
        Mode::WhatIf(Arc::new(clearance::policy::CompiledPolicy::load_file(p)?))
    } else {
        replay::probe(&cfg, &cfg.topics.policy)?;
        let mut h = clearance::rollout::read_history(&cfg, Duration::from_secs(60))?;
        let file = clearance::engine::load_policy(&cfg)?;
        let src = format!("policy.file {}", file.source);
        h.add(file, &src);
        for f in &a.history_file {
            h.add(
                clearance::policy::CompiledPolicy::load_file(f)?,
                &f.display().to_string(),
            );
        }
        for (src, e) in &h.invalid {
            eprintln!("policy history: invalid record {src}: {e}");
        }
        Mode::Fidelity(Arc::new(h))
    };
    let jobs = a.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let (ranges, notes) = match &window {
        Some(w) => replay::resolve(&cfg, w)?,
        None => (Vec::new(), Vec::new()),
    };
    let total = window
        .as_ref()
        .map(|_| ranges.iter().map(|r| r.len()).sum::<u64>());

    // Progress: a bar on a terminal, periodic lines elsewhere.
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} decisions  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = std::time::Instant::now();
    let mut done = 0u64;
    let mut last_line = started;
    let mut progress = |n: u64| {
        done += n;
        if let Some(b) = &bar {
            b.inc(n);
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = std::time::Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64();
            match total {
                Some(t) => eprintln!("replay: {done}/{t} decisions, {rate:.0}/s"),
                None => eprintln!("replay: {done} decisions, {rate:.0}/s"),
            }
        }
    };
    let mut report = match &a.input {
        Some(path) => {
            let input: Box<dyn std::io::BufRead> = if path.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                let f = std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Box::new(std::io::BufReader::with_capacity(1 << 20, f))
            };
            replay::replay_source(mode, jobs, &mut progress, |sink| {
                replay::read_jsonl(input, sink).context("reading the input")
            })?
        }
        None => {
            let mut export = match &a.export {
                Some(path) => Some(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => None,
            };
            let mut failed = None;
            let report = replay::replay_source(mode, jobs, &mut progress, |sink| {
                replay::read_ranges(&cfg, &ranges, Duration::from_secs(30), |origin, bytes| {
                    if let Some(w) = export.as_mut() {
                        if let Err(e) = std::io::Write::write_all(w, bytes)
                            .and_then(|()| std::io::Write::write_all(w, b"\n"))
                        {
                            failed.get_or_insert(e);
                        }
                    }
                    sink(origin, bytes)
                })
            })?;
            if let Some(e) = failed {
                bail!("writing the export: {e}");
            }
            if let Some(mut w) = export {
                std::io::Write::flush(&mut w).context("writing the export")?;
            }
            report
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    report.notes.extend(notes);
    if let Some(path) = &a.out {
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        replay::write_changes(
            &mut w,
            &report.changes,
            format.unwrap_or_else(|| Format::of_path(path)),
        )?;
        std::io::Write::flush(&mut w)?;
    }
    if let Some(path) = &a.bad_out {
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        for b in &report.bad {
            serde_json::to_writer(&mut w, b)?;
            std::io::Write::write_all(&mut w, b"\n")?;
        }
        std::io::Write::flush(&mut w)?;
    }
    print!("{report}");
    std::io::Write::flush(&mut std::io::stdout())?;
    Ok(report.clean())
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file: every error with file, line and field; warnings.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Run the policy's test cases (default: FILE with `.tests.toml`).
    Test {
        /// The policy file.
        file: PathBuf,
        /// The tests file.
        #[arg(long)]
        tests: Option<PathBuf>,
    },
    /// Which rules, sets, models and settings changed between two policies.
    Diff {
        /// The old policy.
        old: PathBuf,
        /// The new policy.
        new: PathBuf,
    },
    /// Validate a policy and publish it to the policy topic: every running
    /// engine picks it up (or schedules it for its `effective_from`).
    Publish {
        #[command(flatten)]
        config: ConfigArgs,
        /// The policy file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the four topics (existing ones are left alone).
    Create(ConfigArgs),
}

async fn policy_command(cmd: PolicyCommand) -> Result<()> {
    use clearance::policy::{self, CompiledPolicy};
    match cmd {
        PolicyCommand::Check { file } => {
            let p = CompiledPolicy::load_file(&file)?;
            println!(
                "{}: valid (policy {} version {}, data {}, {} rules)",
                file.display(),
                p.id,
                p.version,
                p.data_version,
                p.rules.len()
            );
            for w in p.warnings() {
                println!("warning: {w}");
            }
        }
        PolicyCommand::Test { file, tests } => {
            let p = CompiledPolicy::load_file(&file)?;
            let tests = tests.unwrap_or_else(|| policy::testing::tests_path(&file));
            let report = policy::testing::run_tests(&p, &tests)?;
            println!("{report}");
            if !report.ok() {
                bail!("policy tests failed");
            }
        }
        PolicyCommand::Diff { old, new } => {
            print!("{}", policy::diff_files(&old, &new)?);
        }
        PolicyCommand::Publish { config, file } => {
            let cfg = config.load()?;
            let published = clearance::rollout::publish(&cfg, &file).await?;
            println!(
                "published policy {} version {} to {}[{}]@{}{}",
                published.id,
                published.version,
                cfg.topics.policy,
                published.partition,
                published.offset,
                published
                    .effective_from
                    .map(|t| format!(", effective from {t}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A root token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    token
}

/// Errors are printed as one chain (`error: outer: inner`), without a
/// backtrace even under `RUST_BACKTRACE=1`: they report bad input or an
/// unreachable broker, not a bug. Panics still print theirs.
#[tokio::main]
async fn main() -> ExitCode {
    match cli_main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: most library
/// errors already quote their source in their message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

async fn cli_main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Run(args) => {
            let cfg = args.load()?;
            let shutdown = shutdown_on_signals();
            clearance::engine::run(cfg, shutdown).await?;
        }
        Command::Demo {
            bootstrap,
            subjects,
            requests,
            admin,
            hold,
        } => {
            if subjects < 10 {
                bail!("--subjects must be at least 10 (one of each category)");
            }
            let shutdown = shutdown_on_signals();
            clearance::demo::run(
                clearance::demo::DemoOptions {
                    bootstrap,
                    subjects,
                    requests,
                    admin_listen: admin,
                    hold,
                },
                shutdown,
            )
            .await?;
        }
        Command::Loadgen {
            config,
            requests,
            rate,
            subjects,
            no_seed,
            admin,
            timeout_secs,
        } => {
            let cfg = config.load()?;
            if rate == Some(0) {
                bail!("--rate must be positive (omit it for as fast as possible)");
            }
            let report = clearance::loadgen::run(clearance::loadgen::LoadOptions {
                bootstrap: cfg.kafka.bootstrap_servers.clone(),
                requests_topic: cfg.topics.requests.clone(),
                decisions_topic: cfg.topics.decisions.clone(),
                eligibility_topic: cfg.topics.eligibility.clone(),
                requests,
                rate,
                subjects: subjects.max(10),
                seed: !no_seed,
                admin,
                timeout: Duration::from_secs(timeout_secs),
                run_id: format!("lg{}-", std::process::id()),
            })
            .await
            .context("load generation failed")?;
            println!("{report}");
            if report.decided < report.sent {
                bail!(
                    "only {} of {} requests were decided within {timeout_secs} s",
                    report.decided,
                    report.sent
                );
            }
        }
        Command::Topics {
            command: TopicsCommand::Create(args),
        } => {
            let cfg = args.load()?;
            let created = clearance::kafka::create_topics(&cfg.kafka, &cfg.topics).await?;
            if created.is_empty() {
                println!("all topics already exist");
            } else {
                println!("created: {}", created.join(", "));
            }
        }
        Command::Config(args) => {
            let mut cfg = args.load()?;
            for (k, v) in cfg.kafka.properties.iter_mut() {
                if clearance::kafka::is_secret_key(k) {
                    *v = "***".into();
                }
            }
            print!("{}", toml::to_string_pretty(&cfg)?);
        }
        Command::Policy { command } => policy_command(command).await?,
        Command::Replay(args) => {
            let code = tokio::task::block_in_place(|| replay_command(args));
            std::process::exit(code);
        }
    }
    Ok(())
}
