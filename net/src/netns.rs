//! Named network namespaces, made as `ip netns add` makes them so `ip netns list` and
//! `ip netns exec` see them: an empty file under /run/netns with a new namespace bind-mounted on
//! it, /run/netns itself a shared mount so the bind propagates into mount namespaces made
//! later and an unmount here reaches their copies (a copy kept alive elsewhere would keep
//! the namespace, its veth end and its addresses alive).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Error, Result};

/// Where iproute2 looks for named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

// Two threads making /run/netns a mount point at once would stack two binds.
static SETUP: Mutex<()> = Mutex::new(());

fn validate(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 200
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == ".."
    {
        return Err(Error::invalid(format!("invalid netns name {name:?}")));
    }
    Ok(())
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes /run/netns exist and be a shared mount point, as iproute2 does.
fn prepare_dir() -> Result<()> {
    let _guard = SETUP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| Error::io_at("create", dir, e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::sys(format!("bind {NETNS_DIR} onto itself"), e))?;
            mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
                .map_err(|e| Error::sys(format!("make {NETNS_DIR} shared"), e))
        }
        Err(e) => Err(Error::sys(format!("make {NETNS_DIR} shared"), e)),
    }
}

/// The empty file `name` under /run/netns, for a namespace to be bound on (AlreadyExists if the
/// name is taken).
fn placeholder(name: &str) -> Result<PathBuf> {
    validate(name)?;
    prepare_dir()?;
    let path = path_of(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists(format!("netns {name}")),
            _ => Error::io_at("create", &path, e),
        })?;
    Ok(path)
}

/// Names the existing network namespace at `source` (`/proc/PID/ns/net` of the process that
/// made it, e.g. one made inside a pod's user namespace, or `/proc/self/fd/N` of a spare held
/// by [`crate::netns_pool`]) `name`, as [`create`] names a new one, and returns its path. The bind keeps the namespace alive after that process ends.
pub fn bind(name: &str, source: &Path) -> Result<PathBuf> {
    let path = placeholder(name)?;
    bind_onto(&path, source)?;
    Ok(path)
}

/// Binds the namespace at `source` onto the placeholder `path`, which goes if that fails.
fn bind_onto(path: &Path, source: &Path) -> Result<()> {
    mount(
        Some(source),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = std::fs::remove_file(path);
        Error::sys(
            format!("bind {} onto {}", source.display(), path.display()),
            e,
        )
    })
}

/// Creates the named network namespace `name` (AlreadyExists if the name is taken) and returns
/// its path. Only `lo` is in it, up (runc does not bring up the loopback of a netns it is given;
/// done here by the thread already inside, it needs no loopback plugin process).
pub fn create(name: &str) -> Result<PathBuf> {
    let path = placeholder(name)?;
    // A thread of its own enters the new namespace, then ends: no thread that runs anything
    // else ever changes namespace.
    let held = match on_own_thread(enter_new) {
        Ok(held) => held,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    bind_onto(&path, &fd_path(&held))?;
    Ok(path)
}

/// Moves the calling thread into a new network namespace with `lo` up, and returns a
/// close-on-exec fd that holds the namespace after the thread has left it.
pub(crate) fn enter_new() -> Result<OwnedFd> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::sys("unshare(CLONE_NEWNET)", e))?;
    let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
    // std opens close-on-exec.
    let file = std::fs::File::open(&own).map_err(|e| Error::io(format!("open {own}"), e))?;
    loopback_up()?;
    Ok(OwnedFd::from(file))
}

/// The path through which this process reaches what `fd` refers to.
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Runs `f` on a thread of its own that ends with it: the only threads that change network
/// namespace are these.
fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|_| Err(Error::invalid("netns thread panicked")))
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fail = |what: &str| Error::io(format!("{what} of lo"), std::io::Error::last_os_error());
    // SAFETY: socket(2) returns a new fd (owned below) or -1; the ioctls read and write the
    // zeroed ifreq, whose name is "lo" and NUL-terminated, and nothing else.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(fail("socket for the flags"));
        }
        let sock = OwnedFd::from_raw_fd(raw);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(fail("get the flags"));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(fail("set the flags"));
        }
    }
    Ok(())
}

/// Creates the named network namespace `name` owned by a new user namespace with the maps
/// `uid_map` and `gid_map` (`/proc/PID/uid_map` form), and binds that user namespace at
/// `userns_file` for a container to join. A container in its own user namespace can then enter
/// its network namespace — `runc exec` joins the user namespace first, and from there one owned
/// by the host's is out of reach. `lo` is up. Returns the netns path.
pub fn create_in_userns(
    name: &str,
    userns_file: &Path,
    uid_map: &str,
    gid_map: &str,
) -> Result<PathBuf> {
    let path = placeholder(name)?;
    let made = bind_new_namespaces(&path, userns_file, uid_map, gid_map).and_then(|()| {
        let netns = path.clone();
        // A thread of its own enters the namespace (root of the host's user namespace may
        // enter one a child user namespace owns) and brings lo up, then ends.
        on_own_thread(move || {
            let fd = std::fs::File::open(&netns).map_err(|e| Error::io_at("open", &netns, e))?;
            nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::sys(format!("enter {}", netns.display()), e))?;
            loopback_up()
        })
    });
    if let Err(e) = made {
        let _ = remove(&path);
        let _ = remove(userns_file);
        return Err(e);
    }
    Ok(path)
}

/// A short-lived `sleep` unshares a user and a network namespace; the maps are written from
/// here and both namespaces bound (on `netns` and `userns_file`, which outlive it) before it is
/// killed.
fn bind_new_namespaces(
    netns: &Path,
    userns_file: &Path,
    uid_map: &str,
    gid_map: &str,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o000)
        .open(userns_file)
        .map_err(|e| Error::io_at("create", userns_file, e))?;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("infinity")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: unshare(2) is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET).map_err(Into::into)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("start the namespace maker (sleep)", e))?;
    let pid = child.id();
    let bound = (|| -> Result<()> {
        for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
            let at = PathBuf::from(format!("/proc/{pid}/{file}"));
            std::fs::write(&at, map).map_err(|e| Error::io_at("write", &at, e))?;
        }
        for (kind, target) in [("user", userns_file), ("net", netns)] {
            let source = format!("/proc/{pid}/ns/{kind}");
            mount(
                Some(source.as_str()),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::sys(format!("bind {source} onto {}", target.display()), e))?;
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    bound
}

/// Unmounts and removes the namespace at `path`; a missing or unmounted one is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("unmount {}", path.display()), e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_at("remove", path, e)),
    }
}

/// Whether a namespace is mounted at `path` (its file is not just an empty placeholder).
pub fn is_mounted(path: &Path) -> bool {
    // A bind-mounted nsfs file has a different device than the tmpfs holding /run/netns.
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(file), Some(Ok(dir))) => file.dev() != dir.dev(),
        _ => false,
    }
}
