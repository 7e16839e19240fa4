//! The image and task part of a trial (`--tasks`): one more client, driving berthd with Debian's
//! `ctr` 1.6 as a user would, in its own namespace: image pulls with unpack from a loopback
//! registry (Debian's docker-registry, started once per run and filled by skopeo), image
//! removals, and `ctr run --rm` cycles of the busybox image imported (and unpacked) at the start.
//! Its calls go into the same ledger as the API clients' (an acknowledged pull is an image that
//! must be there, unpacked, after the restart; an acknowledged `run --rm` a container that must be
//! gone). `--kill-shims` kills random shims of the daemon instead of the daemon itself.
//!
//! After every trial, whatever the mode, [`collect_and_check`] deletes what the trial left running,
//! runs a synchronous collection, and checks the disk against the API: every blob file, ingest and
//! snapshot directory is one the daemon lists; no mount under the daemon's directory, no shim, no
//! container process and no container cgroup is left.

use crate::ledger::{Key, Ledger, State};
use crate::workload::SNAPSHOTTER;
use crate::{Result, Rng};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::GetContainerRequest;
use berth::api::services::content::v1::content_client::ContentClient;
use berth::api::services::content::v1::{ListContentRequest, ListStatusesRequest};
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use berth::api::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth::api::services::namespaces::v1::ListNamespacesRequest;
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::ListSnapshotsRequest;
use berth::with_namespace;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The image every trial imports (and ctr unpacks) before its workload starts.
pub const IMAGE: &str = "docker.io/trials/busybox:v1";

/// The namespace of the ctr client: unique to this run of berth-trials, because ctr's specs put a
/// container's cgroup at `/<namespace>/<id>` on the host, which other daemons on the machine share.
pub fn namespace() -> String {
    format!("ctr-{}", std::process::id())
}

/// The busybox image (berth-testkit's, reproducible) as an archive, and what unpacking it makes.
pub struct Fixture {
    pub archive: PathBuf,
    /// The manifest digest: the target of every image made from it.
    pub target: String,
    /// The chain id of its one layer: the committed snapshot an unpack leaves.
    pub chain_id: String,
    pub registry: Option<Registry>,
}

/// Debian's docker-registry on a free loopback port, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>/trials/busybox:v1`, holding the fixture.
    pub reference: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Build the fixture in `dir`; with `pull`, start a registry there and push it (skopeo).
pub fn fixture(dir: &Path, pull: bool) -> Result<Fixture> {
    let a = berth_testkit::image::busybox_oci_archive(dir, IMAGE)
        .map_err(|e| format!("busybox image: {e}"))?;
    let registry = if pull {
        Some(start_registry(dir, &a.path)?)
    } else {
        None
    };
    Ok(Fixture {
        archive: a.path,
        target: a.manifest.digest,
        // One layer: its chain id is its diff id.
        chain_id: a.diff_id,
        registry,
    })
}

fn start_registry(dir: &Path, archive: &Path) -> Result<Registry> {
    let storage = dir.join("registry");
    std::fs::create_dir_all(&storage).map_err(|e| format!("create {}: {e}", storage.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("find a free port: {e}"))?
        .port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .map_err(|e| format!("write {}: {e}", config.display()))?;
    let log = std::fs::File::create(dir.join("registry.log")).map_err(|e| e.to_string())?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start docker-registry (apt-get install docker-registry): {e}"))?;
    let registry = Registry {
        child,
        reference: format!("127.0.0.1:{port}/trials/busybox:v1"),
    };
    // skopeo retries nothing: wait for the listener first.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "docker-registry not listening on {port} after 20 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{}", registry.reference))
        .output()
        .map_err(|e| format!("run skopeo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "skopeo copy to {}: {}",
            registry.reference,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(registry)
}

/// `ctr` against the trial's daemon, in the ctr client's namespace.
/// How long a ctr command may outlive the kill of its daemon. ctr 1.6 can never end by itself
/// then: its pull opens content writers through containerd's `content.OpenWriter`, which retries
/// an Unavailable answer (a locked ref, to it; here a refused connection) forever, while its
/// progress loop prints "active check failed". Its operation is unanswered, as any other.
const CTR_AFTER_KILL: Duration = Duration::from_secs(10);

async fn ctr(
    socket: &Path,
    ns: &str,
    args: &[&str],
    killed: Option<&AtomicBool>,
) -> std::result::Result<String, String> {
    let run = tokio::process::Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .args(["-n", ns])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::pin!(run);
    let mut killed_since: Option<Instant> = None;
    let out = loop {
        tokio::select! {
            out = &mut run => break out.map_err(|e| format!("run ctr: {e}"))?,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if killed.is_some_and(|k| k.load(Ordering::SeqCst)) {
                    let since = *killed_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > CTR_AFTER_KILL {
                        // Dropping `run` kills ctr (kill_on_drop).
                        return Err(format!(
                            "ctr {} still running {CTR_AFTER_KILL:?} after the daemon's kill: stopped",
                            args.join(" ")
                        ));
                    }
                }
            }
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit status only: ctr logs errors of its own that change nothing (a pull's progress
    // display says "active check failed ... context canceled" when it is done).
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ctr {}: {}", args.join(" "), stderr.trim()))
    }
}

/// The ctr client of a trial.
pub struct CtrClient {
    pub socket: PathBuf,
    /// The API, for what ctr's exit status does not say.
    pub ch: Channel,
    pub ns: String,
    pub ledger: Arc<Ledger>,
    pub rng: Rng,
    /// Set once berthd is killed (or, with `--kill-shims`, once the first shim is): failures
    /// after it are expected.
    pub killed: Arc<AtomicBool>,
    /// Set when the client should stop (the shim-kill mode, where the daemon stays up).
    pub stop: Arc<AtomicBool>,
    pub archive: PathBuf,
    pub target: String,
    pub pull: Option<String>,
    /// Notified once the import is answered (or not): the kill's delay counts from there, so
    /// that it falls among pulls and runs rather than always in the import.
    pub imported: Arc<tokio::sync::Notify>,
    /// The ctr command under way (or the last one and how it ended), for the report of a client
    /// that does not stop after the kill.
    pub doing: Arc<std::sync::Mutex<String>>,
    /// The daemon itself is killed (not shims): a ctr command still running `CTR_AFTER_KILL`
    /// after that is stopped.
    pub daemon_killed: bool,
}

impl CtrClient {
    /// `ctr` with `args` in this client's namespace, noted in `doing` while it runs; its
    /// stderr stays there if it fails (a Go stack dump, when the trial SIGQUITs a hung one).
    async fn ctr(&self, args: &[&str]) -> std::result::Result<String, String> {
        let note = |text: String| {
            *self
                .doing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = text;
        };
        note(format!("ctr {}", args.join(" ")));
        let killed = self.daemon_killed.then_some(&*self.killed);
        let out = ctr(&self.socket, &self.ns, args, killed).await;
        note(match &out {
            Ok(_) => format!("nothing (after ctr {})", args.join(" ")),
            Err(e) => format!("nothing (after {e})"),
        });
        out
    }

    /// Import the fixture (ctr unpacks it), then pulls, removals and runs until a call fails
    /// after the kill, or `stop`. Returns the failures that were not the kill.
    pub async fn run(mut self) -> Vec<String> {
        let ns = self.ns.clone();
        let archive = self.archive.display().to_string();
        let image = Key::Image(ns.clone(), IMAGE.into());
        let imported = State::Image {
            target: self.target.clone(),
        };
        let import = self
            .step(&image, imported, &["images", "import", &archive])
            .await;
        self.imported.notify_one();
        if let Err(e) = import {
            return e;
        }
        let (mut pulled, mut pulls, mut removals, mut runs) = (false, 0, 0, 0);
        for i in 0.. {
            if self.stop.load(Ordering::SeqCst) {
                println!("    ctr client: {pulls} pulls, {removals} image removals, {runs} runs --rm answered");
                break;
            }
            let result = match (self.pull.clone(), self.rng.range(0, 6)) {
                (Some(reference), 0 | 1) if !pulled => {
                    let key = Key::Image(ns.clone(), reference.clone());
                    let state = State::Image {
                        target: self.target.clone(),
                    };
                    let r = self
                        .step(&key, state, &["images", "pull", "--plain-http", &reference])
                        .await;
                    pulled = r.is_ok();
                    pulls += usize::from(pulled);
                    r
                }
                (Some(reference), 0) if pulled => {
                    let key = Key::Image(ns.clone(), reference.clone());
                    let r = self
                        .step(&key, State::Gone, &["images", "rm", &reference])
                        .await;
                    pulled = r.is_err();
                    removals += usize::from(!pulled);
                    r
                }
                (_, n) => {
                    // Short tasks and ones that live a while (a shim to kill, a task to find
                    // running at the restart).
                    let id = format!("r{i}");
                    let cmd: &[&str] = if n % 2 == 0 {
                        &["true"]
                    } else {
                        &["sleep", "0.4"]
                    };
                    let key = Key::Container(ns.clone(), id.clone());
                    let mut args = vec!["run", "--rm", IMAGE, id.as_str()];
                    args.extend_from_slice(cmd);
                    // Between the start and the answer the container exists; once answered
                    // it must be gone.
                    self.ledger.begin(&key, State::AnyContainer);
                    match self.ctr(&args).await {
                        // ctr 1.6 defers the container's delete and ignores its error: its
                        // exit status says only how the task ended. Whether the delete was
                        // done is asked of the daemon.
                        Ok(_) => match self.container_gone(&id).await {
                            Ok(true) => {
                                self.ledger.begin(&key, State::Gone);
                                self.ledger.ack(&key);
                                runs += 1;
                                Ok(())
                            }
                            Ok(false) => {
                                Err(self.failed(format!("ctr run --rm {id} left its container")))
                            }
                            Err(e) => Err(self.failed(e)),
                        },
                        Err(e) => Err(self.failed(e)),
                    }
                }
            };
            if let Err(e) = result {
                println!("    ctr client: {pulls} pulls, {removals} image removals, {runs} runs --rm answered");
                return e;
            }
        }
        vec![]
    }

    /// Whether container `id` is gone, as a live daemon answers.
    async fn container_gone(&self, id: &str) -> std::result::Result<bool, String> {
        let got = ContainersClient::new(self.ch.clone())
            .get(with_namespace(
                &self.ns,
                GetContainerRequest { id: id.into() },
            ))
            .await;
        match got {
            Ok(_) => Ok(false),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(true),
            Err(s) => Err(status("get container", s)),
        }
    }

    /// Record, run ctr, settle. `Err` ends the client: with the failure when the daemon was not
    /// killed yet, empty when it was.
    async fn step(
        &mut self,
        key: &Key,
        state: State,
        args: &[&str],
    ) -> std::result::Result<(), Vec<String>> {
        self.ledger.begin(key, state);
        match self.ctr(args).await {
            Ok(_) => {
                self.ledger.ack(key);
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    fn failed(&self, e: String) -> Vec<String> {
        if self.killed.load(Ordering::SeqCst) {
            vec![]
        } else {
            vec![format!("ctr client: refused before the kill: {e}")]
        }
    }
}

/// PIDs of processes whose command line names `dir` (a daemon's shims: their arguments carry its
/// state directory), other than this process.
pub fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Shims of the daemon whose directory is `dir`.
pub fn shims(dir: &Path) -> Vec<i32> {
    processes_naming(dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .next()
                    .is_some_and(|a| a.ends_with(b"berth-shim"))
            })
        })
        .collect()
}

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

/// The container cgroups of namespace `ns` in the v1 pids hierarchy (ctr's `/<ns>/<id>`), and
/// the processes still in them.
fn cgroups_of(ns: &str) -> Vec<(PathBuf, Vec<i32>)> {
    let base = Path::new("/sys/fs/cgroup/pids").join(ns);
    let Ok(entries) = std::fs::read_dir(&base) else {
        return vec![];
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let procs = std::fs::read_to_string(e.path().join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            (e.path(), procs)
        })
        .collect()
}

/// Undo whatever a failed trial left on the host: its shims and container processes killed, its
/// mounts detached. Only this daemon's things: processes naming its directory, cgroups of this
/// run's own namespace.
pub fn force_clean(dir: &Path, ns: &str) {
    for pid in processes_naming(dir) {
        let _ = nix_kill(pid);
    }
    for (_, procs) in cgroups_of(ns) {
        for pid in procs {
            let _ = nix_kill(pid);
        }
    }
    for m in mounts_under(dir) {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    // The next trial reuses the namespace, so the cgroup paths: none may carry over.
    std::thread::sleep(Duration::from_millis(200));
    remove_cgroups(ns);
}

/// Remove this run's (empty) container cgroups at the end, in every v1 hierarchy.
pub fn remove_cgroups(ns: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let base = h.path().join(ns);
        if let Ok(children) = std::fs::read_dir(&base) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(&base);
    }
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    signal(pid, libc::SIGKILL)
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill has no memory preconditions; a gone pid is an error we ignore.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// SIGKILL one random shim of the daemon in `dir`; its pid, if there was one.
pub fn kill_a_shim(dir: &Path, rng: &mut Rng) -> Option<i32> {
    let shims = shims(dir);
    if shims.is_empty() {
        return None;
    }
    let pid = shims[rng.range(0, shims.len() as u64) as usize];
    nix_kill(pid).ok().map(|_| pid)
}

fn status(what: &str, s: tonic::Status) -> String {
    format!("{what}: {:?}: {}", s.code(), s.message())
}

/// After the ledger check: every acknowledged image of the ctr client is unpacked (its layer's
/// committed snapshot is there), then everything the trial left running is deleted, a collection
/// runs, and the disk must hold nothing the daemon does not list, with no mount, shim, container
/// process or cgroup left.
pub async fn collect_and_check(
    ch: Channel,
    dir: &Path,
    root: &Path,
    socket: &Path,
    ns: &str,
    chain_id: &str,
    ledger: &Ledger,
) -> Vec<String> {
    let mut failures = vec![];
    // Unpacked: an image acknowledged (imported or pulled) has its layer's snapshot.
    let acked_images = ledger.snapshot().into_iter().any(|(k, e)| {
        matches!(&k, Key::Image(n, _) if n == ns) && matches!(e.acked(), State::Image { .. })
    });
    if acked_images {
        match snapshot_names(&ch, ns).await {
            Ok(names) if !names.contains(chain_id) => failures.push(format!(
                "{ns}: an image is acknowledged but its layer is not unpacked (no snapshot {chain_id}; have {names:?})"
            )),
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    // What a trial leaves: tasks (reattached after the restart, or whose shim was killed), their
    // containers (and, through ctr, their snapshots), images.
    let tasks = ctr(socket, ns, &["tasks", "ls", "-q"], None).await;
    for id in tasks
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.is_empty())
    {
        if let Err(e) = ctr(socket, ns, &["tasks", "rm", "-f", id], None).await {
            failures.push(format!("cleanup: {e}"));
        }
    }
    let containers = ctr(socket, ns, &["containers", "ls", "-q"], None).await;
    for id in containers
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.is_empty())
    {
        if let Err(e) = ctr(socket, ns, &["containers", "rm", id], None).await {
            failures.push(format!("cleanup: {e}"));
        }
    }
    let images = ctr(socket, ns, &["images", "ls", "-q"], None).await;
    for name in images
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.is_empty())
    {
        if let Err(e) = ctr(socket, ns, &["images", "rm", name], None).await {
            failures.push(format!("cleanup: {e}"));
        }
    }
    // A synchronous collection: delete a lease with `sync`.
    let mut lc = LeasesClient::new(ch.clone());
    let made = lc
        .create(with_namespace(
            ns,
            CreateLeaseRequest {
                id: "collect-now".into(),
                labels: Default::default(),
            },
        ))
        .await;
    let collected = match made {
        Ok(_) => lc
            .delete(with_namespace(
                ns,
                DeleteLeaseRequest {
                    id: "collect-now".into(),
                    sync: true,
                },
            ))
            .await
            .map_err(|s| status("collect (delete lease, sync)", s)),
        Err(s) => Err(status("collect (create lease)", s)),
    };
    if let Err(e) = collected {
        failures.push(e);
        return failures;
    }
    match on_disk_but_unlisted(&ch, root).await {
        Ok(leaks) => failures.extend(leaks),
        Err(e) => failures.push(e),
    }
    // berthd cleans up a task whose shim died in the background (`runc delete`, unmount), and a
    // container whose shim died is reaped by init a moment after it ends: 5 s before calling a
    // mount, a cgroup or a process leaked.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (!mounts_under(dir).is_empty() || !cgroups_of(ns).is_empty()) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mounts = mounts_under(dir);
    if !mounts.is_empty() {
        failures.push(format!("mounts left after the cleanup: {mounts:?}"));
    }
    let shims = shims(dir);
    if !shims.is_empty() {
        failures.push(format!("shims left after the cleanup: pids {shims:?}"));
    }
    for (cg, procs) in cgroups_of(ns) {
        if !procs.is_empty() {
            failures.push(format!(
                "container processes left in {}: {procs:?}",
                cg.display()
            ));
        } else {
            failures.push(format!("container cgroup left: {}", cg.display()));
        }
    }
    failures
}

async fn snapshot_names(ch: &Channel, ns: &str) -> Result<BTreeSet<String>> {
    let mut stream = SnapshotsClient::new(ch.clone())
        .list(with_namespace(
            ns,
            ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.into(),
                filters: vec![],
            },
        ))
        .await
        .map_err(|s| status("list snapshots", s))?
        .into_inner();
    let mut names = BTreeSet::new();
    while let Some(m) = stream
        .message()
        .await
        .map_err(|s| status("list snapshots", s))?
    {
        names.extend(m.info.into_iter().map(|i| i.name));
    }
    Ok(names)
}

/// Names in `dir` (nothing when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Blob files, ingests and snapshot directories on disk that no namespace lists.
async fn on_disk_but_unlisted(ch: &Channel, root: &Path) -> Result<Vec<String>> {
    let namespaces = NamespacesClient::new(ch.clone())
        .list(ListNamespacesRequest::default())
        .await
        .map_err(|s| status("list namespaces", s))?
        .into_inner()
        .namespaces;
    let (mut blobs, mut ingests, mut snapshots) = (BTreeSet::new(), 0usize, 0usize);
    for n in &namespaces {
        let ns = &n.name;
        let mut cc = ContentClient::new(ch.clone());
        let mut stream = cc
            .list(with_namespace(ns, ListContentRequest::default()))
            .await
            .map_err(|s| status("list content", s))?
            .into_inner();
        while let Some(m) = stream
            .message()
            .await
            .map_err(|s| status("list content", s))?
        {
            blobs.extend(m.info.into_iter().map(|i| i.digest));
        }
        ingests += cc
            .list_statuses(with_namespace(ns, ListStatusesRequest::default()))
            .await
            .map_err(|s| status("list ingests", s))?
            .into_inner()
            .statuses
            .len();
        snapshots += snapshot_names(ch, ns).await?.len();
    }
    let mut leaks = vec![];
    for f in entries(&root.join("content/blobs/sha256")) {
        if !blobs.contains(&format!("sha256:{f}")) {
            leaks.push(format!(
                "blob sha256:{f} is on disk after the collection, listed in no namespace"
            ));
        }
    }
    let ingest_dirs = entries(&root.join("content/ingest"));
    if ingest_dirs.len() > ingests {
        leaks.push(format!(
            "{} ingests on disk, {ingests} listed: {ingest_dirs:?}",
            ingest_dirs.len()
        ));
    }
    let snapshot_dirs = entries(&root.join(format!("snapshots/{SNAPSHOTTER}/snapshots")));
    if snapshot_dirs.len() > snapshots {
        leaks.push(format!(
            "{} snapshot directories on disk, {snapshots} snapshots listed: {snapshot_dirs:?}",
            snapshot_dirs.len()
        ));
    }
    Ok(leaks)
}
