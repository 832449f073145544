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
            println!("{}", policy::diff_files(&old, &new)?);
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

/// Logs go to stderr, in colour only when it is a terminal: a file or a
/// log collector gets no ANSI escape codes.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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
    }
    Ok(())
}
