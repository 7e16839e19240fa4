//! Tasks end to end: containers really run. A real berthd drives berth-shim and runc, and the real
//! `ctr` (Debian's containerd 1.6 client) and the `containerd-client` crate drive berthd: run,
//! exec, pause, kill, ttys, namespaces, user namespaces, events, wrong transitions, daemon restarts
//! with tasks in every state, and leaks over many runs.
//!
//! Isolation rules — tests of this module run in parallel threads, and other test processes (a
//! second `cargo test`, CI beside a developer) may run on the same host at the same moment:
//! - Every test has a namespace of its own: `Fixture::start` refuses a name another test of this
//!   process took. ctr puts a container in the cgroup `/<ns>/<id>`, which is host-wide.
//! - The fixture suffixes that name with a token unique to the process (`process_token`), so the
//!   cgroups of two processes never meet either; tests read the real name from `f.ns`.
//! - Each fixture has its own daemon on its own temp root; runc's state lives under it.
//! - Cleanup touches only what is the fixture's own: the tasks and containers of its daemon
//!   (through the daemon when the test ends), and if the daemon cannot, the shims whose command
//!   lines name the daemon's directory, the processes those shims parent, the processes of the
//!   cgroups named by the bundles of that daemon, and the mounts under its directory. Never
//!   "everything in namespace X" on the host. On a failed test it prints berthd's log tail.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CreateTaskRequest, CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest,
    ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest, PauseTaskRequest,
    StartRequest, UpdateContainerRequest, WaitRequest, WaitResponse,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Response, Status};
use containerd_client::types::v1::{Process, Status as ProcessStatus};
use containerd_client::types::Mount;
use containerd_client::with_namespace;
use prost_types::{Any, FieldMask};

use crate::events::Events;
use berth_testkit::skip::{skip, skip_unless_ci};

use crate::fixtures::busybox_oci_archive;
use crate::harness::{ctr_command, process_token, Ctr, Daemon};

mod faults;

const IMAGE: &str = "docker.io/berth/busybox:tasks";
/// How long any single gRPC reply, or a process's exit after SIGKILL, may take.
const PATIENCE: Duration = Duration::from_secs(20);
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const SIGKILL: u32 = 9;

// ---------------------------------------------------------------------------------------------
// The fixture: a daemon with the busybox image imported into the test's namespace
// ---------------------------------------------------------------------------------------------

/// One row of `ctr tasks ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TaskRow {
    pid: u32,
    status: String,
}

struct Fixture {
    d: Daemon,
    /// The test's namespace as the daemon knows it: its base name and the process token.
    ns: &'static str,
    _images: tempfile::TempDir,
}

/// Claim namespace `base` for one test of this process (panics if another has it) and return
/// the name the daemon is to use, unique on the host (see the module comment).
fn claim_namespace(base: &'static str) -> &'static str {
    static TAKEN: std::sync::Mutex<BTreeSet<&str>> = std::sync::Mutex::new(BTreeSet::new());
    let fresh = TAKEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(base);
    assert!(
        fresh,
        "namespace {base} is already used by another test of this process: each test needs a \
         namespace of its own, or the cleanup of one kills the containers of the other"
    );
    // Leaked once per test: the tests hold `f.ns` as a plain &str everywhere.
    Box::leak(format!("{base}-{}", process_token()).into_boxed_str())
}

impl Fixture {
    /// A daemon with the busybox image imported (and unpacked) into a namespace of the test's
    /// own, named after `base` (see the module comment).
    fn start(base: &'static str) -> Fixture {
        Self::start_with_config(base, "")
    }

    /// With extra berthd configuration (TOML).
    fn start_with_config(base: &'static str, toml: &str) -> Fixture {
        let ns = claim_namespace(base);
        let images = tempfile::tempdir().expect("temp dir");
        let image = busybox_oci_archive(images.path(), IMAGE);
        let f = Fixture {
            d: Daemon::start_with_config(toml),
            ns,
            _images: images,
        };
        f.ctr(&["images", "import", image.path.to_str().expect("utf-8 path")]);
        f
    }

    /// ctr in the test's namespace; asserts success and returns stdout.
    fn ctr(&self, args: &[&str]) -> String {
        self.d.ctr(self.ns, args)
    }

    fn ctr_raw(&self, args: &[&str]) -> Output {
        self.d.ctr_raw(self.ns, args)
    }

    /// `ctr run --rm FLAGS IMAGE ID CMD…`, whatever its exit status.
    fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr_raw(&args)
    }

    /// `ctr run --rm IMAGE ID CMD…`, insisting on exit 0; returns stdout.
    fn run_ok(&self, id: &str, cmd: &[&str]) -> String {
        let out = self.run(&[], id, cmd);
        self.assert_exit(&out, 0, &format!("ctr run --rm {id} {}", cmd.join(" ")));
        stdout(&out)
    }

    /// `ctr run -d FLAGS IMAGE ID CMD…`; returns the task's pid once `tasks ls` shows it.
    fn run_d_with(&self, flags: &[&str], id: &str, cmd: &[&str]) -> u32 {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args);
        let row = self
            .task(id)
            .unwrap_or_else(|| panic!("{id} is not in `ctr tasks ls` after run -d"));
        assert!(row.pid > 0, "{id}: {row:?}");
        row.pid
    }

    fn run_d(&self, id: &str, cmd: &[&str]) -> u32 {
        self.run_d_with(&[], id, cmd)
    }

    fn assert_exit(&self, out: &Output, code: i32, what: &str) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "{what}: expected exit status {code}\nstdout: {}\nstderr: {}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ctr tasks ls` as id → (pid, status).
    fn tasks(&self) -> BTreeMap<String, TaskRow> {
        parse_tasks(&self.ctr(&["tasks", "ls"]))
    }

    fn task(&self, id: &str) -> Option<TaskRow> {
        self.tasks().remove(id)
    }

    /// Poll `ctr tasks ls` until task `id` has `status`.
    fn wait_status(&self, id: &str, status: &str) -> TaskRow {
        let mut last = None;
        wait_for(PATIENCE, &format!("{id} to be {status}"), || {
            last = self.task(id);
            match &last {
                Some(row) if row.status == status => Ok(()),
                other => Err(format!("tasks ls says {other:?}")),
            }
        });
        last.expect("row")
    }

    /// SIGKILL the task, wait until it has stopped, delete it and its container, all through ctr,
    /// asserting that each step works.
    fn remove(&self, id: &str) {
        if let Some(row) = self.task(id) {
            if row.status == "PAUSED" {
                self.ctr(&["tasks", "resume", id]);
            }
            if row.status != "STOPPED" {
                self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                self.wait_status(id, "STOPPED");
            }
            self.ctr(&["tasks", "delete", id]);
        }
        self.ctr(&["containers", "rm", id]);
    }

    /// Best effort, through the daemon: every task killed and deleted, every container removed.
    fn cleanup_through_daemon(&self) {
        let Ok(out) = self.try_ctr(&["tasks", "ls"]) else {
            return;
        };
        let tasks = parse_tasks(&out);
        for (id, row) in &tasks {
            if row.status == "PAUSED" {
                let _ = self.try_ctr(&["tasks", "resume", id]);
            }
            if row.status != "STOPPED" {
                let _ = self.try_ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for id in tasks.keys() {
            while Instant::now() < deadline {
                match self
                    .try_ctr(&["tasks", "ls"])
                    .map(|o| parse_tasks(&o).remove(id))
                {
                    Ok(Some(row)) if row.status != "STOPPED" => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => break,
                }
            }
            if self.try_ctr(&["tasks", "delete", id]).is_err() {
                let _ = self.try_ctr(&["tasks", "delete", "-f", id]);
            }
        }
        if let Ok(out) = self.try_ctr(&["containers", "ls", "-q"]) {
            for id in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.try_ctr(&["containers", "rm", id]);
            }
        }
    }

    fn try_ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = self.ctr_raw(args);
        if out.status.success() {
            Ok(stdout(&out))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test's berthd log is printed by the daemon's own drop.
        if self.d.serves() {
            self.cleanup_through_daemon();
        }
        let leftovers = force_clean(self.d.dir.path(), &self.d.state());
        // runc leaves the namespace level `/<ns>` of the cgroups behind (containerd leaves
        // /default too); the namespace is this fixture's alone, and rmdir refuses a non-empty one.
        for dir in namespace_cgroups(self.ns) {
            let _ = std::fs::remove_dir(dir);
        }
        if !leftovers.is_empty() && !std::thread::panicking() {
            // The test passed but left something the daemon should have removed: say so loudly
            // (a panic in drop would abort), the leak test is where this is asserted.
            eprintln!(
                "warning: {} left behind (removed by the fixture): {leftovers:?}",
                self.ns
            );
        }
    }
}

fn parse_tasks(out: &str) -> BTreeMap<String, TaskRow> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let id = cols.next()?.to_string();
            let pid = cols.next()?.parse().ok()?;
            let status = cols.next()?.to_string();
            Some((id, TaskRow { pid, status }))
        })
        .collect()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The host's view: processes, cgroups, mounts
// ---------------------------------------------------------------------------------------------

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

use berth_testkit::running as alive;

/// The berth-shim processes of the daemon living in `dir`, as (pid, argv): their command lines
/// name its directory (bundle, socket dir, runc root). Another daemon's shims never do.
fn shims(dir: &Path) -> Vec<(u32, Vec<String>)> {
    let dir = dir.to_string_lossy();
    all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, cmdline(pid)?)))
        .filter(|(_, args)| {
            args.first().is_some_and(|a| a.ends_with("berth-shim"))
                && args.iter().any(|a| a.contains(dir.as_ref()))
        })
        .collect()
}

/// The shim serving container `id`: its command line carries `--id ID`.
fn shim_of(dir: &Path, id: &str) -> Option<u32> {
    shims(dir)
        .into_iter()
        .find(|(_, args)| args.windows(2).any(|w| w[0] == "--id" && w[1] == id))
        .map(|(pid, _)| pid)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// `roots` and every process descending from them.
fn descendants(roots: &BTreeSet<u32>) -> BTreeSet<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect();
    let mut found = roots.clone();
    loop {
        let more: Vec<u32> = parents
            .iter()
            .filter(|(pid, ppid)| found.contains(ppid) && !found.contains(pid))
            .map(|&(pid, _)| pid)
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

/// Processes other than berthd whose command line names the daemon's directory.
fn processes_naming(dir: &Path, except: u32) -> Vec<(u32, Vec<String>)> {
    let dir = dir.to_string_lossy();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != except && pid != std::process::id())
        .filter_map(|pid| Some((pid, cmdline(pid)?)))
        .filter(|(_, args)| args.iter().any(|a| a.contains(dir.as_ref())))
        .collect()
}

/// ctr gives a container the cgroup `/<ns>/<id>`: its directories in every mounted hierarchy
/// (cgroup v1 controllers, the v1 "unified" mount, or a pure v2 host). For the tests' checks
/// only: the namespace is the test's own, but cleanup goes by what the daemon's bundles name.
pub(crate) fn namespace_cgroups(ns: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(ns)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            dirs.push(e.path().join(ns));
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// The container cgroups `/<ns>/<id>` that exist, by id.
fn container_cgroups(ns: &str) -> BTreeSet<String> {
    namespace_cgroups(ns)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

/// Pids in the namespace's container cgroups.
fn cgroup_pids(ns: &str) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for nsdir in namespace_cgroups(ns) {
        for e in std::fs::read_dir(&nsdir).into_iter().flatten().flatten() {
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids
}

/// /proc/self/mountinfo lines that mention `dir`, sorted, without the mount and parent ids.
fn mounts_mentioning(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    let mut lines: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter(|l| l.contains(dir.as_ref()))
        .map(|l| l.splitn(3, ' ').nth(2).unwrap_or_default().to_string())
        .collect();
    lines.sort();
    lines
}

fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points
}

/// The directories, in every mounted hierarchy, of the cgroups named (`linux.cgroupsPath`) by the
/// bundles under the daemon's `state` dir: this daemon's containers, and no one else's.
fn bundle_cgroups(state: &Path) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        hierarchies.extend(entries.flatten().map(|e| e.path()));
    }
    let namespaces = std::fs::read_dir(state.join("tasks")).into_iter().flatten();
    let bundles = namespaces
        .flatten()
        .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten());
    let mut dirs = vec![];
    for bundle in bundles {
        let Ok(config) = std::fs::read(bundle.path().join("config.json")) else {
            continue;
        };
        let spec: serde_json::Value = serde_json::from_slice(&config).unwrap_or_default();
        // ctr's `/<ns>/<id>`; a systemd `slice:prefix:name` is not a path and not used here.
        let Some(path) = spec["linux"]["cgroupsPath"].as_str() else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if relative.is_empty() || relative.contains(':') {
            continue;
        }
        dirs.extend(
            hierarchies
                .iter()
                .map(|h| h.join(relative))
                .filter(|d| d.is_dir()),
        );
    }
    dirs
}

fn procs_of(cgroups: &[PathBuf]) -> BTreeSet<u32> {
    cgroups
        .iter()
        .flat_map(|d| {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            procs
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Remove what the daemon living in `dir` (state dir `state`) should have removed: its shims,
/// their containers' processes (the shims' descendants, and what is in the cgroups its bundles
/// name, thawed first), those cgroups, and the mounts under its directory. Returns what it
/// found, for the record.
fn force_clean(dir: &Path, state: &Path) -> Vec<String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut found = vec![];
    let cgroups = bundle_cgroups(state);
    for cg in &cgroups {
        let _ = std::fs::write(cg.join("freezer.state"), "THAWED");
        let _ = std::fs::write(cg.join("cgroup.freeze"), "0");
    }
    // Everything is listed before anything is killed: a killed shim's children are reparented.
    let shims = shims(dir);
    let shim_pids: BTreeSet<u32> = shims.iter().map(|(pid, _)| *pid).collect();
    let mut containers = descendants(&shim_pids);
    containers.retain(|pid| !shim_pids.contains(pid));
    containers.extend(procs_of(&cgroups));
    for (pid, args) in &shims {
        found.push(format!("shim {pid}: {}", args.join(" ")));
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    for &pid in &containers {
        found.push(format!("container process {pid}: {:?}", cmdline(pid)));
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !procs_of(&cgroups).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for cg in &cgroups {
        found.push(format!("cgroup {}", cg.display()));
        let _ = std::fs::remove_dir(cg);
        // The namespace level runc leaves (containerd leaves /default too): the namespace is
        // this fixture's alone, and rmdir refuses a cgroup that still has children.
        if let Some(ns_level) = cg.parent() {
            let _ = std::fs::remove_dir(ns_level);
        }
    }
    for point in mount_points_under(dir) {
        found.push(format!("mount {}", point.display()));
        let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The gRPC side: containerd-client's generated clients, driven from synchronous tests
// ---------------------------------------------------------------------------------------------

struct Grpc {
    rt: tokio::runtime::Runtime,
    ns: String,
    tasks: TasksClient<Channel>,
    containers: ContainersClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
}

impl Grpc {
    fn connect(f: &Fixture) -> Grpc {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ch = rt.block_on(f.d.channel());
        Grpc {
            rt,
            ns: f.ns.to_string(),
            tasks: TasksClient::new(ch.clone()),
            containers: ContainersClient::new(ch.clone()),
            snapshots: SnapshotsClient::new(ch),
        }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        with_namespace!(msg, self.ns.as_str())
    }

    fn block<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        self.rt
            .block_on(async move { tokio::time::timeout(PATIENCE, call).await })
            .unwrap_or_else(|_| panic!("{what}: no reply within {PATIENCE:?}"))
            .map(Response::into_inner)
    }

    /// The rootfs mounts of container `id`, as ctr passes them to Tasks.Create.
    fn mounts(&self, id: &str) -> Vec<Mount> {
        let mut c = self.snapshots.clone();
        let req = self.req(MountsRequest {
            snapshotter: "overlayfs".into(),
            key: id.into(),
        });
        self.block("Snapshots.Mounts", async move { c.mounts(req).await })
            .expect("Snapshots.Mounts")
            .mounts
    }

    /// Tasks.Create without stdio (like `ctr tasks start --null-io`), not started.
    fn create_with(&self, id: &str, rootfs: Vec<Mount>) -> Result<CreateTaskResponse, Status> {
        let mut c = self.tasks.clone();
        let req = self.req(CreateTaskRequest {
            container_id: id.into(),
            rootfs,
            ..Default::default()
        });
        self.block("Tasks.Create", async move { c.create(req).await })
    }

    fn create(&self, id: &str) -> Result<CreateTaskResponse, Status> {
        self.create_with(id, self.mounts(id))
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<u32, Status> {
        let mut c = self.tasks.clone();
        let req = self.req(StartRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        });
        self.block("Tasks.Start", async move { c.start(req).await })
            .map(|r| r.pid)
    }

    fn get(&self, id: &str, exec_id: &str) -> Result<Process, Status> {
        let mut c = self.tasks.clone();
        let req = self.req(GetRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        });
        self.block("Tasks.Get", async move { c.get(req).await })
            .map(|r| r.process.expect("GetResponse.process"))
    }

    fn kill(&self, id: &str, signal: u32) -> Result<(), Status> {
        let mut c = self.tasks.clone();
        let req = self.req(KillRequest {
            container_id: id.into(),
            signal,
            ..Default::default()
        });
        self.block("Tasks.Kill", async move { c.kill(req).await })
            .map(drop)
    }

    fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse, Status> {
        let mut c = self.tasks.clone();
        let req = self.req(WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        });
        self.block("Tasks.Wait", async move { c.wait(req).await })
    }

    fn delete(&self, id: &str) -> Result<DeleteResponse, Status> {
        let mut c = self.tasks.clone();
        let req = self.req(DeleteTaskRequest {
            container_id: id.into(),
        });
        self.block("Tasks.Delete", async move { c.delete(req).await })
    }

    fn pause(&self, id: &str) -> Result<(), Status> {
        let mut c = self.tasks.clone();
        let req = self.req(PauseTaskRequest {
            container_id: id.into(),
        });
        self.block("Tasks.Pause", async move { c.pause(req).await })
            .map(drop)
    }

    /// Tasks.Exec of `args` with the container's own process spec otherwise, without stdio.
    fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<(), Status> {
        let mut process = self.spec(id)["process"].clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        let mut c = self.tasks.clone();
        let req = self.req(ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(Any {
                type_url: PROCESS_TYPE_URL.into(),
                value: serde_json::to_vec(&process).expect("encode process"),
            }),
            ..Default::default()
        });
        self.block("Tasks.Exec", async move { c.exec(req).await })
            .map(drop)
    }

    fn delete_process(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, Status> {
        let mut c = self.tasks.clone();
        let req = self.req(DeleteProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        });
        self.block(
            "Tasks.DeleteProcess",
            async move { c.delete_process(req).await },
        )
    }

    /// The container's OCI spec, as JSON.
    fn spec(&self, id: &str) -> serde_json::Value {
        let mut c = self.containers.clone();
        let req = self.req(GetContainerRequest { id: id.into() });
        let container = self
            .block("Containers.Get", async move { c.get(req).await })
            .expect("Containers.Get")
            .container
            .expect("container");
        serde_json::from_slice(&container.spec.expect("spec").value).expect("JSON spec")
    }

    /// Change the container's OCI spec (Containers.Update with mask `spec`).
    fn update_spec(&self, id: &str, change: impl FnOnce(&mut serde_json::Value)) {
        let mut c = self.containers.clone();
        let req = self.req(GetContainerRequest { id: id.into() });
        let mut container = self
            .block("Containers.Get", async move { c.get(req).await })
            .expect("Containers.Get")
            .container
            .expect("container");
        let mut spec = container.spec.take().expect("spec");
        let mut json: serde_json::Value = serde_json::from_slice(&spec.value).expect("JSON spec");
        change(&mut json);
        spec.value = serde_json::to_vec(&json).expect("encode spec");
        container.spec = Some(spec);
        let mut c = self.containers.clone();
        let req = self.req(UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(FieldMask {
                paths: vec!["spec".into()],
            }),
        });
        self.block("Containers.Update", async move { c.update(req).await })
            .expect("Containers.Update");
    }
}

fn status_of(p: &Process) -> ProcessStatus {
    ProcessStatus::try_from(p.status).unwrap_or(ProcessStatus::Unknown)
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(what: &str, r: Result<T, Status>, code: Code) {
    match r {
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// `ctr events`
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// A pty for `ctr run -t`
// ---------------------------------------------------------------------------------------------

/// posix_openpt + unlockpt + ptsname, through ioctls. (berthd's nix lacks the `term` feature and
/// rustix lacks `pty`; the crate's manifest is not the tests' to change.)
fn openpty() -> (std::fs::File, std::os::fd::OwnedFd) {
    use rustix::fs::{open, Mode, OFlags};
    use rustix::ioctl::{ioctl, opcode, Getter, Opcode, Setter};
    use std::ffi::{c_int, c_uint};
    const TIOCSPTLCK: Opcode = opcode::write::<c_int>(b'T', 0x31);
    const TIOCGPTN: Opcode = opcode::read::<c_uint>(b'T', 0x30);
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
    let master = open("/dev/ptmx", flags, Mode::empty()).expect("open /dev/ptmx");
    // SAFETY: TIOCSPTLCK reads an int through the pointer (0 unlocks), as unlockpt(3) passes it.
    unsafe { ioctl(&master, Setter::<TIOCSPTLCK, c_int>::new(0)) }.expect("unlock the pty");
    // SAFETY: TIOCGPTN writes the pty's number as an unsigned int, as ptsname(3) reads it.
    let n = unsafe { ioctl(&master, Getter::<TIOCGPTN, c_uint>::new()) }.expect("pty number");
    let slave = open(format!("/dev/pts/{n}").as_str(), flags, Mode::empty()).expect("open pts");
    (std::fs::File::from(master), slave)
}

// =============================================================================================
// 1. run --rm
// =============================================================================================

#[test]
fn run_rm_prints_output_and_propagates_the_exit_status() {
    run_rm_scenario("berth-e2e-run", Ctr::V1_6);
}

#[test]
fn run_rm_prints_output_and_propagates_the_exit_status_with_ctr_2() {
    run_rm_scenario("berth-e2e-run2", Ctr::V2);
}

/// runc makes a namespace's cgroup parent `/<ns>` and nothing removes it: a test daemon,
/// dropped, takes those of the namespaces it ran tasks in with it (berth-testkit), so the suite
/// does not leave one per test in every hierarchy.
#[test]
fn a_dropped_test_daemon_leaves_no_namespace_cgroup() {
    let ns = claim_namespace("berth-e2e-cgdrop");
    let images = tempfile::tempdir().expect("temp dir");
    let image = busybox_oci_archive(images.path(), IMAGE);
    let d = Daemon::start();
    d.ctr(
        ns,
        &["images", "import", image.path.to_str().expect("utf-8 path")],
    );
    d.ctr(ns, &["run", "--rm", IMAGE, "cgdrop", "true"]);
    assert!(
        !namespace_cgroups(ns).is_empty(),
        "runc made no cgroup parent for {ns}"
    );
    drop(d);
    assert_eq!(namespace_cgroups(ns), Vec::<PathBuf>::new());
}

fn run_rm_scenario(ns: &'static str, ctr: Ctr) {
    let mut f = Fixture::start(ns);
    f.d.ctr = ctr;

    let out = f.run_ok("run-echo", &["echo", "hello"]);
    assert_eq!(out, "hello\n");

    let out = f.run(&[], "run-exit3", &["sh", "-c", "exit 3"]);
    f.assert_exit(&out, 3, "ctr run --rm run-exit3 sh -c 'exit 3'");

    // Both tasks and containers are gone: --rm deleted them.
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
    assert_eq!(f.ctr(&["containers", "ls", "-q"]).trim(), "");
}

/// `ctr run --log-uri binary://…`, how nerdctl logs: the shim starts the logging program with
/// containerd's contract (query as arguments, CONTAINER_ID/CONTAINER_NAMESPACE, output on fds 3
/// and 4, ready on fd 5), the program gets the container's output, and the task's delete stops it.
#[test]
fn run_with_a_binary_logging_program() {
    let f = Fixture::start("berth-e2e-binlog");
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("logger");
    berth_testkit::write_executable(
        &script,
        "#!/bin/sh\n\
         out=\"$2\"\n\
         echo \"args=$* id=$CONTAINER_ID ns=$CONTAINER_NAMESPACE\" > \"$out.meta\"\n\
         trap 'echo TERM >> \"$out.meta\"; exit 0' TERM\n\
         /bin/cat <&3 > \"$out.stdout\" 5>&- &\n\
         /bin/cat <&4 > \"$out.stderr\" 5>&- &\n\
         exec 5>&-\n\
         while :; do /bin/sleep 0.05; done\n",
    );
    let base = dir.path().join("binlog-1");
    let uri = format!("binary://{}?file={}", script.display(), base.display());
    let cmd = ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 4"];
    let out = f.run(&["--log-uri", &uri], "binlog-1", &cmd);
    f.assert_exit(&out, 4, "ctr run --rm --log-uri binary://…");
    assert_eq!(
        stdout(&out),
        "",
        "the output went to the logger, not to ctr"
    );
    let read = |ext: &str| std::fs::read_to_string(base.with_extension(ext)).unwrap_or_default();
    wait_for(Duration::from_secs(5), "the logger's copies", || {
        match (read("stdout").as_str(), read("stderr").as_str()) {
            ("to-stdout\n", "to-stderr\n") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let want = format!("args=file {} id=binlog-1 ns={}\n", base.display(), f.ns);
    assert!(read("meta").starts_with(&want), "{:?}", read("meta"));
    // ctr run --rm deleted the task, which stops the logger.
    wait_for(
        Duration::from_secs(5),
        "the logger's SIGTERM",
        || match read("meta").ends_with("TERM\n") {
            true => Ok(()),
            false => Err(read("meta")),
        },
    );
}

/// The restart monitor (containerd's, which nerdctl's --restart relies on): containers labelled
/// `containerd.io/restart.status=running` get a new task when theirs dies, as their policy
/// allows, with the count label raised and the log label honoured; `stopped` kills the task.
#[test]
fn restart_monitor_keeps_labelled_containers_in_their_status() {
    let f = Fixture::start_with_config(
        "berth-e2e-restartmon",
        "[tasks]\nrestart_interval_ms = 200\n",
    );
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("always.log");
    let label = |id: &str, kv: &str| f.ctr(&["containers", "label", id, kv]);
    let labels = |id: &str| -> serde_json::Value {
        let info: serde_json::Value =
            serde_json::from_str(&f.ctr(&["containers", "info", id])).expect("info JSON");
        info["Labels"].clone()
    };
    // Labelled once the task runs: a monitor round between ctr's container and task creation
    // would otherwise start the task itself.
    let first = f.run_d("rs-always", &["sh", "-c", "echo up; exec sleep 1000"]);
    label(
        "rs-always",
        &format!("containerd.io/restart.logpath={}", log.display()),
    );
    label("rs-always", "containerd.io/restart.status=running");
    let mut ev = Events::start(&f.d);
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "rs-always"]);
    wait_for(Duration::from_secs(10), "rs-always restarted", || {
        match f.task("rs-always") {
            Some(r) if r.status == "RUNNING" && r.pid != first => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(labels("rs-always")["containerd.io/restart.count"], "1");
    // Clients see the restart as they would see one of their own making.
    let ns = f.ns;
    let update = ev.expect("/containers/update", |e| {
        e.namespace == ns && e.topic == "/containers/update" && e.body["id"] == "rs-always"
    });
    assert_eq!(
        ev.seen[update].body["labels"]["containerd.io/restart.count"], "1",
        "{:?}",
        ev.seen[update]
    );
    let create = ev.expect("/tasks/create", |e| e.is(ns, "/tasks/create", "rs-always"));
    let start = ev.expect("/tasks/start", |e| e.is(ns, "/tasks/start", "rs-always"));
    assert!(
        update < create && create < start,
        "{update} {create} {start}"
    );
    wait_for(
        Duration::from_secs(5),
        "the restarted task's log",
        || match std::fs::read_to_string(&log) {
            Ok(s) if s == "up\n" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // on-failure:2 — restarted after each failure, twice, then left stopped.
    f.run_d("rs-fail", &["sh", "-c", "sleep 0.5; exit 3"]);
    label("rs-fail", "containerd.io/restart.policy=on-failure:2");
    label("rs-fail", "containerd.io/restart.status=running");
    wait_for(
        Duration::from_secs(15),
        "two restarts, then stopped",
        || {
            let count = labels("rs-fail")["containerd.io/restart.count"].clone();
            match (count.as_str(), f.task("rs-fail")) {
                (Some("2"), Some(r)) if r.status == "STOPPED" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    // That no third restart comes is an absence, seen over a window: four monitor rounds.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(labels("rs-fail")["containerd.io/restart.count"], "2");
    assert_eq!(f.task("rs-fail").map(|r| r.status), Some("STOPPED".into()));

    // Desired status stopped: the monitor kills and deletes the running task.
    label("rs-always", "containerd.io/restart.status=stopped");
    wait_for(Duration::from_secs(10), "rs-always stopped", || {
        match f.task("rs-always") {
            None => Ok(()),
            Some(r) => Err(format!("{r:?}")),
        }
    });
    // Stopped is what rs-fail should stay: its task can go without the monitor starting another.
    label("rs-fail", "containerd.io/restart.status=stopped");
    f.ctr(&["tasks", "delete", "rs-fail"]);
    // An absence again: two monitor rounds and more.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        f.task("rs-fail"),
        None,
        "a stopped-labelled container is not started"
    );
    for id in ["rs-always", "rs-fail"] {
        f.ctr(&["containers", "rm", id]);
    }
}

// =============================================================================================
// 2. run -d: ls, ps, metrics, exec, pause/resume, kill, delete
// =============================================================================================

#[test]
fn detached_task_lifecycle() {
    let f = Fixture::start("berth-e2e-life");
    let g = Grpc::connect(&f);

    let pid = f.run_d("life-sleep", &["sleep", "1000"]);
    let row = f.task("life-sleep").expect("listed");
    assert_eq!(row.status, "RUNNING", "{row:?}");
    // The pid in tasks ls is the container's init as the host sees it. `runc start` returns
    // once it has told the init to go, which may still be `runc init` a moment before its exec.
    wait_for(PATIENCE, "the init to exec sleep", || match cmdline(pid) {
        Some(args) if args == ["sleep", "1000"] => Ok(()),
        other => Err(format!("{pid} runs {other:?}")),
    });

    // tasks ps lists the init pid.
    let ps = f.ctr(&["tasks", "ps", "life-sleep"]);
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(pids.contains(&pid), "tasks ps does not list {pid}:\n{ps}");

    // tasks metrics: ctr decodes io.containerd.cgroups.v1.Metrics (or v2) and prints a table.
    let metrics = f.ctr(&["tasks", "metrics", "life-sleep"]);
    assert!(metrics.contains("life-sleep"), "{metrics}");
    let value = |name: &str| {
        metrics.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(name)).then(|| cols.next().unwrap_or_default().to_string())
        })
    };
    let pids_current = value("pids.current")
        .unwrap_or_else(|| panic!("no pids.current row in tasks metrics:\n{metrics}"));
    assert!(
        pids_current.parse::<u64>().is_ok_and(|n| n >= 1),
        "pids.current = {pids_current:?}\n{metrics}"
    );
    let memory = value("memory.usage_in_bytes")
        .or_else(|| value("memory.usage"))
        .unwrap_or_else(|| panic!("no memory usage row in tasks metrics:\n{metrics}"));
    assert!(
        memory.parse::<u64>().is_ok_and(|n| n > 0),
        "memory usage = {memory:?}\n{metrics}"
    );

    // exec: output and exit status come back through ctr.
    let out = f.ctr_raw(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "life-sleep",
        "sh",
        "-c",
        "echo hi; exit 4",
    ]);
    f.assert_exit(&out, 4, "ctr tasks exec e1");
    assert_eq!(stdout(&out), "hi\n");
    assert_code(
        "Get of the exec ctr deleted",
        g.get("life-sleep", "e1"),
        Code::NotFound,
    );

    // SIGTERM does not kill a PID-1 sleep (no handler): still running a moment later (an absence,
    // seen over a window).
    f.ctr(&["tasks", "kill", "life-sleep"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.task("life-sleep").expect("listed").status, "RUNNING");
    assert!(alive(pid), "SIGTERM killed PID 1 sleep");

    // SIGKILL does; the exit status is 128 + 9.
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "life-sleep"]);
    let waited = g.wait("life-sleep", "").expect("Tasks.Wait");
    assert_eq!(waited.exit_status, 137, "{waited:?}");
    assert!(waited.exited_at.is_some(), "{waited:?}");
    let row = f.wait_status("life-sleep", "STOPPED");
    assert_eq!(row.pid, pid, "a stopped task keeps its pid in tasks ls");
    assert!(!alive(pid));
    let got = g.get("life-sleep", "").expect("Tasks.Get");
    assert_eq!(got.exit_status, 137, "{got:?}");
    assert_eq!(
        got.id, "life-sleep",
        "Process.id is the container id for init"
    );

    // ctr 1.6 `tasks delete` exits 0 and logs the non-zero exit code (delete.go).
    let out = f.ctr_raw(&["tasks", "delete", "life-sleep"]);
    f.assert_exit(&out, 0, "ctr tasks delete life-sleep");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exit code 137"),
        "tasks delete did not report 137: {stderr}"
    );
    assert_code("Get after delete", g.get("life-sleep", ""), Code::NotFound);
    f.ctr(&["containers", "rm", "life-sleep"]);
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
}

#[test]
fn pause_freezes_the_container_and_resume_thaws_it() {
    let f = Fixture::start("berth-e2e-pause");
    let pid = f.run_d(
        "pause-count",
        &[
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /count; usleep 20000; done",
        ],
    );
    let count_file = PathBuf::from(format!("/proc/{pid}/root/count"));
    // A read may fall between the truncation and the write of `echo`: retry until a number.
    let count = || -> u64 {
        let mut last = String::new();
        for _ in 0..100 {
            last = std::fs::read_to_string(&count_file).unwrap_or_default();
            if let Ok(n) = last.trim().parse() {
                return n;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{} never held a number: {last:?}", count_file.display());
    };
    wait_for(PATIENCE, "the counter to start", || {
        std::fs::read_to_string(&count_file)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let advances = |what: &str| {
        let from = count();
        wait_for(PATIENCE, what, || match count() {
            n if n > from => Ok(()),
            n => Err(format!("{from} → {n}")),
        });
    };
    advances("the counter to run before pausing");

    f.ctr(&["tasks", "pause", "pause-count"]);
    assert_eq!(f.task("pause-count").expect("listed").status, "PAUSED");
    // The kernel's word that every process of the container is frozen.
    wait_for(
        PATIENCE,
        "the container's cgroup to be frozen",
        || match freezer_state(pid)? {
            true => Ok(()),
            false => Err("not frozen".into()),
        },
    );
    // Frozen: not even a write in progress completes, so compare the raw contents. That nothing
    // happens needs a window to see (ten ticks of the counter); once the freezer says FROZEN its
    // length cannot fail a correct daemon, only make the check weaker.
    let before = std::fs::read_to_string(&count_file).expect("read count");
    std::thread::sleep(Duration::from_millis(200));
    let after = std::fs::read_to_string(&count_file).expect("read count");
    assert_eq!(before, after, "the counter advanced while paused");

    f.ctr(&["tasks", "resume", "pause-count"]);
    assert_eq!(f.task("pause-count").expect("listed").status, "RUNNING");
    advances("the counter to run after resume");

    f.remove("pause-count");
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
}

/// Whether the freezer holds the cgroup of `pid`: cgroup v1's `freezer.state` is FROZEN, or v2's
/// `cgroup.events` says `frozen 1`. (Paths in /proc/PID/cgroup are relative to the hierarchies'
/// roots: the tests run in the host's cgroup namespace.)
fn freezer_state(pid: u32) -> Result<bool, String> {
    let read = |p: String| std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"));
    let cgroups = read(format!("/proc/{pid}/cgroup"))?;
    let mut unified = None;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let controllers = fields.nth(1).unwrap_or_default();
        let path = fields.next().unwrap_or_default().trim_start_matches('/');
        if controllers.split(',').any(|c| c == "freezer") {
            let state = read(format!("/sys/fs/cgroup/freezer/{path}/freezer.state"))?;
            return Ok(state.trim() == "FROZEN");
        }
        if controllers.is_empty() {
            unified = Some(path.to_string());
        }
    }
    let path = unified.ok_or_else(|| format!("no freezer in the cgroups of {pid}: {cgroups}"))?;
    let events = read(format!("/sys/fs/cgroup/{path}/cgroup.events"))?;
    Ok(events.lines().any(|l| l == "frozen 1"))
}

// =============================================================================================
// 3. run -t
// =============================================================================================

#[test]
fn run_with_a_tty() {
    let f = Fixture::start("berth-e2e-tty");
    let (mut master, slave) = openpty();
    let mut cmd = ctr_command(
        &f.d.socket,
        f.ns,
        &[
            "run",
            "-t",
            "--rm",
            IMAGE,
            "tty-1",
            "sh",
            "-c",
            "tty; echo $((3+4))",
        ],
    );
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup pts")))
        .stdout(Stdio::from(slave.try_clone().expect("dup pts")))
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().expect("run ctr -t");
    // Only ctr may hold the slave now, so the master reads EIO once ctr is gone.
    drop(cmd);

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut output = Vec::new();
    let status = loop {
        while let Ok(chunk) = rx.try_recv() {
            output.extend(chunk);
        }
        if let Some(status) = child.try_wait().expect("wait for ctr") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ctr run -t did not finish; output so far: {:?}",
                String::from_utf8_lossy(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever ctr wrote before exiting is still in the master.
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
        output.extend(chunk);
    }
    let output = String::from_utf8_lossy(&output);
    assert!(status.success(), "ctr run -t: {status}; output: {output:?}");
    assert!(
        output.contains("/dev/pts/"),
        "tty does not name a pty: {output:?}"
    );
    assert!(
        output.lines().any(|l| l.trim() == "7"),
        "no 7 in the output: {output:?}"
    );
}

// =============================================================================================
// 4. another runtime binary
// =============================================================================================

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(binary).is_file()))
}

#[test]
fn task_state_has_tight_modes() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let f = Fixture::start("berth-e2e-modes");
    f.run_d("modes-1", &["sleep", "1000"]);
    let state = f.d.state();
    let mode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    // The bundle: the spec and the mounted rootfs, for root only.
    let bundle = state.join("tasks").join(f.ns).join("modes-1");
    assert_eq!(mode(&bundle), 0o700, "{}", bundle.display());
    assert!(bundle.join("config.json").is_file());
    // The shim's control socket: a filesystem socket (never abstract), 0600 in a 0700 dir.
    let dirs: Vec<PathBuf> = std::fs::read_dir(state.join("s"))
        .expect("socket dirs")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(mode(&dirs[0]), 0o700, "{}", dirs[0].display());
    let socket = dirs[0].join("shim.sock");
    let md = std::fs::symlink_metadata(&socket).expect("shim.sock");
    assert!(md.file_type().is_socket(), "{}", socket.display());
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    f.remove("modes-1");
    // Gone with the task.
    assert!(!bundle.exists(), "{}", bundle.display());
    assert!(!dirs[0].exists(), "{}", dirs[0].display());
}

#[test]
fn a_runtime_named_in_the_config_is_used() {
    // A runc-compatible binary of our own: logs each call, then is runc.
    let tools = tempfile::tempdir().expect("temp dir");
    let calls = tools.path().join("calls");
    let wrapper = tools.path().join("logging-runc");
    berth_testkit::write_executable(
        &wrapper,
        &format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec runc \"$@\"\n",
            calls.display()
        ),
    );
    let f = Fixture::start_with_config(
        "berth-e2e-runtimes",
        &format!(
            "[runtimes.logged]\nbinary_name = \"{}\"\n",
            wrapper.display()
        ),
    );

    let out = f.run(
        &["--runtime", "logged"],
        "named-rt",
        &["echo", "via the named runtime"],
    );
    f.assert_exit(&out, 0, "ctr run --rm --runtime logged");
    assert_eq!(stdout(&out), "via the named runtime\n");
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    for op in ["create", "start", "delete"] {
        assert!(
            log.lines().any(|l| l.split_whitespace().any(|w| w == op)),
            "the configured binary was not asked to {op}:\n{log}"
        );
    }

    // The default runtime is still there, and an unknown name is refused with its reason.
    assert_eq!(f.run_ok("default-rt", &["echo", "ok"]), "ok\n");
    let out = f.run(&["--runtime", "nosuch"], "unknown-rt", &["true"]);
    assert!(!out.status.success(), "an unknown runtime ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not configured"), "{stderr}");
    // Nothing is left of it: no task, and ctr's --rm removed the container.
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
    assert_eq!(f.ctr(&["containers", "ls", "-q"]).trim(), "");
}

#[test]
fn a_runtime_with_a_shim_cgroup_puts_each_shim_there() {
    // containerd's runc option shim_cgroup (the CRI's pod cgroup): the shim moves itself there,
    // the cgroup made if missing; the container's own cgroup is runc's, as before.
    let cgroup = format!("/berth-e2e-shimcg-{}", std::process::id());
    let f = Fixture::start_with_config(
        "berth-e2e-shimcg",
        &format!("[runtimes.incg]\nshim_cgroup = \"{cgroup}\"\n"),
    );
    f.run_d_with(&["--runtime", "incg"], "shimcg-d", &["sleep", "1000"]);
    let shim = shim_of(f.d.dir.path(), "shimcg-d").expect("the shim of shimcg-d");
    let dirs = berth_testkit::cgroups::existing(&cgroup).expect("the shim cgroup");
    assert!(!dirs.is_empty(), "{cgroup} was not made");
    for dir in &dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        assert!(
            procs.lines().any(|p| p == shim.to_string()),
            "shim {shim} is not in {}: {procs:?}",
            dir.display()
        );
    }
    f.remove("shimcg-d");
    // The shim is gone, so its cgroup can go.
    berth_testkit::cgroups::remove(&cgroup).expect("remove the shim cgroup");
}

#[test]
fn runc_options_reach_runc() {
    // ctr run --no-pivot sends containerd.runc.v1.Options{no_pivot_root} with the task; the
    // shim runs `runc create --no-pivot`, and the container still runs.
    let f = Fixture::start("berth-e2e-runcopts");
    let out = f.run(&["--no-pivot"], "nopivot-rm", &["echo", "unpivoted"]);
    f.assert_exit(&out, 0, "ctr run --rm --no-pivot");
    assert_eq!(stdout(&out), "unpivoted\n");
    f.run_d_with(&["--no-pivot"], "nopivot-d", &["sleep", "1000"]);
    let shim = shim_of(f.d.dir.path(), "nopivot-d").expect("the shim of nopivot-d");
    let args = cmdline(shim).unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--no-pivot-root"),
        "the shim was not told --no-pivot-root: {args:?}"
    );
    // Without the flag, no such option.
    f.run_d("pivot-d", &["sleep", "1000"]);
    let shim = shim_of(f.d.dir.path(), "pivot-d").expect("the shim of pivot-d");
    assert!(!cmdline(shim)
        .unwrap_or_default()
        .iter()
        .any(|a| a == "--no-pivot-root"));
    f.remove("nopivot-d");
    f.remove("pivot-d");
}

#[test]
fn run_with_crun() {
    if !on_path("crun") {
        skip_unless_ci(
            "tasks::run_with_crun",
            "crun is not installed (scripts/deps.sh installs Debian's crun)",
        );
        return;
    }
    let f = Fixture::start("berth-e2e-crun");
    let out = f.run(&["--runc-binary", "crun"], "crun-1", &["echo", "hi"]);
    if hybrid_cgroups_with_v2_controllers() {
        // crun refuses such hosts ("cgroups in hybrid mode not supported"), as it would under
        // containerd. Its own refusal still proves berthd ran crun rather than runc; and the failed
        // create must leave nothing behind.
        skip(
            "tasks::run_with_crun (a container under crun)",
            "crun refuses this host's hybrid cgroups (v1, with controllers on the v2 hierarchy); \
             checked only that berthd ran crun and cleaned up after its refusal",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("hybrid mode not supported"),
            "expected crun's refusal: {stderr}"
        );
        assert!(f.tasks().is_empty(), "{:?}", f.tasks());
        assert_eq!(f.ctr(&["containers", "ls", "-q"]).trim(), "");
        assert_eq!(mount_points_under(f.d.dir.path()), Vec::<PathBuf>::new());
        assert!(shims(f.d.dir.path()).is_empty());
        return;
    }
    f.assert_exit(&out, 0, "ctr run --rm --runc-binary crun");
    assert_eq!(stdout(&out), "hi\n");

    // The shim was told to use crun, not runc.
    let pid = f.run_d_with(&["--runc-binary", "crun"], "crun-2", &["sleep", "1000"]);
    let shim = shim_of(f.d.dir.path(), "crun-2").expect("the shim of crun-2");
    let args = cmdline(shim).unwrap_or_default();
    assert!(
        args.iter().any(|a| a.ends_with("crun")),
        "crun-2's shim does not name crun: {args:?}"
    );
    assert!(alive(pid));
    f.remove("crun-2");
}

/// cgroup v1 with controllers enabled on the v2 ("unified") hierarchy, which crun refuses.
fn hybrid_cgroups_with_v2_controllers() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty())
}

// =============================================================================================
// 5. inside the container
// =============================================================================================

#[test]
fn the_container_is_isolated() {
    let f = Fixture::start("berth-e2e-inside");
    let g = Grpc::connect(&f);

    // ctr 1.6 has no --hostname: set the spec's hostname through Containers.Update, then start.
    f.ctr(&[
        "containers",
        "create",
        IMAGE,
        "in-host",
        "busybox",
        "hostname",
    ]);
    g.update_spec("in-host", |spec| spec["hostname"] = serde_json::json!("h1"));
    let out = f.ctr(&["tasks", "start", "in-host"]);
    assert_eq!(out.trim(), "h1");
    f.ctr(&["containers", "rm", "in-host"]);

    // Its own pid namespace: the shell is PID 1.
    assert_eq!(f.run_ok("in-pid", &["sh", "-c", "echo $$"]).trim(), "1");

    // Its own network namespace: only the loopback.
    let dev = f.run_ok("in-net", &["cat", "/proc/net/dev"]);
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");

    // No descriptor of berthd, the shim or runc leaks into the container (runc CVE-2024-21626):
    // ls sees its stdio and the directory it is reading (3).
    let fds = f.run_ok("in-fds", &["busybox", "ls", "/proc/self/fd"]);
    let fds: BTreeSet<&str> = fds.split_whitespace().collect();
    assert_eq!(fds, BTreeSet::from(["0", "1", "2", "3"]));

    // The same seen from the host, for a long-running init: exactly 0, 1, 2, none of them a file
    // of the daemon's.
    let pid = f.run_d("in-init", &["sleep", "1000"]);
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read the init's fds");
    let mut fds = BTreeMap::new();
    for e in dir.flatten() {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        fds.insert(
            e.file_name().to_string_lossy().into_owned(),
            target.to_string_lossy().into_owned(),
        );
    }
    assert_eq!(
        fds.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0", "1", "2"],
        "{fds:?}"
    );
    let daemon_dir = f.d.dir.path().to_string_lossy().into_owned();
    assert!(
        fds.values().all(|t| !t.contains(&daemon_dir)),
        "the init holds files of the daemon: {fds:?}"
    );
    f.remove("in-init");
}

// =============================================================================================
// 6. user namespace
// =============================================================================================

#[test]
fn user_namespace_maps_root_to_an_unprivileged_range() {
    let f = Fixture::start("berth-e2e-userns");
    // The container's root (uid 100000 on the host) must traverse the path to its bundle, as it
    // can under containerd's 0711 /run/containerd; the harness's temp dir is 0700.
    std::fs::set_permissions(
        f.d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod the daemon's directory");
    let maps = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    let out = f.run(&maps, "userns-map", &["cat", "/proc/self/uid_map"]);
    f.assert_exit(&out, 0, "ctr run --uidmap … cat /proc/self/uid_map");
    let map: Vec<String> = stdout(&out)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(map, ["0", "100000", "65536"], "{}", stdout(&out));

    let pid = f.run_d_with(&maps, "userns-sleep", &["sleep", "1000"]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let ids = |key: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(ids("Uid:"), ["100000"; 4], "{status}");
    assert_eq!(ids("Gid:"), ["100000"; 4], "{status}");
    f.remove("userns-sleep");
}

// =============================================================================================
// 7. events
// =============================================================================================

#[test]
fn task_events_are_published() {
    let f = Fixture::start("berth-e2e-events");
    let ns = f.ns;
    let mut ev = Events::start(&f.d);

    // run --rm: create, start, exit, delete, in this order.
    f.run_ok("ev-run", &["sh", "-c", "exit 0"]);
    let create = ev.expect("/tasks/create", |e| e.is(ns, "/tasks/create", "ev-run"));
    let start = ev.expect("/tasks/start", |e| e.is(ns, "/tasks/start", "ev-run"));
    let exit = ev.expect("/tasks/exit", |e| e.is(ns, "/tasks/exit", "ev-run"));
    let delete = ev.expect("/tasks/delete", |e| e.is(ns, "/tasks/delete", "ev-run"));
    assert!(
        create < start && start < exit && exit < delete,
        "out of order: create {create}, start {start}, exit {exit}, delete {delete}"
    );
    let pid = ev.seen[start].body["pid"].as_u64().unwrap_or_default();
    assert!(pid > 0, "{:?}", ev.seen[start]);
    assert_eq!(ev.seen[create].body["pid"].as_u64(), Some(pid));
    assert_eq!(ev.seen[exit].body["id"], "ev-run", "{:?}", ev.seen[exit]);
    assert_eq!(ev.seen[exit].body["pid"].as_u64(), Some(pid));

    // exec: added, started, and the exec's own exit.
    f.run_d("ev-long", &["sleep", "1000"]);
    let out = f.ctr_raw(&[
        "tasks",
        "exec",
        "--exec-id",
        "ev-x1",
        "ev-long",
        "sh",
        "-c",
        "exit 2",
    ]);
    f.assert_exit(&out, 2, "ctr tasks exec ev-x1");
    let added = ev.expect("/tasks/exec-added", |e| {
        e.is(ns, "/tasks/exec-added", "ev-long") && e.body["exec_id"] == "ev-x1"
    });
    let started = ev.expect("/tasks/exec-started", |e| {
        e.is(ns, "/tasks/exec-started", "ev-long") && e.body["exec_id"] == "ev-x1"
    });
    let exec_exit = ev.expect("/tasks/exit of the exec", |e| {
        e.is(ns, "/tasks/exit", "ev-long") && e.body["id"] == "ev-x1"
    });
    assert!(added < started && started < exec_exit);
    assert_eq!(ev.seen[exec_exit].body["exit_status"].as_u64(), Some(2));

    // pause and resume.
    f.ctr(&["tasks", "pause", "ev-long"]);
    ev.expect("/tasks/paused", |e| e.is(ns, "/tasks/paused", "ev-long"));
    f.ctr(&["tasks", "resume", "ev-long"]);
    ev.expect("/tasks/resumed", |e| e.is(ns, "/tasks/resumed", "ev-long"));

    // kill: the init's exit, with 137.
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "ev-long"]);
    let exit = ev.expect("/tasks/exit of ev-long", |e| {
        e.is(ns, "/tasks/exit", "ev-long") && e.body["id"] == "ev-long"
    });
    assert_eq!(ev.seen[exit].body["exit_status"].as_u64(), Some(137));
    f.remove("ev-long");
    ev.expect("/tasks/delete of ev-long", |e| {
        e.is(ns, "/tasks/delete", "ev-long")
    });
}

#[test]
fn a_create_with_the_start_header_runs_the_task_in_one_call() {
    // berth's `berth-start-on-create: true`: created and started by one runc command; the
    // events are those of Create and Start, in that order; a bad value changes nothing.
    let f = Fixture::start("berth-e2e-startcreate");
    let ns = f.ns;
    let g = Grpc::connect(&f);
    let mut ev = Events::start(&f.d);
    f.ctr(&["containers", "create", IMAGE, "sc-run", "sleep", "1000"]);
    let with_header = |value: &'static str| {
        let mut c = g.tasks.clone();
        let mut req = g.req(CreateTaskRequest {
            container_id: "sc-run".into(),
            rootfs: g.mounts("sc-run"),
            ..Default::default()
        });
        req.metadata_mut()
            .insert(berth_api::START_ON_CREATE_HEADER, value.parse().unwrap());
        g.block("Tasks.Create", async move { c.create(req).await })
    };
    let err = with_header("yes").expect_err("a header value that is not a bool");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());

    let pid = with_header("true").expect("create and start").pid;
    let p = g.get("sc-run", "").expect("Tasks.Get");
    assert_eq!((p.pid, p.status), (pid, ProcessStatus::Running as i32));
    let created = ev.expect("/tasks/create of sc-run", |e| {
        e.is(ns, "/tasks/create", "sc-run")
    });
    let started = ev.expect("/tasks/start of sc-run", |e| {
        e.is(ns, "/tasks/start", "sc-run") && e.body["pid"] == pid
    });
    assert!(created < started, "{:?}", ev.seen);
    // Already running: a Start is a wrong transition.
    let err = g.start("sc-run", "").expect_err("start of a running task");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    g.kill("sc-run", 9).expect("kill");
    assert_eq!(g.wait("sc-run", "").expect("wait").exit_status, 137);
    g.delete("sc-run").expect("delete");
    f.ctr(&["containers", "rm", "sc-run"]);
}

#[test]
fn out_of_memory_is_published() {
    let f = Fixture::start("berth-e2e-oom");
    let ns = f.ns;
    let mut ev = Events::start(&f.d);
    // The shell holds the whole substitution in memory: far past the 16 MiB limit.
    let out = f.run(
        &["--memory-limit", "16777216"],
        "oom-1",
        &[
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    assert!(
        !stdout(&out).contains("survived"),
        "the memory limit was not applied: {}",
        stdout(&out)
    );
    ev.expect("/tasks/oom", |e| e.is(ns, "/tasks/oom", "oom-1"));
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
}

// =============================================================================================
// 8. wrong transitions and bad input
// =============================================================================================

#[test]
fn wrong_transitions_and_bad_input_are_refused_and_change_nothing() {
    let f = Fixture::start("berth-e2e-codes");
    let g = Grpc::connect(&f);
    f.ctr(&["containers", "create", IMAGE, "codes-a", "sleep", "1000"]);
    f.ctr(&[
        "containers",
        "create",
        IMAGE,
        "codes-b",
        // `containers create` reorders flags (`-c` would be ctr's --config) up to a `--`.
        "--",
        "sh",
        "-c",
        "exit 0",
    ]);

    // Nothing there yet.
    for id in ["codes-a", "codes-none"] {
        assert_code(&format!("Get {id}"), g.get(id, ""), Code::NotFound);
        assert_code(&format!("Kill {id}"), g.kill(id, SIGKILL), Code::NotFound);
        assert_code(&format!("Start {id}"), g.start(id, ""), Code::NotFound);
    }
    assert_code(
        "Create for a container that does not exist",
        g.create_with("codes-none", g.mounts("codes-a")),
        Code::NotFound,
    );
    assert_code(
        "Get after the failed Create",
        g.get("codes-none", ""),
        Code::NotFound,
    );

    // Rootfs mounts that cannot be mounted: refused, and no bundle, socket dir or mount left.
    let bogus = vec![Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        options: vec!["lowerdir=/nonexistent/berth-e2e".into()],
        ..Default::default()
    }];
    let err = g
        .create_with("codes-a", bogus)
        .expect_err("Create with unmountable rootfs");
    assert_ne!(err.code(), Code::Ok);
    assert_code("Get after it", g.get("codes-a", ""), Code::NotFound);
    let state = f.d.state();
    assert!(
        !state.join("tasks").join(f.ns).join("codes-a").exists(),
        "bundle left behind"
    );
    let sockets: Vec<_> = std::fs::read_dir(state.join("s"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(sockets.is_empty(), "socket dirs left behind: {sockets:?}");
    assert_eq!(mount_points_under(f.d.dir.path()), Vec::<PathBuf>::new());

    // Created.
    let pid = g.create("codes-a").expect("Tasks.Create").pid;
    assert!(pid > 0);
    let check = |want: ProcessStatus, after: &str| {
        let p = g.get("codes-a", "").expect("Tasks.Get");
        assert_eq!(status_of(&p), want, "after {after}: {p:?}");
        assert_eq!(p.pid, pid, "after {after}: {p:?}");
    };
    check(ProcessStatus::Created, "Create");
    assert_code(
        "Create of a task that exists",
        g.create("codes-a"),
        Code::AlreadyExists,
    );
    check(ProcessStatus::Created, "the second Create");

    // Running.
    assert_eq!(g.start("codes-a", "").expect("Tasks.Start"), pid);
    check(ProcessStatus::Running, "Start");
    assert_code(
        "Start of a running task",
        g.start("codes-a", ""),
        Code::FailedPrecondition,
    );
    check(ProcessStatus::Running, "the second Start");
    assert_code(
        "Delete of a running task",
        g.delete("codes-a"),
        Code::FailedPrecondition,
    );
    check(ProcessStatus::Running, "Delete");
    assert!(alive(pid), "Delete of a running task killed it");

    // Execs: a duplicate id, invalid ids.
    g.exec("codes-a", "x1", &["sleep", "1"])
        .expect("Tasks.Exec");
    let x1 = g.get("codes-a", "x1").expect("Get of the exec");
    assert_eq!(status_of(&x1), ProcessStatus::Created, "{x1:?}");
    assert_eq!(x1.id, "x1");
    assert_code(
        "Exec with an exec id already used",
        g.exec("codes-a", "x1", &["sleep", "2"]),
        Code::AlreadyExists,
    );
    for bad in ["", "bad/id", "../x", "a b", &"x".repeat(77)] {
        assert_code(
            &format!("Exec with exec id {bad:?}"),
            g.exec("codes-a", bad, &["true"]),
            Code::InvalidArgument,
        );
    }
    let x1 = g.get("codes-a", "x1").expect("Get of the exec");
    assert_eq!(status_of(&x1), ProcessStatus::Created, "{x1:?}");
    check(ProcessStatus::Running, "the refused execs");
    g.delete_process("codes-a", "x1")
        .expect("DeleteProcess of x1");
    assert_code(
        "Get of the deleted exec",
        g.get("codes-a", "x1"),
        Code::NotFound,
    );

    // Stopped.
    g.create("codes-b").expect("Tasks.Create codes-b");
    g.start("codes-b", "").expect("Tasks.Start codes-b");
    assert_eq!(g.wait("codes-b", "").expect("Wait codes-b").exit_status, 0);
    assert_code(
        "Pause of a stopped task",
        g.pause("codes-b"),
        Code::FailedPrecondition,
    );
    let b = g.get("codes-b", "").expect("Get codes-b");
    assert_eq!(status_of(&b), ProcessStatus::Stopped, "{b:?}");
    let deleted = g.delete("codes-b").expect("Delete codes-b");
    assert_eq!(deleted.exit_status, 0);
    assert_code("Get after Delete", g.get("codes-b", ""), Code::NotFound);
    assert_code(
        "Kill after Delete",
        g.kill("codes-b", SIGKILL),
        Code::NotFound,
    );
    assert_code("Delete after Delete", g.delete("codes-b"), Code::NotFound);

    // codes-a survived all of it.
    check(ProcessStatus::Running, "everything");
    g.kill("codes-a", SIGKILL).expect("Kill codes-a");
    assert_eq!(
        g.wait("codes-a", "").expect("Wait codes-a").exit_status,
        137
    );
    let deleted = g.delete("codes-a").expect("Delete codes-a");
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 137));
    f.ctr(&["containers", "rm", "codes-a", "codes-b"]);
}

// =============================================================================================
// 9. daemon restart
// =============================================================================================

#[test]
fn tasks_survive_a_daemon_restart_in_their_true_states() {
    let mut f = Fixture::start("berth-e2e-restart");
    let dir = f.d.dir.path().to_path_buf();

    let g = Grpc::connect(&f);
    f.ctr(&["containers", "create", IMAGE, "rs-created", "sleep", "1000"]);
    let created = g.create("rs-created").expect("Tasks.Create rs-created").pid;
    drop(g);
    let running = f.run_d("rs-running", &["sleep", "1000"]);
    let paused = f.run_d("rs-paused", &["sleep", "1000"]);
    f.ctr(&["tasks", "pause", "rs-paused"]);
    f.run_d("rs-exited", &["sh", "-c", "exit 7"]);
    f.wait_status("rs-exited", "STOPPED");
    let doomed = f.run_d("rs-deadshim", &["sleep", "1000"]);
    let late = f.run_d("rs-late", &["sh", "-c", "sleep 2; exit 5"]);
    let before = f.tasks();
    assert_eq!(before["rs-created"].status, "CREATED", "{before:?}");
    assert_eq!(before["rs-paused"].status, "PAUSED", "{before:?}");

    f.d.kill9();
    // A shim that dies while the daemon is down (its container lives on).
    let shim = shim_of(&dir, "rs-deadshim").expect("the shim of rs-deadshim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    // The short one exits while nobody listens but its shim.
    wait_for(Duration::from_secs(10), "rs-late to exit", || {
        if alive(late) {
            Err(format!("{late} alive"))
        } else {
            Ok(())
        }
    });
    wait_for(Duration::from_secs(5), "the shim to die", || {
        if alive(shim) {
            Err(format!("{shim} alive"))
        } else {
            Ok(())
        }
    });

    let t = Instant::now();
    f.d.spawn();
    let startup = t.elapsed();
    let ready = Instant::now();
    let want: BTreeMap<&str, &str> = [
        ("rs-created", "CREATED"),
        ("rs-running", "RUNNING"),
        ("rs-paused", "PAUSED"),
        ("rs-exited", "STOPPED"),
        ("rs-late", "STOPPED"),
    ]
    .into();
    let states = |tasks: &BTreeMap<String, TaskRow>| -> BTreeMap<String, String> {
        tasks
            .iter()
            .map(|(id, row)| (id.clone(), row.status.clone()))
            .collect()
    };
    let mut seen = BTreeMap::new();
    loop {
        // `try_ctr`: right after the socket appears the daemon may still refuse; keep asking.
        if let Ok(out) = f.try_ctr(&["tasks", "ls"]) {
            seen = parse_tasks(&out);
            let got = states(&seen);
            if got.len() == want.len()
                && want
                    .iter()
                    .all(|(id, st)| got.get(*id).map(String::as_str) == Some(*st))
            {
                break;
            }
        }
        assert!(
            ready.elapsed() < Duration::from_secs(1),
            "1 s after the restarted daemon served, tasks ls says {seen:?}; want {want:?} \
             (rs-deadshim, whose shim died, cleaned up)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        startup < Duration::from_secs(5),
        "the daemon took {startup:?} to serve after a restart with a dead shim"
    );
    for (id, pid) in [
        ("rs-created", created),
        ("rs-running", running),
        ("rs-paused", paused),
    ] {
        assert_eq!(seen[id].pid, pid, "{id} changed pid across the restart");
    }

    // The dead shim's container is cleaned up: its process is gone, and so is its task; the
    // container record stays for ctr to remove.
    wait_for(
        Duration::from_secs(5),
        "rs-deadshim's sleep to be killed",
        || {
            if alive(doomed) {
                Err(format!("{doomed} still alive"))
            } else {
                Ok(())
            }
        },
    );
    // While the daemon cleans up in the background, the task answers Unavailable (never a
    // premature NotFound, on which ctr would remove a snapshot still mounted); then NotFound.
    let g = Grpc::connect(&f);
    wait_for(
        Duration::from_secs(5),
        "rs-deadshim's task to be gone",
        || match g.get("rs-deadshim", "") {
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) if s.code() == Code::Unavailable => Err(format!("still cleaning: {s:?}")),
            other => panic!("Get rs-deadshim after its shim died: {other:?}"),
        },
    );
    // Its rootfs is unmounted (the daemon may finish that in the background; allow it time).
    let t = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "rs-deadshim's rootfs to be unmounted",
        || {
            let mounted: Vec<PathBuf> = mount_points_under(&dir)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("rs-deadshim"))
                .collect();
            if mounted.is_empty() {
                Ok(())
            } else {
                Err(format!("still mounted: {mounted:?}"))
            }
        },
    );
    eprintln!(
        "rs-deadshim's rootfs unmounted {:?} after the check began",
        t.elapsed()
    );

    // Exit statuses recorded before and during the downtime.
    assert_eq!(
        g.wait("rs-exited", "").expect("Wait rs-exited").exit_status,
        7
    );
    assert_eq!(g.wait("rs-late", "").expect("Wait rs-late").exit_status, 5);
    for (id, code) in [("rs-exited", 7), ("rs-late", 5)] {
        let out = f.ctr_raw(&["tasks", "delete", id]);
        f.assert_exit(&out, 0, &format!("ctr tasks delete {id}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("exit code {code}")),
            "tasks delete {id} did not report {code}: {stderr}"
        );
    }

    // The live ones are still driven: exec, kill, resume, delete.
    let out = f.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "after",
        "rs-running",
        "echo",
        "ok",
    ]);
    assert_eq!(out, "ok\n");
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "rs-running"]);
    assert_eq!(
        g.wait("rs-running", "")
            .expect("Wait rs-running")
            .exit_status,
        137
    );
    f.ctr(&["tasks", "resume", "rs-paused"]);
    assert_eq!(f.task("rs-paused").expect("listed").status, "RUNNING");
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "rs-paused"]);
    assert_eq!(
        g.wait("rs-paused", "").expect("Wait rs-paused").exit_status,
        137
    );
    g.start("rs-created", "")
        .expect("Start of the task created before the restart");
    assert_eq!(f.task("rs-created").expect("listed").status, "RUNNING");
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "rs-created"]);
    assert_eq!(
        g.wait("rs-created", "")
            .expect("Wait rs-created")
            .exit_status,
        137
    );
    for id in ["rs-running", "rs-paused", "rs-created"] {
        f.ctr(&["tasks", "delete", id]);
    }
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
    for id in [
        "rs-created",
        "rs-running",
        "rs-paused",
        "rs-exited",
        "rs-late",
        "rs-deadshim",
    ] {
        f.ctr(&["containers", "rm", id]);
    }
    assert!(shims(&dir).is_empty(), "{:?}", shims(&dir));
    assert!(cgroup_pids(f.ns).is_empty(), "{:?}", cgroup_pids(f.ns));
    assert!(
        container_cgroups(f.ns).is_empty(),
        "{:?}",
        container_cgroups(f.ns)
    );
    assert_eq!(mount_points_under(&dir), Vec::<PathBuf>::new());
    let left = files_naming(&f.d.state(), "rs-");
    assert!(left.is_empty(), "task state remains: {left:?}");
}

/// Paths under `dir` whose file name starts with `needle` (bundles, sockets, runc state…): the
/// test's container ids do, its namespace (`berth-e2e-<test>-<token>`) does not.
fn files_naming(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with(needle) {
                found.push(path.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            }
        }
    }
    found
}

// =============================================================================================
// 10. leaks
// =============================================================================================

fn fd_targets(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read berthd's fds")
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    fds.sort();
    fds
}

#[test]
fn a_stopped_shim_neither_blocks_start_nor_loses_its_container() {
    let mut f = Fixture::start("berth-e2e-hung");
    let dir = f.d.dir.path().to_path_buf();
    let frozen = f.run_d("hung-frozen", &["sleep", "1000"]);
    let fine = f.run_d("hung-fine", &["sleep", "1000"]);
    let shim = shim_of(&dir, "hung-frozen").expect("the shim of hung-frozen");
    let signal = |s| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim as i32), s).expect("signal the shim")
    };

    f.d.kill9();
    // A shim that cannot answer (stopped, or busy in a long runc call) when the daemon returns.
    signal(nix::sys::signal::Signal::SIGSTOP);
    let t = Instant::now();
    f.d.spawn();
    let ready = t.elapsed();
    assert!(
        ready < Duration::from_secs(3),
        "a stopped shim held up start for {ready:?}"
    );
    assert_eq!(f.task("hung-fine").map(|r| r.pid), Some(fine));
    // Not answering is not dead: its container is not killed, and the task is Unavailable (retry
    // later), not NotFound (gone).
    let g = Grpc::connect(&f);
    assert_code(
        "Get hung-frozen",
        g.get("hung-frozen", ""),
        Code::Unavailable,
    );
    assert!(alive(frozen), "the frozen shim's container was killed");

    signal(nix::sys::signal::Signal::SIGCONT);
    wait_for(
        Duration::from_secs(10),
        "hung-frozen to be adopted",
        || match g.get("hung-frozen", "") {
            Ok(p) if p.pid == frozen && status_of(&p) == ProcessStatus::Running => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    f.remove("hung-frozen");
    f.remove("hung-fine");
}

#[test]
fn a_hundred_runs_leak_nothing() {
    let f = Fixture::start("berth-e2e-leak");
    let dir = f.d.dir.path().to_path_buf();
    let berthd = f.d.pid();
    let mounts_before = mounts_mentioning(&dir);
    let fds_before = fd_targets(berthd);

    for i in 0..100 {
        let id = format!("leak-{i}");
        let out = f.run(&[], &id, &["/bin/true"]);
        f.assert_exit(&out, 0, &format!("ctr run --rm {id} /bin/true"));
    }

    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
    assert_eq!(f.ctr(&["containers", "ls", "-q"]).trim(), "");
    assert_eq!(
        mounts_mentioning(&dir),
        mounts_before,
        "mounts under the daemon's directory changed"
    );
    assert!(shims(&dir).is_empty(), "shims remain: {:?}", shims(&dir));
    let strays = processes_naming(&dir, berthd);
    assert!(strays.is_empty(), "processes remain: {strays:?}");
    assert!(
        cgroup_pids(f.ns).is_empty(),
        "container processes remain: {:?}",
        cgroup_pids(f.ns)
    );
    assert!(
        container_cgroups(f.ns).is_empty(),
        "container cgroups remain: {:?}",
        container_cgroups(f.ns)
    );
    let left = files_naming(&f.d.state(), "leak-");
    assert!(left.is_empty(), "task state remains: {left:?}");

    // Slack: ctr's last connection is closed by the server a moment after ctr exits (polled for
    // below), and a few long-lived descriptors may legitimately open on first use rather than at
    // startup (sled may open another segment file; tokio may grow its blocking pool's I/O
    // driver registrations). Four covers these; a per-run leak would show 100.
    const SLACK: usize = 4;
    let mut fds_after = fd_targets(berthd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fds_after.len() > fds_before.len() + SLACK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds_after = fd_targets(berthd);
    }
    assert!(
        fds_after.len() <= fds_before.len() + SLACK,
        "berthd had {} fds before 100 runs and {} after\nbefore: {fds_before:#?}\nafter: {fds_after:#?}",
        fds_before.len(),
        fds_after.len()
    );
}

#[test]
fn a_hung_shim_launch_is_bounded_and_frees_the_task() {
    // A stand-in for berth-shim whose `start` never prints its socket (recording its pid first).
    let tools = tempfile::tempdir().expect("temp dir");
    let pids = tools.path().join("pids");
    let shim = tools.path().join("hung-shim");
    berth_testkit::write_executable(
        &shim,
        &format!("#!/bin/sh\necho $$ >> {}\nexec sleep 600\n", pids.display()),
    );
    let f = Fixture::start_with_config(
        "berth-e2e-hung-shim",
        &format!(
            "[tasks]\nshim = \"{}\"\nshim_start_timeout_ms = 1000\n",
            shim.display()
        ),
    );
    f.ctr(&["containers", "create", IMAGE, "hung-launch", "true"]);
    // Twice: the first attempt's slot is free again, so the second times out too instead of
    // being told the task is still being created.
    for attempt in 0..2 {
        let started = Instant::now();
        let out = f.ctr_raw(&["tasks", "start", "hung-launch"]);
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "attempt {attempt}: a hung shim started"
        );
        assert!(
            stderr.contains("did not finish within"),
            "attempt {attempt}: {stderr}"
        );
        assert!(
            elapsed < Duration::from_secs(8),
            "attempt {attempt}: {elapsed:?}"
        );
    }
    // Each launcher was killed, and nothing of the task is left.
    let launched = std::fs::read_to_string(&pids).unwrap_or_default();
    assert_eq!(launched.lines().count(), 2, "{launched}");
    for pid in launched.lines() {
        let pid: u32 = pid.trim().parse().expect("pid");
        wait_for(PATIENCE, "the hung launcher to be gone", || {
            match alive(pid) {
                true => Err(format!("{pid} still runs")),
                false => Ok(()),
            }
        });
    }
    assert!(f.tasks().is_empty(), "{:?}", f.tasks());
    f.ctr(&["containers", "rm", "hung-launch"]);
}
