//! Container commands: run, create, start, stop/restart, kill, pause/unpause, rm, ps, wait,
//! exec, top, and the container half of inspect.

use super::format::{self, Format};
use super::CliResult;
use crate::containers::ContainerInfo;
use crate::lifecycle::ContainerStatus;
use crate::mounts::MountRequest;
use crate::spec::{ContainerConfig, Network};
use crate::stdio::{RawTerminal, StdioConfig};
use crate::{Client, Error};
use clap::Args;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub options: ContainerOptions,
    /// The image: a name (busybox, docker.io/library/busybox:latest) or an id prefix.
    pub image: String,
    /// The command and its arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[command(flatten)]
    create: CreateArgs,
}

#[derive(Args, Debug)]
pub struct ContainerOptions {
    /// Assign a name (default: a generated adjective_surname).
    #[arg(long)]
    name: Option<String>,
    /// Keep stdin open and attached.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from here).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<std::path::PathBuf>,
    /// The working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// The user: name|uid[:group|gid], names from the image's /etc/passwd and /etc/group.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Replace the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// The container's host name (default: the short id).
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPUs the container may use (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes the container may have.
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    /// Set a label (KEY=VALUE).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped (berthd's restart monitor).
    #[arg(long = "restart", value_name = "POLICY")]
    restart: Option<String>,
    /// Log bounds, docker's names: max-size=10m, max-file=3.
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    log_opts: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Add a capability (or ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability (or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Every capability, every device, no masked paths.
    #[arg(long)]
    privileged: bool,
    /// `host`: no user namespace although berthd remaps users (`[userns] remap`).
    #[arg(long, value_name = "MODE", value_parser = ["host", ""])]
    userns: Option<String>,
    /// The signal `stop` sends first (default SIGTERM).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL (default 10).
    #[arg(long = "stop-timeout", value_name = "SECONDS")]
    stop_timeout: Option<u32>,
    /// The network: a network's name, none (loopback only) or host; without it, berthd's
    /// default network (bridge, made on first use), as docker does.
    #[arg(long, value_name = "NETWORK")]
    network: Option<String>,
    /// Publish a container port on the host: [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]
    /// (on the default network or the one --network names).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    publish: Vec<String>,
    /// A volume or bind mount: NAME:/path[:ro] (a named volume, made when absent), /path (an
    /// anonymous volume) or /host/path:/container/path[:ro] (the host path must exist).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:OPTS]")]
    volume: Vec<String>,
    /// Attach a mount: type=bind|volume|tmpfs,source=SRC,target=DST[,readonly][,tmpfs-size=64m].
    #[arg(long = "mount", value_name = "FIELDS")]
    mount: Vec<String>,
    /// Mount a fresh tmpfs: /path[:size=64m,mode=1777,exec] (noexec,nosuid,nodev by default).
    #[arg(long = "tmpfs", value_name = "PATH[:OPTS]")]
    tmpfs: Vec<String>,
    /// Pull the image first: missing (when not here), always, or never.
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pull: String,
}

impl ContainerOptions {
    fn config(&self, command: &[String]) -> CliResult<ContainerConfig> {
        let mut env = Vec::new();
        for file in &self.env_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("read env file {}: {e}", file.display()))?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                env.extend(env_entry(line));
            }
        }
        for e in &self.env {
            env.extend(env_entry(e));
        }
        let mut labels = HashMap::new();
        for l in &self.labels {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                return Err(format!("invalid label {l:?}: want KEY=VALUE").into());
            }
            labels.insert(k.to_string(), v.to_string());
        }
        if let Some(p) = &self.restart {
            labels.extend(crate::logs::restart_labels(p)?);
        }
        if self.interactive {
            labels.insert(crate::attach::STDIN_LABEL.to_string(), "true".to_string());
        }
        for o in &self.log_opts {
            let (k, v) = crate::logs::log_opt_label(o)?;
            labels.insert(k, v);
        }
        if let Some(sig) = &self.stop_signal {
            crate::tasks::parse_signal(sig)?;
        }
        let entrypoint = self.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            }
        });
        let network = match &self.network {
            Some(n) => Network::parse(n)?,
            None => Network::Default,
        };
        Ok(ContainerConfig {
            command: command.to_vec(),
            entrypoint,
            env,
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            memory: self
                .memory
                .as_deref()
                .map(format::parse_bytes)
                .transpose()?,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            privileged: self.privileged,
            labels,
            stop_signal: self.stop_signal.clone(),
            stop_timeout: self.stop_timeout,
            tty: self.tty,
            network,
            networks: match network {
                Network::Named => self.network.iter().cloned().collect(),
                _ => Vec::new(),
            },
            ports: self
                .publish
                .iter()
                .map(|p| crate::spec::PublishedPort::parse(p))
                .collect::<crate::Result<_>>()?,
            mounts: self.mounts()?,
            userns_host: self.userns.as_deref() == Some("host"),
            remap: None,
        })
    }
}

impl ContainerOptions {
    /// `-v`, `--mount` and `--tmpfs` in that order; two on one destination are refused, as
    /// docker does.
    fn mounts(&self) -> CliResult<Vec<MountRequest>> {
        let mut out: Vec<MountRequest> = Vec::new();
        let parsed = self
            .volume
            .iter()
            .map(|v| MountRequest::parse_volume_flag(v))
            .chain(self.mount.iter().map(|m| MountRequest::parse_mount_flag(m)))
            .chain(self.tmpfs.iter().map(|t| MountRequest::parse_tmpfs_flag(t)));
        for m in parsed {
            let m = m?;
            if out.iter().any(|o| o.destination() == m.destination()) {
                return Err(format!("duplicate mount point: {}", m.destination()).into());
            }
            out.push(m);
        }
        Ok(out)
    }
}

/// `KEY=VALUE` as given; a bare `KEY` takes this process's value, or nothing if unset.
fn env_entry(e: &str) -> Option<String> {
    if e.contains('=') {
        Some(e.to_string())
    } else {
        std::env::var(e).ok().map(|v| format!("{e}={v}"))
    }
}

/// docker's `--pull`: fetch the image before creating, as `berth pull` would (progress on
/// stderr). With `never`, an image that is not here fails the create with its pull hint.
async fn pull_as_asked(client: &Client, image: &str, policy: &str) -> CliResult<()> {
    let wanted = match policy {
        "always" => true,
        "missing" => match client.images().get(image).await {
            Ok(_) => false,
            Err(e) if e.is_not_found() => {
                eprintln!("Unable to find image '{image}' locally");
                true
            }
            Err(e) => return Err(e.into()),
        },
        _ => false,
    };
    if wanted {
        super::image::pull_quietly(client, image)
            .await
            .map_err(|e| format!("pull {image}: {e}"))?;
    }
    Ok(())
}

pub async fn create(client: &Client, a: CreateArgs) -> CliResult {
    let config = a.options.config(&a.command)?;
    pull_as_asked(client, &a.image, &a.options.pull).await?;
    let c = client
        .containers()
        .create(&a.image, a.options.name.as_deref(), &config)
        .await?;
    println!("{}", c.id);
    Ok(0)
}

pub async fn run(client: &Client, a: RunArgs) -> CliResult {
    if a.detach && a.rm {
        return Err(
            "--rm with -d is not supported yet: the daemon has no auto-remove; run without --rm and remove it with berth rm"
                .to_string()
                .into(),
        );
    }
    let opts = &a.create.options;
    let config = opts.config(&a.create.command)?;
    pull_as_asked(client, &a.create.image, &opts.pull).await?;
    let c = client
        .containers()
        .create(&a.create.image, opts.name.as_deref(), &config)
        .await?;
    if a.detach {
        match client.start_new_container(&c, None).await {
            Ok(_) => {
                println!("{}", c.id);
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    } else {
        let stdio = StdioConfig {
            stdin: opts.interactive,
            stdout: true,
            stderr: true,
            terminal: opts.tty,
        };
        let result = attached(client, &c, stdio, true).await;
        if a.rm {
            // docker's --rm takes the container's anonymous volumes with it.
            let anonymous = client.anonymous_volumes_of(&c).await.unwrap_or_default();
            let removed = match &result {
                Ok(_) => client.remove_exited_container(&c).await,
                Err(_) => client.remove_container(&c, true).await,
            };
            match removed {
                Err(e) => eprintln!("berth: remove container {}: {e}", c.name),
                Ok(()) => {
                    for v in anonymous {
                        if let Err(e) = client.volumes().remove(&v).await {
                            eprintln!("berth: remove volume {v}: {e}");
                        }
                    }
                }
            }
        }
        result
    }
}

/// Start with stdio attached, forward signals (without a tty) and the terminal size (with
/// one), wait; the container's exit code.
async fn attached(client: &Client, c: &ContainerInfo, stdio: StdioConfig, new: bool) -> CliResult {
    let _raw =
        (stdio.terminal && stdio.stdin && std::io::stdin().is_terminal()).then(RawTerminal::enter);
    let process = if new {
        client.start_new_container(c, Some(stdio)).await?
    } else {
        client.start_container(c, Some(stdio)).await?
    };
    let resize = stdio.terminal.then(|| process.follow_terminal_size());
    let forward = (!stdio.terminal).then(|| forward_signals(client.clone(), c.id.clone()));
    let status = process.wait().await;
    if let Some(r) = resize {
        r.abort();
    }
    if let Some(f) = forward {
        f.abort();
    }
    Ok(status?.code as i32)
}

/// docker's sig-proxy: SIGINT, SIGTERM and SIGHUP sent to berth go to the container.
fn forward_signals(client: Client, id: String) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            let num = tokio::select! {
                _ = int.recv() => 2,
                _ = term.recv() => 15,
                _ = hup.recv() => 1,
            };
            let _ = client.tasks().kill(&id, "", num, false).await;
        }
    })
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach stdout and stderr and wait for the container; exit with its code.
    #[arg(short = 'a', long)]
    attach: bool,
    /// Attach stdin too.
    #[arg(short = 'i', long)]
    interactive: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

pub async fn start(client: &Client, a: StartArgs) -> CliResult {
    if a.attach || a.interactive {
        if a.containers.len() != 1 {
            return Err("start -a attaches to one container at a time"
                .to_string()
                .into());
        }
        let c = client.containers().find(&a.containers[0]).await?;
        let terminal = c.terminal();
        let stdio = StdioConfig {
            stdin: a.interactive,
            stdout: true,
            stderr: true,
            terminal,
        };
        return attached(client, &c, stdio, false).await;
    }
    each(&a.containers, |name| async move {
        let c = client.containers().find(&name).await?;
        if client.status(&c).await?.is_running() {
            return Ok(());
        }
        client.start_container(&c, None).await.map(|_| ())
    })
    .await
}

/// Run `f` for every name, print the name when it worked and the error when not (docker's
/// behaviour for multi-container commands); 1 if any failed.
async fn each<F, Fut>(names: &[String], f: F) -> CliResult
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut code = 0;
    for name in names {
        match f(name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("berth: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before SIGKILL (default: the container's --stop-timeout, else 10).
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        value_name = "SECONDS"
    )]
    time: Option<u64>,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

pub async fn stop(client: &Client, a: StopArgs, restart: bool) -> CliResult {
    let timeout = a.time.map(Duration::from_secs);
    each(&a.containers, |name| async move {
        let c = client.containers().find(&name).await?;
        client.stop_container(&c, timeout).await?;
        if restart {
            client.start_container(&c, None).await?;
        }
        Ok(())
    })
    .await
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// The signal to send.
    #[arg(short = 's', long, default_value = "KILL")]
    signal: String,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

pub async fn kill(client: &Client, a: KillArgs) -> CliResult {
    let signal = crate::tasks::parse_signal(&a.signal)?;
    each(&a.containers, |name| async move {
        let c = client.containers().find(&name).await?;
        if !client.status(&c).await?.is_running() {
            return Err(Error::Local {
                code: tonic::Code::FailedPrecondition,
                message: format!("container {name} is not running"),
            });
        }
        client.tasks().kill(&c.id, "", signal, false).await
    })
    .await
}

#[derive(Args, Debug)]
pub struct Names {
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

pub async fn pause(client: &Client, a: Names, pause: bool) -> CliResult {
    each(&a.containers, |name| async move {
        let c = client.containers().find(&name).await?;
        let status = client.status(&c).await?;
        match (pause, &status) {
            (true, ContainerStatus::Running { .. }) => client.tasks().pause(&c.id).await,
            (false, ContainerStatus::Paused { .. }) => client.tasks().resume(&c.id).await,
            (true, _) => Err(Error::Local {
                code: tonic::Code::FailedPrecondition,
                message: format!("container {name} is {}, not running", status.state()),
            }),
            (false, _) => Err(Error::Local {
                code: tonic::Code::FailedPrecondition,
                message: format!("container {name} is not paused"),
            }),
        }
    })
    .await
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Remove the container's anonymous volumes too.
    #[arg(short = 'v', long = "volumes")]
    volumes: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

pub async fn rm(client: &Client, a: RmArgs) -> CliResult {
    let (force, volumes) = (a.force, a.volumes);
    each(&a.containers, |name| async move {
        let c = client.containers().find(&name).await?;
        let anonymous = if volumes {
            client.anonymous_volumes_of(&c).await?
        } else {
            Vec::new()
        };
        client.remove_container(&c, force).await?;
        for v in anonymous {
            client.volumes().remove(&v).await?;
        }
        Ok(())
    })
    .await
}

pub async fn wait(client: &Client, a: Names) -> CliResult {
    let mut code = 0;
    for name in &a.containers {
        let result = async {
            let c = client.containers().find(name).await?;
            if matches!(client.status(&c).await?, ContainerStatus::Created) {
                // docker waits for a created container to run and stop; berth has no task to
                // wait on yet.
                return Err(Error::Local {
                    code: tonic::Code::FailedPrecondition,
                    message: format!("container {name} has not been started"),
                });
            }
            client.tasks().wait(&c.id, "").await
        }
        .await;
        match result {
            Ok(s) => println!("{}", s.code),
            Err(e) => {
                eprintln!("berth: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show every container (default: running ones).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only ids.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The last N created containers (any state).
    #[arg(short = 'n', long = "last", value_name = "N")]
    last: Option<usize>,
    /// The latest created container (any state).
    #[arg(short = 'l', long)]
    latest: bool,
    /// Filter: status=, name=, id=, label=KEY[=VALUE], ancestor=IMAGE.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// table, json, or a template such as '{{.ID}}\t{{.Names}}'.
    #[arg(long)]
    format: Option<String>,
    /// Do not truncate ids and commands.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
}

/// A container as `ps --format` sees it (docker's field names).
fn ps_value(c: &ContainerInfo, status: &ContainerStatus, now: SystemTime, no_trunc: bool) -> Value {
    let command = c
        .process_spec()
        .and_then(|p| p["args"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let command = if no_trunc {
        format!("\"{command}\"")
    } else {
        format!("\"{}\"", format::ellipsis(&command, 20))
    };
    let created = c.created_at.unwrap_or(now);
    let labels: Vec<String> = {
        let mut l: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        l
    };
    json!({
        "ID": if no_trunc { c.id.clone() } else { crate::names::short_id(&c.id).to_string() },
        "Image": c.image,
        "Command": command,
        "CreatedAt": crate::events::rfc3339(created),
        "RunningFor": format!("{} ago", crate::lifecycle::human_duration(now.duration_since(created).unwrap_or_default())),
        "Status": status.describe(now),
        "State": status.state(),
        "Names": c.name,
        "Labels": labels.join(","),
        "Ports": "",
        "Networks": c.labels.get(crate::spec::NETWORK_LABEL).cloned().unwrap_or_default(),
    })
}

fn matches_filter(c: &ContainerInfo, status: &ContainerStatus, filter: &str) -> CliResult<bool> {
    let (key, value) = filter
        .split_once('=')
        .ok_or_else(|| format!("invalid filter {filter:?}: want KEY=VALUE"))?;
    Ok(match key {
        "status" => status.state() == value,
        "name" => c.name.contains(value),
        "id" => c.id.starts_with(value),
        "label" => match value.split_once('=') {
            Some((k, v)) => c.labels.get(k).is_some_and(|l| l == v),
            None => c.labels.contains_key(value),
        },
        "ancestor" => c.image == value || c.image == crate::images::normalize(value),
        other => {
            return Err(format!(
                "invalid filter {other:?}: use status, name, id, label or ancestor"
            )
            .into())
        }
    })
}

pub async fn ps(client: &Client, a: PsArgs) -> CliResult {
    let now = SystemTime::now();
    let (containers_api, tasks_api) = (client.containers(), client.tasks());
    let (containers, tasks) = tokio::try_join!(containers_api.list_brief(&[]), tasks_api.list())?;
    let mut rows: Vec<(ContainerInfo, ContainerStatus)> = containers
        .into_iter()
        .map(|c| {
            let status = crate::lifecycle::status_of_container(&c, tasks.get(&c.id));
            (c, status)
        })
        .collect();
    rows.sort_by(|x, y| {
        y.0.created_at
            .cmp(&x.0.created_at)
            .then(x.0.id.cmp(&y.0.id))
    });
    let all =
        a.all || a.last.is_some() || a.latest || a.filters.iter().any(|f| f.starts_with("status="));
    let mut kept = Vec::new();
    for (c, s) in rows {
        // docker lists a restarting container among the running ones.
        if !all && !s.is_running() && !matches!(s, ContainerStatus::Restarting { .. }) {
            continue;
        }
        let mut ok = true;
        for f in &a.filters {
            ok &= matches_filter(&c, &s, f)?;
        }
        if ok {
            kept.push((c, s));
        }
    }
    if let Some(n) = a.last.or(a.latest.then_some(1)) {
        kept.truncate(n);
    }
    if a.quiet {
        for (c, _) in &kept {
            println!(
                "{}",
                if a.no_trunc {
                    &c.id
                } else {
                    crate::names::short_id(&c.id)
                }
            );
        }
        return Ok(0);
    }
    let values: Vec<Value> = kept
        .iter()
        .map(|(c, s)| ps_value(c, s, now, a.no_trunc))
        .collect();
    format::print_list(&Format::parse(a.format.as_deref()), &values, |vs| {
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| {
                format::cells(
                    v,
                    &[
                        "ID",
                        "Image",
                        "Command",
                        "RunningFor",
                        "Status",
                        "Ports",
                        "Names",
                    ],
                )
            })
            .collect();
        format::print_table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
            ],
            &rows,
        );
    })?;
    Ok(0)
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run in the background.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep stdin open and attached.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The working directory.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// The user: name|uid[:group|gid].
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(value_name = "CONTAINER")]
    container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn exec(client: &Client, a: ExecArgs) -> CliResult {
    let c = client.containers().find(&a.container).await?;
    let mut process = c
        .process_spec()
        .cloned()
        .ok_or_else(|| format!("container {} has no process spec to exec from", c.name))?;
    process["args"] = json!(a.command);
    process["terminal"] = json!(a.tty);
    if let Some(w) = &a.workdir {
        process["cwd"] = json!(w);
    }
    if !a.env.is_empty() {
        let mut env: Vec<String> = process["env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for kv in a.env.iter().filter_map(|e| env_entry(e)) {
            let key = kv.split('=').next().unwrap_or("").to_string();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(kv);
        }
        process["env"] = json!(env);
    }
    if let Some(u) = &a.user {
        let user = client.resolve_user(&c, u).await?;
        process["user"] = json!({
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        });
    }
    if a.detach {
        client.exec(&c, &process, None).await?;
        return Ok(0);
    }
    let stdio = StdioConfig {
        stdin: a.interactive,
        stdout: true,
        stderr: true,
        terminal: a.tty,
    };
    let _raw = (a.tty && a.interactive && std::io::stdin().is_terminal()).then(RawTerminal::enter);
    let p = client.exec(&c, &process, Some(stdio)).await?;
    let resize = a.tty.then(|| p.follow_terminal_size());
    let exec_id = p.exec_id.clone();
    let status = p.wait().await;
    if let Some(r) = resize {
        r.abort();
    }
    let _ = client.tasks().delete_process(&c.id, &exec_id).await;
    Ok(status?.code as i32)
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[arg(value_name = "CONTAINER")]
    container: String,
}

pub async fn top(client: &Client, a: TopArgs) -> CliResult {
    let c = client.containers().find(&a.container).await?;
    if !client.status(&c).await?.is_running() {
        return Err(format!("container {} is not running", a.container).into());
    }
    let pids = client.tasks().pids(&c.id).await?;
    let rows: Vec<Vec<String>> = pids
        .iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                    .unwrap_or_default()
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = cmdline
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            vec![field("Uid:"), pid.to_string(), field("PPid:"), cmd]
        })
        .collect();
    format::print_table(&["UID", "PID", "PPID", "CMD"], &rows);
    Ok(0)
}

/// A container in `inspect`'s JSON (docker's field names where they exist).
pub async fn inspect_value(client: &Client, c: &ContainerInfo) -> CliResult<Value> {
    let status = client.status(c).await?;
    let (pid, exit_code, finished) = match &status {
        ContainerStatus::Running { pid, .. } | ContainerStatus::Paused { pid, .. } => {
            (*pid, 0, None)
        }
        ContainerStatus::Exited { code, at } | ContainerStatus::Restarting { code, at } => {
            (0, *code, *at)
        }
        _ => (0, 0, None),
    };
    let started = match &status {
        ContainerStatus::Running { started_at, .. }
        | ContainerStatus::Paused { started_at, .. } => *started_at,
        _ => None,
    };
    let process = c.process_spec().cloned().unwrap_or(Value::Null);
    Ok(json!({
        "Id": c.id,
        "Name": c.name,
        "Created": c.created_at.map(crate::events::rfc3339),
        "Image": c.image,
        // Where docker has it: beside State, not in it.
        "RestartCount": c.labels.get(crate::logs::RESTART_COUNT_LABEL).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0),
        "State": {
            "Status": status.state(),
            "Running": matches!(status, ContainerStatus::Running { .. }),
            "Paused": matches!(status, ContainerStatus::Paused { .. }),
            "Restarting": matches!(status, ContainerStatus::Restarting { .. }),
            "Pid": pid,
            "ExitCode": exit_code,
            "StartedAt": started.map(crate::events::rfc3339),
            "FinishedAt": finished.map(crate::events::rfc3339),
        },
        "Config": {
            "Hostname": c.spec.as_ref().map(|s| s["hostname"].clone()),
            "User": process["user"].clone(),
            "Env": process["env"].clone(),
            "Cmd": process["args"].clone(),
            "WorkingDir": process["cwd"].clone(),
            "Tty": process["terminal"].clone(),
            "Labels": c.labels,
            "StopSignal": c.stop_signal(),
        },
        "HostConfig": {
            "NetworkMode": c.labels.get(crate::spec::NETWORK_LABEL),
            "ReadonlyRootfs": c.spec.as_ref().map(|s| s["root"]["readonly"].clone()),
        },
        "Snapshotter": c.snapshotter,
        "SnapshotKey": c.snapshot_key,
        "Runtime": c.runtime,
        "Spec": c.spec,
    }))
}

#[derive(Args, Debug)]
pub struct PortArgs {
    /// The container (name or id prefix).
    container: String,
    /// Only this port: PORT[/PROTO].
    port: Option<String>,
}

/// docker's `port`: the published ports from the container's `berth/ports` label.
pub async fn port(client: &Client, a: PortArgs) -> CliResult {
    let c = client.containers().find(&a.container).await?;
    let ports: Vec<crate::spec::PublishedPort> = match c.labels.get(crate::spec::PORTS_LABEL) {
        Some(raw) => serde_json::from_str(raw)
            .map_err(|e| format!("label {}: {e}", crate::spec::PORTS_LABEL))?,
        None => Vec::new(),
    };
    let wanted = a.port.as_deref().map(|p| match p.split_once('/') {
        Some((n, proto)) => (n.to_string(), proto.to_string()),
        None => (p.to_string(), "tcp".to_string()),
    });
    let mut shown = 0;
    for p in &ports {
        if let Some((n, proto)) = &wanted {
            if *n != p.container_port.to_string() || *proto != p.protocol {
                continue;
            }
        }
        let ip = if p.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &p.host_ip
        };
        if wanted.is_some() {
            println!("{ip}:{}", p.host_port);
        } else {
            println!(
                "{}/{} -> {ip}:{}",
                p.container_port, p.protocol, p.host_port
            );
        }
        shown += 1;
    }
    if shown == 0 {
        if let Some(p) = &a.port {
            return Err(format!("no public port '{p}' published for {}", a.container).into());
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct RenameArgs {
    /// The container (name or id prefix).
    container: String,
    /// Its new name.
    new_name: String,
}

/// docker's `rename`.
pub async fn rename(client: &Client, a: RenameArgs) -> CliResult {
    let c = client.containers().find(&a.container).await?;
    client.containers().rename(&c, &a.new_name).await?;
    Ok(0)
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Every container, not only running ones (stopped ones show zeros).
    #[arg(short = 'a', long)]
    all: bool,
    /// Print one sample and exit.
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// json, or a template such as '{{.Name}} {{.CPUPerc}} {{.MemUsage}}'.
    #[arg(long)]
    format: Option<String>,
    /// Do not truncate ids.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// The containers (default: every running one).
    #[arg(value_name = "CONTAINER")]
    containers: Vec<String>,
}

/// One `stats` row with docker's field names.
fn stats_value(
    c: &ContainerInfo,
    before: Option<&crate::stats::Sample>,
    now: Option<&crate::stats::Sample>,
    no_trunc: bool,
) -> Value {
    let size = |b: u64| format::human_size(b.min(i64::MAX as u64) as i64);
    let (cpu, mem, limit, net, block, pids) = match now {
        Some(s) => {
            let cpu = before.map_or(0.0, |b| crate::stats::cpu_percent(b, s));
            let limit = s.memory_limit.unwrap_or_else(host_memory);
            (
                cpu,
                s.memory_usage,
                limit,
                format!("{} / {}", size(s.net_rx), size(s.net_tx)),
                format!("{} / {}", size(s.block_read), size(s.block_write)),
                s.pids,
            )
        }
        None => (0.0, 0, 0, "0B / 0B".into(), "0B / 0B".into(), 0),
    };
    let mem_perc = if limit > 0 {
        mem as f64 * 100.0 / limit as f64
    } else {
        0.0
    };
    json!({
        "ID": if no_trunc { c.id.clone() } else { crate::names::short_id(&c.id).to_string() },
        "Container": c.name,
        "Name": c.name,
        "CPUPerc": format!("{cpu:.2}%"),
        "MemUsage": format!("{} / {}", size(mem), size(limit)),
        "MemPerc": format!("{mem_perc:.2}%"),
        "NetIO": net,
        "BlockIO": block,
        "PIDs": pids.to_string(),
        "CPUPercent": cpu,
        "MemoryUsageBytes": mem,
        "MemoryLimitBytes": limit,
    })
}

/// docker shows the host's memory as the limit of an unlimited container.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// docker's `stats`: CPU % over the interval between two samples (a second apart), memory in
/// use and its limit, network and block I/O, pids; live (redrawn each second) unless
/// `--no-stream`.
pub async fn stats(client: &Client, a: StatsArgs) -> CliResult {
    let named = !a.containers.is_empty();
    let mut containers = Vec::new();
    for name in &a.containers {
        containers.push(client.containers().find(name).await?);
    }
    let format = Format::parse(a.format.as_deref());
    let live = !a.no_stream && std::io::stdout().is_terminal();
    let mut before: HashMap<String, crate::stats::Sample> = HashMap::new();
    let first = |ids: &[String]| {
        let ids = ids.to_vec();
        async move { client.stats(&ids).await }
    };
    loop {
        if !named {
            let tasks = client.tasks().list().await?;
            containers = client
                .containers()
                .list(&[])
                .await?
                .into_iter()
                .filter(|c| {
                    a.all || crate::lifecycle::status_of_container(c, tasks.get(&c.id)).is_running()
                })
                .collect();
            containers.sort_by(|x, y| x.name.cmp(&y.name));
        }
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        if before.is_empty() && !ids.is_empty() {
            // CPU % needs a first sample to measure from.
            for s in first(&ids).await? {
                before.insert(s.container_id.clone(), s);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let now: HashMap<String, crate::stats::Sample> = if ids.is_empty() {
            HashMap::new()
        } else {
            client
                .stats(&ids)
                .await?
                .into_iter()
                .map(|s| (s.container_id.clone(), s))
                .collect()
        };
        let values: Vec<Value> = containers
            .iter()
            .map(|c| stats_value(c, before.get(&c.id), now.get(&c.id), a.no_trunc))
            .collect();
        if live {
            // Clear the screen and home the cursor, as docker redraws.
            print!("\x1b[2J\x1b[H");
        }
        format::print_list(&format, &values, |vs| {
            let rows: Vec<Vec<String>> = vs
                .iter()
                .map(|v| {
                    format::cells(
                        v,
                        &[
                            "ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO",
                            "PIDs",
                        ],
                    )
                })
                .collect();
            format::print_table(
                &[
                    "CONTAINER ID",
                    "NAME",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "MEM %",
                    "NET I/O",
                    "BLOCK I/O",
                    "PIDS",
                ],
                &rows,
            );
        })?;
        if a.no_stream {
            return Ok(0);
        }
        before = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Do not attach stdin.
    #[arg(long = "no-stdin")]
    no_stdin: bool,
    /// Keys that detach and leave the container running (docker's form: ctrl-p,ctrl-q).
    #[arg(long = "detach-keys", value_name = "KEYS")]
    detach_keys: Option<String>,
    /// Send the signals berth receives (INT, TERM, HUP) to the container.
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    sig_proxy: bool,
    #[arg(value_name = "CONTAINER")]
    container: String,
}

/// docker's `attach`: output from now on, input into the container's stdin (`-i` containers),
/// signals proxied; the container's exit code, or 0 when detached with the keys.
pub async fn attach(client: &Client, a: AttachArgs) -> CliResult {
    let c = client.containers().find(&a.container).await?;
    let keys = match &a.detach_keys {
        Some(k) => crate::attach::parse_detach_keys(k)?,
        None => crate::attach::DEFAULT_DETACH_KEYS.to_vec(),
    };
    let tty = c.terminal();
    let _raw = (tty && !a.no_stdin && std::io::stdin().is_terminal()).then(RawTerminal::enter);
    let input = (!a.no_stdin).then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>);
    if tty {
        let resize = crate::lifecycle::follow_terminal_size(client, &c.id, "");
        let outcome = client
            .attach_terminal(&c, input, keys.clone(), Box::new(std::io::stdout()))
            .await;
        resize.abort();
        match outcome? {
            Some(crate::attach::Attachment::Exited(s)) => return Ok(s.code as i32),
            Some(crate::attach::Attachment::Detached) => {
                eprintln!("read escape sequence");
                return Ok(0);
            }
            // Started without the shim's attach socket: follow its log below.
            None => {}
        }
    }
    let input = (!a.no_stdin).then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>);
    let forward = (a.sig_proxy && !tty).then(|| forward_signals(client.clone(), c.id.clone()));
    let mut print = |l: &crate::logs::LogLine| -> std::io::Result<()> {
        use std::io::Write;
        let mut buf = l.content.clone();
        if l.complete {
            buf.push(b'\n');
        }
        match l.stream {
            crate::logs::Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(&buf)?;
                o.flush()
            }
            crate::logs::Stream::Stderr => std::io::stderr().lock().write_all(&buf),
        }
    };
    let outcome = client.attach_container(&c, input, keys, &mut print).await;
    if let Some(f) = forward {
        f.abort();
    }
    match outcome? {
        crate::attach::Attachment::Exited(s) => Ok(s.code as i32),
        crate::attach::Attachment::Detached => {
            eprintln!("read escape sequence");
            Ok(0)
        }
    }
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPUs the container may use (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes the container may have.
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long = "restart", value_name = "POLICY")]
    restart: Option<String>,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

/// docker's `update`: the running task's cgroup limits and the record, for each container.
pub async fn update(client: &Client, a: UpdateArgs) -> CliResult {
    let update = crate::update::Update {
        memory: a.memory.as_deref().map(format::parse_bytes).transpose()?,
        cpus: a.cpus,
        pids_limit: a.pids_limit,
        restart: a.restart.clone(),
    };
    if update.memory.is_none()
        && update.cpus.is_none()
        && update.pids_limit.is_none()
        && update.restart.is_none()
    {
        return Err(
            "update needs at least one of --memory, --cpus, --pids-limit, --restart"
                .to_string()
                .into(),
        );
    }
    // Checked once, before any container changes.
    update.resources()?;
    let update = &update;
    each(&a.containers, |name| async move {
        let c = client.containers().find(&name).await?;
        client.update_container(&c, update).await
    })
    .await
}
