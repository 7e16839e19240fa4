//! The berthd binary: flags (containerd's names), config file, logging, then `daemon::run`.

use berthd::config::{Config, DEFAULT_CONFIG_PATH};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "berth container-management daemon (containerd v1 API)"
)]
struct Cli {
    /// Persistent data directory
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state directory
    #[arg(long)]
    state: Option<PathBuf>,
    /// API socket path
    #[arg(long, short = 'a')]
    address: Option<PathBuf>,
    /// TOML config file (default /etc/berth/config.toml when it exists)
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// trace, debug, info, warn or error (RUST_LOG overrides)
    #[arg(long, short = 'l')]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration helpers
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// A pod's namespace holder for the CRI (berthd runs it; not for people)
    #[command(hide = true)]
    CriHolder {
        #[arg(long)]
        ipc: bool,
        #[arg(long)]
        uts: bool,
        #[arg(long)]
        pid: bool,
        #[arg(long)]
        net: bool,
        #[arg(long)]
        hostname: Option<String>,
        /// The pod's user namespace maps, `container:host:length[,…]` (both or neither)
        #[arg(long, requires = "gidmap")]
        uidmap: Option<String>,
        #[arg(long, requires = "uidmap")]
        gidmap: Option<String>,
        /// End the holder after this many seconds (the startup probe's, so it cannot outlive a
        /// berthd killed mid-probe)
        #[arg(long)]
        exit_after: Option<u32>,
        /// The pod's state directory (for `ps` to show; the holder does not use it)
        #[arg(long)]
        pod: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration
    Default,
    /// Load FILE as berthd would and report the first bad value, naming its key
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => {
            print!("{}", Config::default().to_toml());
            return ExitCode::SUCCESS;
        }
        Some(Command::Config {
            what: ConfigCommand::Check { file },
        }) => {
            return match Config::load(file) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berthd: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::CriHolder {
            ipc,
            uts,
            pid,
            net,
            hostname,
            uidmap,
            gidmap,
            exit_after,
            pod,
        }) => {
            let opts = berth_cri::holder::HolderOptions {
                ipc: *ipc,
                uts: *uts,
                pid: *pid,
                net: *net,
                hostname: hostname.clone(),
                userns: uidmap.clone().zip(gidmap.clone()),
                exit_after: *exit_after,
                pod_dir: pod.clone(),
            };
            return ExitCode::from(berth_cri::holder::run(&opts) as u8);
        }
        None => {}
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exporter = match init_logging(&config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(berthd::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "berthd failed");
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    };
    // After the server stopped: the spans of its last calls are batched, not yet sent.
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    code
}

fn load_config(cli: &Cli) -> berth_errdefs::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG_PATH))?
        }
        None => Config::default(),
    };
    if let Some(root) = &cli.root {
        config.root = root.clone();
    }
    if let Some(state) = &cli.state {
        config.state = state.clone();
    }
    if let Some(address) = &cli.address {
        config.grpc.address = address.clone();
    }
    if let Some(level) = &cli.log_level {
        config.debug.level = level.clone();
    }
    // Flags are config values too: checked by the same rules.
    config.validate()?;
    Ok(config)
}

/// The log on stderr, and the OTLP exporter when `[tracing]` names an endpoint (its own filter:
/// `--log-level` and RUST_LOG are about the log, not about which RPCs are traced).
fn init_logging(config: &Config) -> berth_errdefs::Result<Option<berthd::telemetry::Exporter>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    // The transport crates are chatty at debug level; --log-level is about berthd itself.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},h2=warn,hyper=warn,tower=warn,sled=warn",
            config.debug.level
        ))
    });
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (otel, exporter) = match berthd::telemetry::layer(&config.tracing)? {
        Some((layer, exporter)) => (Some(layer), Some(exporter)),
        None => (None, None),
    };
    tracing_subscriber::registry().with(log).with(otel).init();
    Ok(exporter)
}
