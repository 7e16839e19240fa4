//! Fault injection with real parts (issue 15, part 4; hostile-inputs.md F4, F5): a runc wrapper
//! configured as a runtime that refuses create, hangs in start or refuses delete, and a shim
//! SIGKILLed in the middle of an exec. Each time berthd answers with an error that says what
//! failed, leaves no shim, process or mount of the failed task behind, and the next operation
//! works. Each test has its own namespace and daemon (the module rules of tasks.rs).

use super::*;

/// A runc wrapper that fails (or hangs in) the subcommand `fault`, and is runc otherwise.
/// runc's global flags come before the subcommand, so the first argument that is a known
/// subcommand is the one looked at.
fn faulty_runc(dir: &Path, fault: &str, action: &str) -> PathBuf {
    let path = dir.join(format!("runc-{fault}"));
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do\n  case \"$a\" in\n    {fault}) {action} ;;\n    \
         create|start|delete|kill|state|exec|ps|pause|resume|update|events) break ;;\n  esac\n\
         done\nexec runc \"$@\"\n"
    );
    berth_testkit::write_executable(&path, &script);
    path
}

fn runtime_config(name: &str, binary: &Path, extra: &str) -> String {
    format!(
        "{extra}\n[runtimes.{name}]\nbinary_name = \"{}\"\n",
        binary.display()
    )
}

/// Nothing of container `id` is left on the host: no shim, no process naming the daemon's
/// directories other than the daemon, no mount under them.
fn assert_nothing_left(f: &Fixture, id: &str) {
    let dir = f.d.dir.path();
    wait_for(PATIENCE, &format!("{id}'s shim to go"), || {
        match shim_of(dir, id) {
            Some(pid) => Err(format!("shim {pid} of {id} still runs")),
            None => Ok(()),
        }
    });
    let stray: Vec<_> = processes_naming(dir, f.d.pid())
        .into_iter()
        .filter(|(_, args)| !args.iter().any(|a| a.contains("berth-shim")))
        .collect();
    assert!(stray.is_empty(), "processes left behind: {stray:?}");
    let mounts: Vec<_> = mounts_mentioning(dir)
        .into_iter()
        .filter(|m| m.contains(id))
        .collect();
    assert!(mounts.is_empty(), "mounts of {id} left behind: {mounts:?}");
    assert!(
        f.task(id).is_none(),
        "{id} is still a task: {:?}",
        f.task(id)
    );
}

#[test]
fn a_runtime_that_fails_create_leaves_nothing_behind() {
    let tools = tempfile::tempdir().expect("temp dir");
    let runc = faulty_runc(
        tools.path(),
        "create",
        "echo 'injected fault: create refused' >&2; exit 1",
    );
    let f = Fixture::start_with_config(
        "berth-e2e-fault-create",
        &runtime_config("failcreate", &runc, ""),
    );
    let out = f.run(&["--runtime", "failcreate"], "fc", &["true"]);
    assert!(
        !out.status.success(),
        "a task whose runtime refused create ran"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("injected fault: create refused") || stderr.contains("create"),
        "the error does not say create failed: {stderr}"
    );
    assert_nothing_left(&f, "fc");
    // The container record may stay (ctr's --rm only runs after a started task); it goes.
    let _ = f.try_ctr(&["containers", "rm", "fc"]);
    assert_eq!(f.run_ok("fc-next", &["echo", "ok"]), "ok\n");
    // And the same id works once the runtime does.
    assert_eq!(f.run_ok("fc", &["echo", "again"]), "again\n");
}

#[test]
fn a_runtime_that_hangs_in_start_is_cut_off() {
    let tools = tempfile::tempdir().expect("temp dir");
    let runc = faulty_runc(tools.path(), "start", "exec sleep 600");
    let f = Fixture::start_with_config(
        "berth-e2e-fault-start",
        &runtime_config("hangstart", &runc, "[tasks]\nruntime_timeout_ms = 2000\n"),
    );
    let t = Instant::now();
    let out = f.run(&["--runtime", "hangstart"], "hs", &["true"]);
    let took = t.elapsed();
    assert!(!out.status.success(), "a task whose start hung ran");
    assert!(
        took < Duration::from_secs(30),
        "the hung start was not cut off by the runtime timeout: {took:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deadline") || stderr.contains("timed out") || stderr.contains("timeout"),
        "the error does not say the runtime timed out: {stderr}"
    );
    // The task may be left created (runc create succeeded): deleting it through the daemon
    // works and then nothing is left (no sleeping wrapper either).
    if f.task("hs").is_some() {
        let _ = f.try_ctr(&["tasks", "kill", "-s", "SIGKILL", "hs"]);
        f.ctr(&["tasks", "delete", "-f", "hs"]);
    }
    let _ = f.try_ctr(&["containers", "rm", "hs"]);
    assert_nothing_left(&f, "hs");
    let sleepers: Vec<_> = all_pids()
        .into_iter()
        .filter_map(|p| cmdline(p).map(|c| (p, c)))
        .filter(|(_, c)| {
            c.first().is_some_and(|a| a == "sleep") && c.get(1).is_some_and(|a| a == "600")
        })
        .collect();
    assert!(
        sleepers.is_empty(),
        "the hung runtime still runs: {sleepers:?}"
    );
    assert_eq!(f.run_ok("hs-next", &["echo", "ok"]), "ok\n");
}

#[test]
fn a_runtime_that_fails_delete_is_reported_and_retried() {
    let tools = tempfile::tempdir().expect("temp dir");
    let flag = tools.path().join("fail-delete");
    std::fs::write(&flag, "").expect("flag");
    let runc = faulty_runc(
        tools.path(),
        "delete",
        &format!(
            "[ -e {} ] && {{ echo 'injected fault: delete refused' >&2; exit 1; }}",
            flag.display()
        ),
    );
    let f = Fixture::start_with_config(
        "berth-e2e-fault-delete",
        &runtime_config("faildelete", &runc, ""),
    );
    f.ctr(&[
        "run",
        "-d",
        "--runtime",
        "faildelete",
        IMAGE,
        "fd",
        "sleep",
        "1000",
    ]);
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "fd"]);
    f.wait_status("fd", "STOPPED");
    let err = f
        .try_ctr(&["tasks", "delete", "fd"])
        .err()
        .unwrap_or_default();
    // Either the daemon reports the refusal, or it finished the delete itself (runc delete of a
    // stopped container is best effort in containerd too); never a silent half state.
    if !err.is_empty() {
        assert!(err.contains("delete"), "an unclear delete error: {err}");
        assert!(f.task("fd").is_some(), "a failed delete removed the task");
    }
    // Once the runtime works again the delete goes through and nothing is left.
    std::fs::remove_file(&flag).expect("clear the fault");
    if f.task("fd").is_some() {
        f.ctr(&["tasks", "delete", "fd"]);
    }
    f.ctr(&["containers", "rm", "fd"]);
    assert_nothing_left(&f, "fd");
    assert_eq!(f.run_ok("fd-next", &["echo", "ok"]), "ok\n");
}

#[test]
fn a_shim_killed_mid_exec_fails_the_exec_and_the_daemon_stays_healthy() {
    let f = Fixture::start("berth-e2e-fault-exec");
    f.run_d("mx", &["sleep", "1000"]);
    let shim = shim_of(f.d.dir.path(), "mx").expect("the shim of mx");
    let mut exec =
        f.d.ctr_command(
            f.ns,
            &["tasks", "exec", "--exec-id", "e1", "mx", "sleep", "1000"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr tasks exec");
    // The exec runs once the container has a second `sleep 1000` below the shim.
    wait_for(PATIENCE, "the exec to run", || {
        let kids = descendants(&[shim].into());
        let sleeps = kids
            .iter()
            .filter(|p| cmdline(**p).is_some_and(|c| c.first().is_some_and(|a| a == "sleep")))
            .count();
        (sleeps >= 2)
            .then_some(())
            .ok_or(format!("{sleeps} sleeps below the shim"))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the shim");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = exec.try_wait().expect("wait for ctr") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the exec did not end after its shim was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = exec
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    assert!(
        !status.success(),
        "the exec succeeded though its shim was killed: {stderr}"
    );
    // The task is reported (stopped or unknown, not running) and goes with a delete.
    wait_for(PATIENCE, "mx to be reported not running", || {
        match f.task("mx") {
            Some(row) if row.status == "RUNNING" => Err(format!("{row:?}")),
            _ => Ok(()),
        }
    });
    if f.task("mx").is_some() && f.try_ctr(&["tasks", "delete", "mx"]).is_err() {
        f.ctr(&["tasks", "delete", "-f", "mx"]);
    }
    f.ctr(&["containers", "rm", "mx"]);
    assert!(f.d.serves());
    assert_eq!(f.run_ok("mx-next", &["echo", "ok"]), "ok\n");
}

/// The shim SIGKILLed in the middle of Tasks.Create, after berthd mounted the rootfs and before
/// the shim answered `create` (issue 15: `berth-trials --kill-shims` left such a task's rootfs
/// mounted). A runc wrapper kills its parent, the shim, either before running `runc create` (runc
/// then creates the container with nobody to tell) or after it (the container exists, the
/// answer is lost). Either way the create fails, and berthd, which owns the bundle, leaves
/// nothing: no mount under its directory, no process, no container cgroup; the id works again.
#[test]
fn a_shim_killed_during_create_leaves_no_mount_process_or_cgroup() {
    let tools = tempfile::tempdir().expect("temp dir");
    let before = faulty_runc(tools.path(), "create", "kill -9 $PPID");
    let after_dir = tools.path().join("after");
    std::fs::create_dir(&after_dir).expect("wrapper dir");
    let after = faulty_runc(
        &after_dir,
        "create",
        "runc \"$@\"; rc=$?; kill -9 $PPID; exit $rc",
    );
    let config = format!(
        "{}{}",
        runtime_config("killbefore", &before, ""),
        runtime_config("killafter", &after, "")
    );
    let f = Fixture::start_with_config("berth-e2e-fault-shim-create", &config);
    let dir = f.d.dir.path().to_path_buf();
    for (runtime, id) in [("killbefore", "kb"), ("killafter", "ka")] {
        let out = f.run(&["--runtime", runtime], id, &["sleep", "1000"]);
        assert!(
            !out.status.success(),
            "{id}: a task whose shim was killed in create ran: {}",
            stdout(&out)
        );
        wait_for(
            PATIENCE,
            &format!("{id}'s mounts, processes and cgroup to go"),
            || {
                let mounts = mount_points_under(&dir);
                let stray: Vec<_> = processes_naming(&dir, f.d.pid());
                let cgroups: Vec<_> = container_cgroups(f.ns)
                    .into_iter()
                    .filter(|c| c == id)
                    .collect();
                let pids = cgroup_pids(f.ns);
                if mounts.is_empty() && stray.is_empty() && cgroups.is_empty() && pids.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                    "mounts under the daemon's dir: {mounts:?}; processes naming it: {stray:?}; \
                     cgroups: {cgroups:?}; container processes: {pids:?}"
                ))
                }
            },
        );
        assert!(
            f.task(id).is_none(),
            "{id} is still a task: {:?}",
            f.task(id)
        );
        assert!(
            !f.d.state().join("tasks").join(f.ns).join(id).exists(),
            "{id}'s bundle is still there"
        );
        let _ = f.try_ctr(&["containers", "rm", id]);
        // The same id runs once the runtime works.
        assert_eq!(f.run_ok(id, &["echo", "again"]), "again\n");
    }
    assert!(f.d.serves());
}
