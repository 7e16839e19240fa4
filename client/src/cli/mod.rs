//! The `berth` command line: docker's commands and conventions over the library. Commands
//! parse their flags and call the library; nothing here speaks gRPC.
//!
//! Exit codes follow docker: 125 when berth or the daemon failed, 126 when the container's
//! command cannot be invoked, 127 when it is not found, else the container's own code.

mod build;
mod container;
pub mod format;
mod fs;
mod image;
mod logs;
mod network;
mod prune;
mod search;
mod system;
mod volume;

use crate::{Client, Error, ExecFailure, Host};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// berth or the daemon failed.
pub const EXIT_FAILED: i32 = 125;
/// The command was found but cannot be invoked.
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

const EXAMPLES: &str = "\
Examples:
  berth run --rm docker.io/library/busybox:latest echo hello
  berth run -d --name web -e MODE=prod busybox sleep 3600
  berth ps -a --format '{{.Names}}\\t{{.Status}}'
  berth exec -it web sh
  berth stop -t 5 web && berth rm web
  berth -H unix:///run/berth/berthd.sock -n k8s.io images
  berth completion bash > /etc/bash_completion.d/berth";

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "Run and manage containers on berthd, the way docker does",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The daemon's socket: unix:///path/to/berthd.sock or a path.
    #[arg(
        short = 'H',
        long,
        global = true,
        env = "BERTH_HOST",
        value_name = "HOST"
    )]
    host: Option<String>,
    /// The namespace to work in.
    #[arg(
        short = 'n',
        long,
        env = "BERTH_NAMESPACE",
        default_value = "default",
        value_name = "NAMESPACE"
    )]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create and start a container from an image, and wait for it.
    #[command(
        after_help = "Examples:\n  berth run --rm busybox echo hi\n  berth run -it --rm busybox sh\n  berth run -d --name app -u nobody --memory 64m --cpus 0.5 busybox sleep 600"
    )]
    Run(container::RunArgs),
    /// Create a container without starting it.
    #[command(
        after_help = "Example:\n  berth create --name app busybox sleep 600 && berth start app"
    )]
    Create(container::CreateArgs),
    /// Start stopped or created containers.
    #[command(after_help = "Example:\n  berth start -a app")]
    Start(container::StartArgs),
    /// Stop running containers: the stop signal, then SIGKILL after the timeout.
    #[command(after_help = "Example:\n  berth stop -t 2 app")]
    Stop(container::StopArgs),
    /// Restart containers.
    Restart(container::StopArgs),
    /// Send a signal to running containers (default SIGKILL).
    #[command(after_help = "Example:\n  berth kill -s HUP app")]
    Kill(container::KillArgs),
    /// Freeze every process of running containers.
    Pause(container::Names),
    /// Thaw paused containers.
    Unpause(container::Names),
    /// Remove containers.
    #[command(visible_alias = "remove", after_help = "Example:\n  berth rm -f app")]
    Rm(container::RmArgs),
    /// List containers.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  berth ps -a\n  berth ps -q --filter status=exited\n  berth ps --format json"
    )]
    Ps(container::PsArgs),
    /// Rename a container.
    #[command(after_help = "Example:\n  berth rename app app-old")]
    Rename(container::RenameArgs),
    /// Wait for containers to stop and print their exit codes.
    Wait(container::Names),
    /// Run a command in a running container.
    #[command(
        after_help = "Examples:\n  berth exec app ls /\n  berth exec -it -u nobody -w /tmp app sh"
    )]
    Exec(container::ExecArgs),
    /// Show the processes of a running container.
    Top(container::TopArgs),
    /// Show containers' resource usage: CPU %, memory, network and block I/O, pids.
    #[command(
        after_help = "Examples:\n  berth stats\n  berth stats --no-stream app\n  berth stats --no-stream --format '{{.Name}} {{.CPUPerc}} {{.MemUsage}}'"
    )]
    Stats(container::StatsArgs),
    /// Attach to a running container's output (and stdin, for one created with -i).
    #[command(
        after_help = "Examples:\n  berth attach app\n  berth attach --detach-keys ctrl-x,x app\n  berth attach --no-stdin --sig-proxy=false app"
    )]
    Attach(container::AttachArgs),
    /// Change containers' limits and restart policy (running ones at once).
    #[command(
        after_help = "Examples:\n  berth update --memory 256m --cpus 1.5 app\n  berth update --restart on-failure:3 app"
    )]
    Update(container::UpdateArgs),
    /// Make an image of one layer from a filesystem tarball.
    #[command(
        after_help = "Examples:\n  berth import rootfs.tar app:v1\n  tar -C rootfs -c . | berth import -c 'CMD [\"/bin/sh\"]' - app:v1"
    )]
    Import(image::ImportArgs),
    /// Show a container's output (from its log files; berthd is not in the data path).
    #[command(
        after_help = "Examples:\n  berth logs app\n  berth logs -f --tail 10 -t app\n  berth logs --since 5m app"
    )]
    Logs(logs::LogsArgs),
    /// Show containers or images in detail (JSON).
    #[command(after_help = "Example:\n  berth inspect --format '{{.State.Status}}' app")]
    Inspect(InspectArgs),
    /// List images.
    Images(image::ImagesArgs),
    /// Remove images.
    Rmi(image::RmiArgs),
    /// Give an image another name.
    #[command(after_help = "Example:\n  berth tag busybox:latest registry.local/busybox:v1")]
    Tag(image::TagArgs),
    /// Pull an image from a registry (unpacked for this host).
    #[command(
        after_help = "Examples:\n  berth pull busybox\n  berth pull --plain-http registry.local:5000/app:v1"
    )]
    Pull(image::PullArgs),
    /// Push an image to its registry.
    #[command(after_help = "Example:\n  berth push localhost:5000/busybox:latest")]
    Push(image::PullArgs),
    /// Write images to an archive (OCI, with docker's manifest.json).
    #[command(
        after_help = "Examples:\n  berth save -o busybox.tar busybox\n  berth save busybox | gzip > busybox.tar.gz"
    )]
    Save(image::SaveArgs),
    /// Load images from an OCI or docker archive.
    #[command(after_help = "Examples:\n  berth load -i busybox.tar\n  berth load < busybox.tar")]
    Load(image::LoadArgs),
    /// Store a registry's credentials for pulls and pushes (0600, where berthd reads them).
    #[command(
        after_help = "Example:\n  echo \"$TOKEN\" | berth login -u me --password-stdin registry.local:5000"
    )]
    Login(image::LoginArgs),
    /// Forget a registry's credentials.
    Logout(image::LogoutArgs),
    /// List a registry's repositories matching a term, from its catalog (/v2/_catalog).
    #[command(
        after_help = "Examples:\n  berth search 127.0.0.1:5000/busy\n  berth search --limit 100 registry.local:5000/team/"
    )]
    Search(search::SearchArgs),
    /// Build an image from a Dockerfile with berthd's snapshots, tasks and Diff.
    #[command(
        after_help = "Examples:\n  berth build -t app:v1 .\n  berth build --target build --build-arg VERSION=2 -f ci/Dockerfile .\n  tar -c . | berth build -t app:v1 -"
    )]
    Build(build::BuildArgs),
    /// Builder commands (prune).
    #[command(subcommand)]
    Builder(build::BuilderCommand),
    /// Show an image's history: one line per Dockerfile instruction.
    History(build::HistoryArgs),
    /// Network commands (create, ls, inspect, rm, prune).
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Volume commands (create, ls, inspect, rm, prune).
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// List the files a container added (A), changed (C) or deleted (D) against its image.
    #[command(after_help = "Example:\n  berth diff app")]
    Diff(fs::DiffArgs),
    /// Write a container's filesystem as a tar archive.
    #[command(
        after_help = "Examples:\n  berth export -o app.tar app\n  berth export app | tar -t"
    )]
    Export(fs::ExportArgs),
    /// Copy files between a container and the host.
    #[command(
        after_help = "Examples:\n  berth cp app:/etc/hostname .\n  berth cp ./conf/. app:/etc/app/\n  berth cp -a app:/var/lib/data /backup/data"
    )]
    Cp(fs::CpArgs),
    /// Make an image from a container's changes.
    #[command(
        after_help = "Examples:\n  berth commit app app:v2\n  berth commit -m 'add config' -c 'CMD [\"/app\"]' app app:v2"
    )]
    Commit(fs::CommitArgs),
    /// List a container's published ports.
    #[command(after_help = "Example:\n  berth port web 80/tcp")]
    Port(container::PortArgs),
    /// Image commands (ls, rm, tag, inspect, prune, import).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Container commands (ls, rm, inspect, prune, stats, attach, update, ...).
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Stream the daemon's events.
    #[command(
        after_help = "Examples:\n  berth events --filter container=app --filter event=exit\n  berth events --format json"
    )]
    Events(system::EventsArgs),
    /// Show what the daemon runs.
    Info(system::InfoArgs),
    /// Show the client's and the daemon's versions.
    Version(system::VersionArgs),
    /// System commands (df, info, events, prune).
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Namespace commands.
    #[command(subcommand)]
    Namespace(system::NamespaceCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  berth completion bash > /etc/bash_completion.d/berth")]
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum ContainerCommand {
    #[command(visible_alias = "list")]
    Ls(container::PsArgs),
    Rm(container::RmArgs),
    Inspect(InspectArgs),
    Stop(container::StopArgs),
    Start(container::StartArgs),
    Kill(container::KillArgs),
    Pause(container::Names),
    Unpause(container::Names),
    Rename(container::RenameArgs),
    /// Remove every stopped container.
    #[command(after_help = "Example:\n  berth container prune -f")]
    Prune(prune::PruneArgs),
    Stats(container::StatsArgs),
    Attach(container::AttachArgs),
    Update(container::UpdateArgs),
    Top(container::TopArgs),
    Wait(container::Names),
    Restart(container::StopArgs),
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// A Go-template-like format, e.g. '{{.State.Status}}'.
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Only this kind of object: container or image.
    #[arg(long = "type")]
    kind: Option<String>,
    #[arg(required = true, value_name = "NAME|ID")]
    names: Vec<String>,
}

/// A failure to report: the message and the exit code.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Exec {
                kind: ExecFailure::NotFound,
                ..
            } => EXIT_NOT_FOUND,
            Error::Exec {
                kind: ExecFailure::CannotInvoke,
                ..
            } => EXIT_CANNOT_INVOKE,
            _ => EXIT_FAILED,
        };
        let message = match &e {
            Error::Connect { .. } => format!(
                "{e}\nIs berthd running? Point berth at its socket with -H unix:///path/to/berthd.sock or {}.",
                crate::HOST_ENV
            ),
            _ => e.to_string(),
        };
        Failure { code, message }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            code: EXIT_FAILED,
            message,
        }
    }
}

pub type CliResult<T = i32> = Result<T, Failure>;

/// Parse the arguments and run; returns the process's exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_FAILED,
            };
            let _ = e.print();
            return code;
        }
    };
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
        return 0;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let result = runtime.block_on(run(cli));
    // Copy threads blocked on a terminal's stdin must not hold the exit up.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("berth: {}", f.message);
            f.code
        }
    }
}

async fn connect(host: Option<&str>, namespace: &str) -> CliResult<Client> {
    let host = match host {
        Some(h) if !h.is_empty() => Host::parse(h)?,
        _ => Host::default_host()?,
    };
    Ok(Client::connect(&host, namespace).await?)
}

async fn run(cli: Cli) -> CliResult {
    // Credentials are a local file: no daemon needed.
    if let Command::Login(_) | Command::Logout(_) | Command::Search(_) = &cli.command {
        return match cli.command {
            Command::Login(a) => image::login(a),
            Command::Logout(a) => image::logout(a),
            // A registry's catalog is read from here, without the daemon.
            Command::Search(a) => search::search(a).await,
            _ => Ok(0),
        };
    }
    let client = connect(cli.host.as_deref(), &cli.namespace).await?;
    let host = cli.host.clone().unwrap_or_default();
    match cli.command {
        Command::Run(a) => container::run(&client, a).await,
        Command::Create(a) => container::create(&client, a).await,
        Command::Start(a) | Command::Container(ContainerCommand::Start(a)) => {
            container::start(&client, a).await
        }
        Command::Stop(a) | Command::Container(ContainerCommand::Stop(a)) => {
            container::stop(&client, a, false).await
        }
        Command::Kill(a) | Command::Container(ContainerCommand::Kill(a)) => {
            container::kill(&client, a).await
        }
        Command::Pause(a) | Command::Container(ContainerCommand::Pause(a)) => {
            container::pause(&client, a, true).await
        }
        Command::Unpause(a) | Command::Container(ContainerCommand::Unpause(a)) => {
            container::pause(&client, a, false).await
        }
        Command::Rm(a) | Command::Container(ContainerCommand::Rm(a)) => {
            container::rm(&client, a).await
        }
        Command::Ps(a) | Command::Container(ContainerCommand::Ls(a)) => {
            container::ps(&client, a).await
        }
        Command::Wait(a) | Command::Container(ContainerCommand::Wait(a)) => {
            container::wait(&client, a).await
        }
        Command::Restart(a) | Command::Container(ContainerCommand::Restart(a)) => {
            container::stop(&client, a, true).await
        }
        Command::Stats(a) | Command::Container(ContainerCommand::Stats(a)) => {
            container::stats(&client, a).await
        }
        Command::Attach(a) | Command::Container(ContainerCommand::Attach(a)) => {
            container::attach(&client, a).await
        }
        Command::Update(a) | Command::Container(ContainerCommand::Update(a)) => {
            container::update(&client, a).await
        }
        Command::Container(ContainerCommand::Prune(a)) => prune::container_prune(&client, a).await,
        Command::Import(a) => image::import(&client, a).await,
        Command::Rename(a) | Command::Container(ContainerCommand::Rename(a)) => {
            container::rename(&client, a).await
        }
        Command::Exec(a) => container::exec(&client, a).await,
        Command::Top(a) | Command::Container(ContainerCommand::Top(a)) => {
            container::top(&client, a).await
        }
        Command::Logs(a) => logs::logs(&client, a).await,
        Command::Inspect(a) | Command::Container(ContainerCommand::Inspect(a)) => {
            inspect(&client, a).await
        }
        Command::Images(a) => image::images(&client, a).await,
        Command::Rmi(a) => image::rmi(&client, a).await,
        Command::Tag(a) => image::tag(&client, a).await,
        Command::Network(c) => network::network_command(&client, c).await,
        Command::Volume(c) => volume::volume_command(&client, c).await,
        Command::Build(a) => build::build(&client, a).await,
        Command::History(a) => build::history(&client, a).await,
        Command::Builder(c) => build::builder(&client, c).await,
        Command::Port(a) => container::port(&client, a).await,
        Command::Diff(a) => fs::diff(&client, a).await,
        Command::Export(a) => fs::export(&client, a).await,
        Command::Cp(a) => fs::cp(&client, a).await,
        Command::Commit(a) => fs::commit(&client, a).await,
        Command::Pull(a) => image::pull(&client, a).await,
        Command::Push(a) => image::push(&client, a).await,
        Command::Save(a) => image::save(&client, a).await,
        Command::Load(a) => image::load(&client, a).await,
        Command::Image(c) => image::image_command(&client, c).await,
        Command::Events(a) => system::events(&client, a).await,
        Command::Info(a) => system::info(&client, a, &host).await,
        Command::Version(a) => system::version(&client, a).await,
        Command::Namespace(c) => system::namespace(&client, c).await,
        Command::System(system::SystemCommand::Df { format }) => system::df(&client, format).await,
        Command::System(system::SystemCommand::Info(a)) => system::info(&client, a, &host).await,
        Command::System(system::SystemCommand::Events(a)) => system::events(&client, a).await,
        Command::System(system::SystemCommand::Prune(a)) => prune::system_prune(&client, a).await,
        Command::Completion { .. } => Ok(0),
        Command::Login(a) => image::login(a),
        Command::Logout(a) => image::logout(a),
        Command::Search(a) => search::search(a).await,
    }
}

/// `inspect`: containers first, then images, as docker looks them up.
async fn inspect(client: &Client, a: InspectArgs) -> CliResult {
    let mut out = Vec::new();
    let mut failed = None;
    for name in &a.names {
        let want_container = a.kind.as_deref() != Some("image");
        let want_image = a.kind.as_deref() != Some("container");
        let mut found = None;
        if want_container {
            match client.containers().find(name).await {
                Ok(c) => found = Some(container::inspect_value(client, &c).await?),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if found.is_none() && want_image {
            match client.images().inspect(name).await {
                Ok(d) => found = Some(image::inspect_value(&d)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        match found {
            Some(v) => out.push(v),
            None => {
                eprintln!("berth: no such object: {name}");
                failed = Some(1);
            }
        }
    }
    match &a.format {
        Some(f) => {
            for v in &out {
                println!("{}", format::render(f, v)?);
            }
        }
        None => println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        ),
    }
    Ok(failed.unwrap_or(0))
}
