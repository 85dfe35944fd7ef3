//! criguard's entry point: command line → config → logs → run → exit code.

use std::process::ExitCode;

use clap::Parser;
use criguard::cli::{Cli, Command, PolicyCommand};
use criguard::config::Config;
use criguard::reload::ConfigSource;
use criguard::settings::LogFormat;
use criguard::telemetry::admin::AdminAddress;
use criguard::telemetry::logging::{self, LevelHandle};
use tokio_util::sync::CancellationToken;

/// Exit codes: 0 clean stop, 1 failure while running, 2 bad configuration.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    criguard::allocator::return_freed_memory_at_once();
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Serve(args) => args.worker_threads,
        _ => 2,
    };
    // One thread avoids cross-thread wake-ups, which cost more CPU per call than the proxying.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads.into());
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("criguard: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            let source = ConfigSource {
                file: args.config.clone(),
                overrides: args.overrides(),
            };
            let config = match source.load() {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("criguard: invalid configuration: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let log = logging::init(config.log_level.as_deref(), config.log_format);
            serve(config, source, log).await
        }
        Command::Check { config } => match Config::load(Some(&config), Default::default()) {
            Ok(checked) if checked.policies.is_some() => {
                let dir = checked
                    .policies
                    .as_deref()
                    .unwrap_or(std::path::Path::new("."));
                match criguard::policy::file::load_dir(dir, &checked.policy_settings) {
                    Ok(set) => {
                        println!(
                            "{}: OK ({} policies in {})",
                            config.display(),
                            set.policies.len(),
                            dir.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        eprintln!("criguard: invalid policy: {err}");
                        ExitCode::from(EXIT_CONFIG)
                    }
                }
            }
            Ok(checked) => {
                println!(
                    "{}: OK (listen {}, runtime {}, maxMessageSize {})",
                    config.display(),
                    checked
                        .listeners
                        .iter()
                        .map(|l| l.socket.path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    checked.runtime_endpoint,
                    checked.max_message_size
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("criguard: invalid configuration: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Policy(command) => policy_command(command),
        Command::Demo => {
            logging::init(Some("error"), LogFormat::Text);
            match criguard::demo::run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("criguard demo failed: {err:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::FakeRuntime {
            listen,
            containers,
            stateless,
        } => {
            logging::init(None, LogFormat::Text);
            let shutdown = CancellationToken::new();
            match criguard::signal::Signals::watch() {
                Ok(signals) => signals.shutdown_only(shutdown.clone()),
                Err(err) => {
                    eprintln!("criguard: cannot watch signals: {err}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            }
            let mut runtime = criguard::fake::FakeRuntime::with_containers(containers);
            if stateless {
                runtime = runtime.stateless();
            }
            match runtime.serve(&listen, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("criguard fake-runtime: {err:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

fn policy_command(command: PolicyCommand) -> ExitCode {
    use criguard::policy::cases;
    match command {
        PolicyCommand::Test { dir } => match cases::test_dir(&dir) {
            Ok(report) => {
                for failure in &report.failures {
                    println!("FAIL {failure}");
                }
                println!("{} passed, {} failed", report.passed, report.failures.len());
                if report.failures.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
            Err(err) => {
                eprintln!("criguard: invalid policy: {err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        PolicyCommand::Eval {
            policies,
            method,
            request,
        } => {
            let set = match criguard::policy::file::load_dir(
                &policies,
                &criguard::policy::PolicySettings::default(),
            ) {
                Ok(set) => set,
                Err(err) => {
                    eprintln!("criguard: invalid policy: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let json = std::fs::read_to_string(&request)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
            let rpc = criguard::proxy::rpc::Rpc::named(&method);
            let bytes = match json.and_then(|j| cases::encode_request(&rpc, &j)) {
                Ok(bytes) => bytes,
                Err(err) => {
                    eprintln!("criguard: {}: {err}", request.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let evaluation = cases::evaluate(&set, &rpc, &bytes, None, Default::default());
            println!("policies matched: {}", evaluation.evaluated.join(", "));
            for finding in &evaluation.findings {
                println!(
                    "  {} {}/{}: {}",
                    finding.mode.as_str(),
                    finding.policy,
                    finding.rule,
                    finding.describe()
                );
            }
            match evaluation.refusal() {
                Some(refusal) => println!("decision: deny ({})", refusal.describe()),
                None => println!("decision: allow"),
            }
            ExitCode::SUCCESS
        }
    }
}

async fn serve(config: Config, source: ConfigSource, log: Option<LevelHandle>) -> ExitCode {
    // Watched from the start: a signal during start-up waits for the serving loop.
    let signals = match criguard::signal::Signals::watch() {
        Ok(signals) => signals,
        Err(err) => {
            tracing::error!(error = %err, "cannot watch signals");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // Without the admin server nobody can read the metrics: recording them would be wasted.
    let scraped = !matches!(config.admin_address, AdminAddress::Off);
    let prometheus = if config.metrics && scraped {
        match criguard::telemetry::metrics::install() {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::error!(error = %err, "cannot install the metrics recorder");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    } else {
        None
    };
    let proxy = match criguard::app::Proxy::bind(config, prometheus).await {
        Ok(proxy) => proxy,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    proxy
        .reload_from(source, log)
        .on_signals(signals)
        .run(CancellationToken::new())
        .await;
    ExitCode::SUCCESS
}
