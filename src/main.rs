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
        /// Subject ids are `RUN_ID-u<i>`: a later run with the same run id
        /// and `--subjects` uses the same subjects (see `--send-only`).
        /// Default: unique to this process.
        #[arg(long)]
        run_id: Option<String>,
        /// Only publish the subjects' eligibility records (and, with
        /// `--admin`, wait until the engine has applied them); send no request.
        #[arg(long, conflicts_with = "send_only")]
        seed_only: bool,
        /// Publish no eligibility record: only send requests for the run id's
        /// subjects (seeded by an earlier run) and read the decisions back.
        #[arg(long, alias = "no-seed")]
        send_only: bool,
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
    /// Print the least-privilege ACLs of the engine, a frontend, the policy
    /// publisher and the change-feed producer for this configuration's
    /// topics and group, one per line (`scripts/kafka acls` reads them; see
    /// docs/security.md).
    Acls {
        #[command(flatten)]
        config: ConfigArgs,
        /// SCRAM user of the engine.
        #[arg(long, default_value = "engine")]
        engine_user: String,
        /// SCRAM user of a frontend (sends requests).
        #[arg(long, default_value = "frontend")]
        frontend_user: String,
        /// SCRAM user of the policy publisher.
        #[arg(long, default_value = "publisher")]
        publisher_user: String,
        /// SCRAM user of the change-feed producer.
        #[arg(long, default_value = "feeder")]
        feeder_user: String,
    },
    /// Policy tools: check, test, diff, publish.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The derivation of a recorded decision: inputs, the derived country,
    /// every rule with its verdict, authorizations, ownership, outcome.
    /// Exit code 0: the derivation gives the recorded decision; 1: it
    /// differs (the record was not made from these inputs with this
    /// policy); 2: error.
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        /// Find the decision of this request id on the decisions topic.
        #[arg(long, conflicts_with = "input")]
        request_id: Option<String>,
        /// With --request-id: only records at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_rfc3339)]
        from: Option<time::OffsetDateTime>,
        /// With --request-id: only records before this time (RFC 3339).
        #[arg(long, value_parser = parse_rfc3339)]
        to: Option<time::OffsetDateTime>,
        /// Read the decision (JSON) from this file, or `-` for stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The policy file the decision was made with; default: the policy
        /// history on the policy topic (by id, version and digest).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
        /// Bound on reading the topics, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 date-time with an offset: {e}"))
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
        /// Sign the text with this ed25519 signing key file (see `keygen`).
        #[arg(long, conflicts_with = "signature")]
        key: Option<PathBuf>,
        /// Publish with the detached signature `policy sign` wrote.
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// Make an ed25519 key pair for signing policies: the signing key goes
    /// to FILE (mode 0600), the public key (for `policy.trusted_keys`) and
    /// its id are printed.
    Keygen {
        /// Where to write the signing key; refused if it exists.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a policy text: writes `FILE.sig` (key id and signature), for
    /// `publish --signature`.
    Sign {
        /// The policy file.
        file: PathBuf,
        /// The signing key file.
        #[arg(long)]
        key: PathBuf,
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
        PolicyCommand::Keygen { out } => {
            use std::io::Write as _;
            let (secret, public, id) = clearance::policy::signing::generate();
            let mut f = std::fs::OpenOptions::new();
            f.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
            let mut file = f
                .open(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            writeln!(file, "{secret}").with_context(|| format!("writing {}", out.display()))?;
            println!("signing key written to {} (keep it secret)", out.display());
            println!("public key (for policy.trusted_keys): {public}");
            println!("key id: {id}");
        }
        PolicyCommand::Sign { file, key } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            CompiledPolicy::from_toml_str(&text, &file.display().to_string())?;
            let signer = read_signer(&key)?;
            let (id, sig) = signer.sign(text.as_bytes());
            let mut out = file.clone().into_os_string();
            out.push(".sig");
            let out = PathBuf::from(out);
            std::fs::write(&out, format!("{id}\n{sig}\n"))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("signed {} with key {id}: {}", file.display(), out.display());
        }
        PolicyCommand::Publish {
            config,
            file,
            key,
            signature,
        } => {
            let cfg = config.load()?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let source = file.display().to_string();
            let published = match (key, signature) {
                (Some(k), _) => {
                    let signer = read_signer(&k)?;
                    clearance::rollout::publish_signed(&cfg, &text, &source, Some(&signer)).await?
                }
                (None, Some(sig)) => {
                    let sig_text = std::fs::read_to_string(&sig)
                        .with_context(|| format!("reading {}", sig.display()))?;
                    let mut lines = sig_text.lines().map(str::trim).filter(|l| !l.is_empty());
                    let (Some(id), Some(sig_b64), None) =
                        (lines.next(), lines.next(), lines.next())
                    else {
                        bail!(
                            "{}: expected two lines, a key id and a signature",
                            sig.display()
                        );
                    };
                    clearance::rollout::publish_with_signature(&cfg, &text, &source, id, sig_b64)
                        .await?
                }
                (None, None) => clearance::rollout::publish_text(&cfg, &text, &source).await?,
            };
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

fn read_signer(path: &std::path::Path) -> Result<clearance::policy::signing::PolicySigner> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading signing key {}", path.display()))?;
    clearance::policy::signing::PolicySigner::from_text(&text)
        .with_context(|| format!("signing key {}", path.display()))
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            match e.downcast_ref::<ToolError>() {
                Some(t) => ExitCode::from(t.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// An error of a tool whose exit code 1 means "differences found", so
/// that its errors exit with another code (2).
#[derive(Debug)]
struct ToolError {
    code: u8,
    message: String,
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}

/// An error of a 0/1/2 tool: exit code 2, the same one-line message.
fn tool_error(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(ToolError {
        code: 2,
        message: one_line(&e),
    })
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

async fn cli_main() -> Result<ExitCode> {
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
            run_id,
            seed_only,
            send_only,
            admin,
            timeout_secs,
        } => {
            let cfg = config.load()?;
            if rate == Some(0) {
                bail!("--rate must be positive (omit it for as fast as possible)");
            }
            let run_id = match run_id {
                Some(id) => {
                    if id.is_empty()
                        || !id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        bail!("--run-id must be letters, digits, '-', '_' or '.'");
                    }
                    id
                }
                None => format!("lg{}", std::process::id()),
            };
            let subjects = subjects.max(10);
            let report = clearance::loadgen::run(clearance::loadgen::LoadOptions {
                kafka: cfg.kafka.clone(),
                requests_topic: cfg.topics.requests.clone(),
                decisions_topic: cfg.topics.decisions.clone(),
                eligibility_topic: cfg.topics.eligibility.clone(),
                requests,
                rate,
                subjects,
                seed: !send_only,
                send: !seed_only,
                admin,
                timeout: Duration::from_secs(timeout_secs),
                run_id: format!("{run_id}-"),
            })
            .await
            .context("load generation failed")?;
            if seed_only {
                println!(
                    "run id {run_id}: seeded {} eligibility records of {subjects} subjects \
                     (send requests for them with --run-id {run_id} --subjects {subjects} --send-only)",
                    report.seeded
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!("run id {run_id}");
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
        Command::Acls {
            config,
            engine_user,
            frontend_user,
            publisher_user,
            feeder_user,
        } => {
            let cfg = config.load()?;
            let principals = clearance::security::Principals {
                engine: engine_user,
                frontend: frontend_user,
                publisher: publisher_user,
                feeder: feeder_user,
            };
            println!("# PRINCIPAL RESOURCE PATTERN NAME OPERATION (ALLOW, any host)");
            for acl in clearance::security::acl_plan(&cfg, &principals) {
                println!("{acl}");
            }
        }
        Command::Policy { command } => policy_command(command).await?,
        Command::Explain {
            config,
            request_id,
            from,
            to,
            input,
            policy,
            json,
            timeout_secs,
        } => {
            return explain_command(
                config,
                request_id,
                (from, to),
                input,
                policy,
                json,
                Duration::from_secs(timeout_secs),
            )
            .await
            .map_err(tool_error);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn explain_command(
    config: ConfigArgs,
    request_id: Option<String>,
    (from, to): (Option<time::OffsetDateTime>, Option<time::OffsetDateTime>),
    input: Option<PathBuf>,
    policy: Option<PathBuf>,
    json: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    use clearance::event::Decision;
    use clearance::policy::CompiledPolicy;
    let cfg = || config.load();
    let decision: Decision = match (&request_id, &input) {
        (Some(id), None) => {
            let cfg = cfg()?;
            let id2 = id.clone();
            tokio::task::spawn_blocking(move || {
                clearance::explain::find_decision(&cfg, &id2, from, to, timeout)
            })
            .await??
            .with_context(|| {
                format!("no decision for request {id} on the decisions topic in that window")
            })?
        }
        (None, Some(path)) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
            };
            serde_json::from_str(&text).context("the input is not a decision (JSON)")?
        }
        _ => bail!("give --request-id ID (with --from/--to) or --input FILE"),
    };
    let v = &decision.versions;
    let compiled = match &policy {
        Some(path) => CompiledPolicy::load_file(path)?,
        None => {
            let cfg = cfg()?;
            let history = tokio::task::spawn_blocking(move || {
                clearance::rollout::read_history(&cfg, timeout)
            })
            .await??;
            let p = history
                .get(&v.policy_id, &v.policy_version, &v.policy_digest)
                .context("the decision's policy is not in the policy history (give it with --policy FILE)")?;
            (**p).clone()
        }
    };
    let e = clearance::explain::explain(&compiled, &decision)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", clearance::explain::render(&e));
    }
    Ok(if e.differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
