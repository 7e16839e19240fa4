//! berth-shim: the per-container supervisor. This file only parses arguments; the shape of
//! the program is: detach.rs (becoming a daemon) -> server.rs (the event loop) using
//! process.rs (state machine, exit records), io.rs (stdio), crilog.rs (cri-log://), runc.rs,
//! reaper.rs.

mod attach;
mod cgroup;
mod crilog;
mod detach;
mod io;
mod logger;
mod process;
mod reaper;
mod runc;
mod server;

use std::path::PathBuf;

/// One line on stderr (the --log file once detached). Never panics, unlike eprintln!.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let t = berth_shim::protocol::Timestamp::now();
        let _ = writeln!(
            std::io::stderr(),
            "{}.{:03} berth-shim[{}]: {}",
            t.seconds,
            t.nanos / 1_000_000,
            std::process::id(),
            format_args!($($arg)*)
        );
    }};
}

const USAGE: &str = "usage: berth-shim start --namespace NS --id ID --bundle DIR \
[--socket-dir DIR] [--runtime-binary runc] --runtime-root DIR [--systemd-cgroup] \
[--no-pivot-root] [--no-new-keyring] [--runtime-timeout-ms MS] [--log FILE] \
[--cgroup-dir DIR]...
       berth-shim --version";

pub struct Options {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    /// Where shim.sock and console.sock are bound (default: the bundle). A short directory
    /// keeps socket paths under the 108-byte limit whatever the bundle path's length.
    pub socket_dir: PathBuf,
    pub runtime_binary: PathBuf,
    pub runtime_root: PathBuf,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    /// How long one runtime command may run before it is killed and its call fails.
    pub runtime_timeout: std::time::Duration,
    pub log: Option<PathBuf>,
    /// The shim's own cgroup, one directory per hierarchy (`/sys/fs/cgroup/memory/k8s.io/pod`):
    /// the shim moves itself there (see cgroup.rs). berthd resolves the cgroup path.
    pub cgroup_dirs: Vec<PathBuf>,
}

/// Without `--runtime-timeout-ms`: long enough for slow hooks, short enough to come back.
const DEFAULT_RUNTIME_TIMEOUT_MS: u64 = 60_000;

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut namespace = None;
    let mut id = None;
    let mut bundle = None;
    let mut socket_dir = None;
    let mut runtime_binary = PathBuf::from("runc");
    let mut runtime_root = None;
    let mut systemd_cgroup = false;
    let mut no_pivot_root = false;
    let mut no_new_keyring = false;
    let mut runtime_timeout_ms = DEFAULT_RUNTIME_TIMEOUT_MS;
    let mut log = None;
    let mut cgroup_dirs = Vec::new();
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--namespace" => namespace = Some(val()?),
            "--id" => id = Some(val()?),
            "--bundle" => bundle = Some(PathBuf::from(val()?)),
            "--socket-dir" => socket_dir = Some(PathBuf::from(val()?)),
            "--runtime-binary" => runtime_binary = PathBuf::from(val()?),
            "--runtime-root" => runtime_root = Some(PathBuf::from(val()?)),
            "--systemd-cgroup" => systemd_cgroup = true,
            "--no-pivot-root" => no_pivot_root = true,
            "--no-new-keyring" => no_new_keyring = true,
            "--runtime-timeout-ms" => {
                let v = val()?;
                runtime_timeout_ms = match v.parse::<u64>() {
                    Ok(ms) if ms > 0 => ms,
                    _ => return Err(format!("--runtime-timeout-ms {v:?}: not a positive number")),
                };
            }
            "--log" => log = Some(PathBuf::from(val()?)),
            "--cgroup-dir" => {
                let dir = PathBuf::from(val()?);
                if !dir.is_absolute() {
                    return Err(format!("--cgroup-dir {}: not absolute", dir.display()));
                }
                cgroup_dirs.push(dir);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let id: String = id.ok_or("--id is required")?;
    // runc validates ids too; this keeps odd ones out of our own file names and logs.
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!("invalid container id {id:?}"));
    }
    let bundle = bundle.ok_or("--bundle is required")?;
    if !bundle.is_absolute() || !bundle.is_dir() {
        return Err(format!(
            "bundle {} is not an absolute directory path",
            bundle.display()
        ));
    }
    let socket_dir = socket_dir.unwrap_or_else(|| bundle.clone());
    if !socket_dir.is_absolute() || !socket_dir.is_dir() {
        return Err(format!(
            "socket dir {} is not an absolute directory path",
            socket_dir.display()
        ));
    }
    let runtime_root = runtime_root.ok_or("--runtime-root is required")?;
    if !runtime_root.is_absolute() {
        return Err("--runtime-root must be absolute".into());
    }
    Ok(Options {
        namespace: namespace.ok_or("--namespace is required")?,
        id,
        bundle,
        socket_dir,
        runtime_binary,
        runtime_root,
        systemd_cgroup,
        no_pivot_root,
        no_new_keyring,
        runtime_timeout: std::time::Duration::from_millis(runtime_timeout_ms),
        log,
        cgroup_dirs,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("start") => match parse(args) {
            Ok(opts) => detach::start(opts),
            Err(e) => {
                eprintln!("berth-shim: {e}\n{USAGE}");
                std::process::exit(2);
            }
        },
        Some("--version") => println!("berth-shim {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
