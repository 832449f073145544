//! The `clearance` command: parses the CLI, loads the configuration, and
//! calls into the library. All logic lives in the `clearance` crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use clearance::config::{self, Config};

/// mimalloc: decoding JSON allocates small objects by the million (the
/// engine's requests, replay's recorded inputs); measured faster than the
/// system allocator for both (README, "Replay").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Measure what a frontend sees instead of draining a burst: the
        /// round trip through `clearance::client` (request/reply), open
        /// loop at `--rate`, from each request's scheduled send time.
        #[arg(long)]
        latency: bool,
        /// With `--latency`: measured seconds per phase (after a warm-up
        /// of a fifth of it, at most 2 s).
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// With `--latency`: the client's producer linger.
        #[arg(long, default_value_t = 0)]
        linger_ms: u64,
        /// With `--latency`: also run the same load through a no-work echo
        /// (consume, produce the same bytes to the reply partition) on the
        /// same broker, phases alternating, and report engine/echo ratios.
        #[arg(long, requires = "latency")]
        echo: bool,
        /// With `--latency`: also measure freshness, from an eligibility
        /// update produced to the first decision received that used it
        /// (a hot subject updated every 5 ms, every 10th request its).
        #[arg(long, requires = "latency")]
        freshness: bool,
        /// With `--latency`: instead of an open-loop load, keep this many
        /// calls in flight for `--duration-secs` and print the round trips
        /// per second (the maximum the open-loop rates are fractions of).
        #[arg(long, requires = "latency")]
        saturate: Option<usize>,
        /// With `--latency`: engine (and echo) phases, alternating.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// With `--latency`: the client's timeout per call (a timeout is a
        /// fail-closed deny, counted).
        #[arg(long, default_value_t = 2000)]
        call_timeout_ms: u64,
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
    /// Exit 0 when URL answers 200, 1 otherwise: the container's
    /// HEALTHCHECK (the runtime image has no curl).
    Healthcheck {
        /// An http:// URL, with its port.
        #[arg(long, default_value = "http://127.0.0.1:9464/readyz")]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into --dir.
    Man {
        /// Write clearance.1 and a page per subcommand (clearance-run.1, ...) here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the configuration reference (docs/configuration.md, Markdown):
    /// every key, its default, environment variable and an example.
    ConfigDocs,
    /// Decide a window of the decision log again from its recorded inputs,
    /// with the recorded policy versions (fidelity, the default) or a
    /// candidate policy (what-if, --policy), and report every difference.
    /// Exit code 0: no difference; 1: differences or bad records; 2: error.
    Replay(ReplayArgs),
    /// The drain benchmark's tools (`scripts/bench`; BENCHMARKS.md, "Drain").
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// A no-work pipe: consume INPUT and produce the same key and value to
    /// OUTPUT, offsets stored after delivery (the engine's at-least-once
    /// path). Prints READY once a partition is assigned; runs until SIGTERM.
    Passthrough {
        #[command(flatten)]
        config: ConfigArgs,
        /// Input topic.
        #[arg(long)]
        input: String,
        /// Output topic.
        #[arg(long)]
        output: String,
        /// Consumer group (default: `kafka.group_id`).
        #[arg(long)]
        group: Option<String>,
        /// `engine`: exactly clearance's client settings; `batched`: the best
        /// batching settings found.
        #[arg(long, default_value = "engine")]
        profile: String,
        /// Consumer threads (default: `engine.workers`, one per core unless
        /// the configuration says otherwise).
        #[arg(long)]
        threads: Option<usize>,
        /// Extra librdkafka property KEY=VALUE for every client (repeatable;
        /// wins over the profile).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Measure one contender's drain: poll TOPIC's high watermarks, clock
    /// from the first output record to COUNT, CPU of PID (and descendants)
    /// and of the broker over that window, peak RSS; one JSON line.
    Watch {
        /// Kafka bootstrap servers.
        #[arg(long)]
        bootstrap: String,
        /// The contender's output topic.
        #[arg(long)]
        topic: String,
        /// Records to wait for.
        #[arg(long)]
        count: u64,
        /// The contender's process.
        #[arg(long)]
        pid: Option<u32>,
        /// The broker's process.
        #[arg(long)]
        broker_pid: Option<u32>,
        /// Milliseconds between two looks.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
    },
    /// The eligibility cache at scale, in this process (no Kafka): RSS per
    /// record after filling the store with the load generator's
    /// population, lookup plus decide, and a DRAM probe over as much
    /// memory. Prints one JSON line.
    Cache {
        /// Subjects, each with a record.
        #[arg(long, default_value_t = 1_000_000)]
        subjects: usize,
        /// Decisions per lookup measurement (0: none).
        #[arg(long, default_value_t = 2_000_000)]
        lookups: usize,
        /// Also walk a random cycle over as much memory as the store took.
        #[arg(long)]
        probe: bool,
        /// The policy decided with.
        #[arg(long, default_value = "benches/cedar/directive_core.toml")]
        policy: std::path::PathBuf,
    },
    /// The no-work consumer: read TOPIC (default: the change feed) from its
    /// beginning to its high watermarks with the change feed's consumer
    /// settings, and nothing else. Prints one JSON line.
    Read {
        #[command(flatten)]
        config: ConfigArgs,
        /// Topic (default: `topics.eligibility`).
        #[arg(long)]
        topic: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
    },
    /// Compare the outcomes (`request_id`, `outcome`) of two topics; exit 0
    /// when every request is in both with the same outcome, 1 otherwise.
    /// Prints one JSON line.
    Compare {
        /// Kafka bootstrap servers.
        #[arg(long)]
        bootstrap: String,
        /// First topic.
        #[arg(long)]
        a: String,
        /// Second topic.
        #[arg(long)]
        b: String,
        /// Give up reading after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Publish the benchmark's input once: the subjects' eligibility records
    /// and the requests (topics created if missing).
    Load {
        /// Kafka bootstrap servers.
        #[arg(long)]
        bootstrap: String,
        /// Requests topic.
        #[arg(long)]
        requests_topic: String,
        /// Change-feed topic (created compacted).
        #[arg(long)]
        feed_topic: String,
        /// Partitions of both when created.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Requests.
        #[arg(long, default_value_t = 2_000_000)]
        requests: usize,
        /// Subjects.
        #[arg(long, default_value_t = 200_000)]
        subjects: usize,
        /// Prefix of subject and request ids.
        #[arg(long, default_value = "bench")]
        run_id: String,
    },
    /// Create a topic if it is missing.
    Topic {
        /// Kafka bootstrap servers.
        #[arg(long)]
        bootstrap: String,
        /// The topic.
        #[arg(long)]
        name: String,
        /// Partitions.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
    },
    /// Render a results file (JSON lines of `scripts/bench`) as Markdown;
    /// with --into, replace the `<!-- bench:begin -->` section of that file.
    Report {
        /// The results file.
        #[arg(long)]
        results: PathBuf,
        /// The command that produced them.
        #[arg(long, default_value = "scripts/bench")]
        command: String,
        /// A line describing the input.
        #[arg(long, default_value = "")]
        input: String,
        /// Replace the marked section of this file instead of printing.
        #[arg(long)]
        into: Option<PathBuf>,
    },
}

fn kafka_on(bootstrap: &str) -> clearance::config::KafkaConfig {
    clearance::config::KafkaConfig {
        bootstrap_servers: bootstrap.to_string(),
        ..Default::default()
    }
}

async fn bench_command(command: BenchCommand) -> Result<ExitCode> {
    use clearance::bench;
    match command {
        BenchCommand::Passthrough {
            config,
            input,
            output,
            group,
            profile,
            threads,
            set,
        } => {
            let mut cfg = config.load()?;
            if let Some(g) = group {
                cfg.kafka.group_id = g;
            }
            let profile: bench::Profile = profile.parse()?;
            for kv in &set {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--set {kv}: KEY=VALUE"))?;
                if clearance::kafka::protected(k).is_some() {
                    bail!("--set {k}: a protected setting (see `clearance config`)");
                }
                cfg.kafka.properties.insert(k.into(), v.into());
            }
            profile.apply(&mut cfg);
            // The engine's default: one per core.
            let threads = threads.unwrap_or_else(|| cfg.engine.effective_workers());
            let opts = bench::PassthroughOptions {
                cfg,
                input,
                output,
                threads,
            };
            let shutdown = shutdown_on_signals();
            let n = tokio::task::spawn_blocking(move || {
                bench::passthrough(
                    &opts,
                    || {
                        use std::io::Write;
                        println!("READY");
                        let _ = std::io::stdout().flush();
                    },
                    &shutdown,
                )
            })
            .await??;
            eprintln!("passed {n} records ({})", profile.as_str());
        }
        BenchCommand::Watch {
            bootstrap,
            topic,
            count,
            pid,
            broker_pid,
            interval_ms,
            timeout_secs,
        } => {
            let opts = bench::WatchOptions {
                kafka: kafka_on(&bootstrap),
                topic,
                count,
                pid,
                broker_pid,
                interval: Duration::from_millis(interval_ms.max(1)),
                timeout: Duration::from_secs(timeout_secs),
            };
            let r = tokio::task::spawn_blocking(move || bench::watch(&opts)).await??;
            println!("{}", serde_json::to_string(&r)?);
        }
        BenchCommand::Compare {
            bootstrap,
            a,
            b,
            timeout_secs,
        } => {
            let k = kafka_on(&bootstrap);
            let r = tokio::task::spawn_blocking(move || {
                bench::compare(&k, &a, &b, Duration::from_secs(timeout_secs))
            })
            .await?
            .map_err(|e| tool_error(e.into()))?;
            println!("{}", serde_json::to_string(&r)?);
            if !r.all_agree() {
                return Ok(ExitCode::from(1));
            }
        }
        BenchCommand::Load {
            bootstrap,
            requests_topic,
            feed_topic,
            partitions,
            requests,
            subjects,
            run_id,
        } => {
            let l = bench::load(&bench::LoadOptions {
                kafka: kafka_on(&bootstrap),
                requests_topic,
                feed_topic,
                partitions,
                requests,
                subjects,
                run_id,
            })
            .await?;
            println!(
                "published {} eligibility records and {} requests ({} bytes of values, {:.0} on average)",
                l.records,
                l.requests,
                l.request_bytes,
                l.request_bytes as f64 / l.requests.max(1) as f64
            );
        }
        BenchCommand::Read {
            config,
            topic,
            timeout_secs,
        } => {
            let cfg = config.load()?;
            let topic = topic.unwrap_or_else(|| cfg.topics.eligibility.clone());
            let timeout = std::time::Duration::from_secs(timeout_secs);
            let report =
                tokio::task::spawn_blocking(move || bench::read_all(&cfg, &topic, timeout))
                    .await
                    .context("the reader panicked")??;
            println!("{}", serde_json::to_string(&report)?);
        }
        BenchCommand::Cache {
            subjects,
            lookups,
            probe,
            policy,
        } => {
            let policy = clearance::policy::CompiledPolicy::load_file(&policy)
                .with_context(|| format!("--policy {}", policy.display()))?;
            let opts = bench::cache::CacheOptions {
                subjects,
                lookups,
                probe,
            };
            let report = tokio::task::spawn_blocking(move || bench::cache::cache(&opts, &policy))
                .await
                .context("the cache measurement panicked")?;
            println!("{}", serde_json::to_string(&report)?);
        }
        BenchCommand::Topic {
            bootstrap,
            name,
            partitions,
        } => bench::create_topic(&kafka_on(&bootstrap), &name, partitions, &[]).await?,
        BenchCommand::Report {
            results,
            command,
            input,
            into,
        } => {
            let text = std::fs::read_to_string(&results)
                .with_context(|| format!("cannot read {}", results.display()))?;
            let meta = bench::ReportMeta {
                command,
                date: time::OffsetDateTime::now_utc().date().to_string(),
                machine: bench::machine(),
                input,
            };
            let md = bench::render(&bench::parse_results(&text)?, &meta);
            match into {
                Some(path) => {
                    let doc = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    std::fs::write(&path, bench::replace_section(&doc, &md)?)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                None => print!("{md}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 date-time with an offset: {e}"))
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
            println!("{}", policy::diff_files(&old, &new)?);
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
            latency,
            duration_secs,
            linger_ms,
            echo,
            freshness,
            rounds,
            call_timeout_ms,
            saturate,
        } => {
            let cfg = config.load()?;
            if rate == Some(0) {
                bail!("--rate must be positive (omit it for as fast as possible)");
            }
            if latency && saturate.is_none() && rate.is_none() {
                bail!("--latency needs --rate (requests/s, open loop) or --saturate N");
            }
            if latency && (duration_secs == 0 || rounds == 0 || call_timeout_ms == 0) {
                bail!("--duration-secs, --rounds and --call-timeout-ms must be positive");
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
            if latency {
                let opts = clearance::latency::LatencyOptions {
                    cfg: cfg.clone(),
                    rate: rate.unwrap_or(1),
                    duration: Duration::from_secs(duration_secs),
                    subjects,
                    run_id: format!("{run_id}-"),
                    seed: !send_only,
                    linger_ms,
                    echo,
                    freshness,
                    rounds,
                    call_timeout: Duration::from_millis(call_timeout_ms),
                    admin,
                };
                if let Some(concurrency) = saturate {
                    let (rate, failed) = clearance::latency::saturate(&opts, concurrency)
                        .await
                        .context("saturation measurement failed")?;
                    println!(
                        "saturated with {concurrency} calls in flight: {rate:.0} round trips/s ({failed} timed out or failed)"
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let report = clearance::latency::run(opts)
                    .await
                    .context("latency measurement failed")?;
                println!("run id {run_id}");
                print!("{report}");
                let bad: usize = report
                    .phases
                    .iter()
                    .map(|p| p.timeouts + p.errors + p.mismatches)
                    .sum();
                if bad > 0 {
                    bail!("{bad} calls timed out, failed or got an unexpected outcome");
                }
                return Ok(ExitCode::SUCCESS);
            }
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
        Command::Healthcheck { url, timeout_secs } => {
            healthcheck(&url, Duration::from_secs(timeout_secs)).await?;
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "clearance", &mut std::io::stdout());
        }
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match dir {
                Some(dir) => clap_mangen::generate_to(cmd, &dir)
                    .with_context(|| format!("writing man pages to {}", dir.display()))?,
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
            }
        }
        Command::ConfigDocs => match clearance::config_docs::render() {
            Ok(text) => print!("{text}"),
            Err(problems) => bail!(
                "the configuration is not fully documented:\n  {}",
                problems.join("\n  ")
            ),
        },
        Command::Bench { command } => return bench_command(command).await,
        Command::Replay(args) => {
            let code = tokio::task::block_in_place(|| replay_command(args));
            std::process::exit(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// GET `url` (http://HOST:PORT/PATH): Ok on 200, an error naming the URL
/// and what went wrong otherwise.
async fn healthcheck(url: &str, timeout: Duration) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let check = async {
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("cannot resolve {authority:?} (give HOST:PORT)"))?
            .next()
            .with_context(|| format!("{authority:?} has no address"))?;
        clearance::admin::get(addr, path)
            .await
            .with_context(|| format!("cannot reach {url}"))
    };
    let (code, body) = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within {timeout:?}"))??;
    if code != 200 {
        bail!(
            "{url} answered {code}: {}",
            body.lines().next().unwrap_or("").trim()
        );
    }
    println!("{url}: {code}");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every visible subcommand, nested ones as `policy check`.
    fn subcommands(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, String)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let path = format!("{prefix}{}", sub.get_name());
            out.push((path.clone(), sub.get_name().to_string()));
            subcommands(sub, &format!("{path} "), out);
        }
    }

    fn all_subcommands() -> Vec<(String, String)> {
        let mut out = Vec::new();
        subcommands(&Cli::command(), "", &mut out);
        assert!(out.len() >= 15, "{out:?}");
        out
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_name_every_subcommand() {
        use clap_complete::Shell;
        let subs = all_subcommands();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "clearance", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.len() > 1000, "{shell}: {} bytes", text.len());
            for (path, name) in &subs {
                assert!(
                    text.contains(name.as_str()),
                    "{shell} completions lack `{path}`"
                );
            }
        }
    }

    #[test]
    fn man_pages_name_every_subcommand() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        let page = String::from_utf8(out).unwrap().replace("\\-", "-");
        assert!(page.contains(".TH clearance 1"), "{page}");
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            assert!(
                page.contains(sub.get_name()),
                "clearance.1 lacks `{}`",
                sub.get_name()
            );
        }
        // --dir: a page per command, nested ones too.
        let dir = std::env::temp_dir().join(format!("clearance-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        clap_mangen::generate_to(Cli::command(), &dir).unwrap();
        for (path, _) in all_subcommands() {
            let file = dir.join(format!("clearance-{}.1", path.replace(' ', "-")));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(!text.is_empty(), "{}", file.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
