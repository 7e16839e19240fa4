//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats and the metrics
//! RPCs through berthd's real CRI socket, over containers running under real runc: the
//! numbers come from their cgroups and move, one read per cgroup answers every call within
//! the sample interval, and the filters select. Needs root and berthd built in this target dir.

mod support;

use berth_api::runtime::v1 as cri;
use std::collections::HashMap;
use std::time::Duration;
use support::Env;

fn cpu(s: &cri::ContainerStats) -> (i64, u64) {
    let c = s.cpu.as_ref().expect("cpu stats");
    (
        c.timestamp,
        c.usage_core_nano_seconds.as_ref().expect("cpu usage").value,
    )
}

fn ids(stats: &[cri::ContainerStats]) -> Vec<String> {
    let mut v: Vec<String> = stats
        .iter()
        .map(|s| s.attributes.as_ref().unwrap().id.clone())
        .collect();
    v.sort();
    v
}

async fn list(env: &Env, filter: Option<cri::ContainerStatsFilter>) -> Vec<cri::ContainerStats> {
    env.cri
        .clone()
        .list_container_stats(cri::ListContainerStatsRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_come_from_the_cgroups_cached_and_filtered() {
    let env = Env::start().await;
    let mut rt = env.cri.clone();
    env.pod("pod-a", &[("app", "a")], false).await;
    env.pod("pod-b", &[("app", "b")], false).await;
    // One container that burns CPU (and writes to its layer), one that sleeps.
    env.container(
        "busy",
        "pod-a",
        &[
            "sh",
            "-c",
            "yes > /tmp/junk & sleep 0.3; kill %1; while :; do :; done",
        ],
        false,
        None,
        &[("tier", "hot")],
    )
    .await;
    env.container(
        "idle",
        "pod-b",
        &["sleep", "3600"],
        false,
        None,
        &[("tier", "cold")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let first = list(&env, None).await;
    assert_eq!(ids(&first), ["busy", "idle"]);
    let busy = first
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().id == "busy")
        .unwrap();
    let (t0, cpu0) = cpu(busy);
    assert!(cpu0 > 0, "a busy loop used no CPU: {busy:?}");
    let mem = busy.memory.as_ref().expect("memory stats");
    assert!(mem.working_set_bytes.as_ref().unwrap().value > 0, "{mem:?}");
    assert!(
        mem.usage_bytes.as_ref().unwrap().value >= mem.working_set_bytes.as_ref().unwrap().value
    );
    let layer = busy.writable_layer.as_ref().expect("writable layer usage");
    assert!(layer.used_bytes.as_ref().unwrap().value > 0, "{layer:?}");
    let attrs = busy.attributes.as_ref().unwrap();
    assert_eq!(attrs.metadata.as_ref().unwrap().name, "name-busy");
    assert_eq!(attrs.labels.get("tier").map(String::as_str), Some("hot"));

    // Within the interval every call is answered by the same read: same timestamp, same value.
    for _ in 0..5 {
        let again = list(&env, None).await;
        let b = again
            .iter()
            .find(|s| s.attributes.as_ref().unwrap().id == "busy")
            .unwrap();
        let (t, c) = cpu(b);
        if t != t0 {
            // The interval passed on a slow machine; the next sample must be newer.
            assert!(t > t0);
            break;
        }
        assert_eq!(c, cpu0);
    }
    let single = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "busy".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(cpu(&single).1 >= cpu0);

    // After the interval: a new sample, more CPU, and a rate.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = list(&env, None).await;
    let b = later
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().id == "busy")
        .unwrap();
    let (t1, cpu1) = cpu(b);
    assert!(t1 > t0 && cpu1 > cpu0, "{t0}/{cpu0} then {t1}/{cpu1}");
    let nano_cores = b
        .cpu
        .as_ref()
        .unwrap()
        .usage_nano_cores
        .as_ref()
        .unwrap()
        .value;
    assert!(
        nano_cores > 50_000_000,
        "a busy loop at {nano_cores} nano cores"
    );

    // Filters: id (prefix too), pod, labels.
    let f = |id: &str, pod: &str, labels: &[(&str, &str)]| {
        Some(cri::ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        })
    };
    assert_eq!(ids(&list(&env, f("idle", "", &[])).await), ["idle"]);
    assert_eq!(ids(&list(&env, f("bu", "", &[])).await), ["busy"]);
    assert_eq!(ids(&list(&env, f("", "pod-b", &[])).await), ["idle"]);
    assert_eq!(
        ids(&list(&env, f("", "", &[("tier", "hot")])).await),
        ["busy"]
    );
    assert!(list(&env, f("", "", &[("tier", "none")])).await.is_empty());
    assert!(list(&env, f("busy", "pod-b", &[])).await.is_empty());

    let missing = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Pods: their containers' sums.
    let pod = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "pod-a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod.linux.as_ref().unwrap();
    assert_eq!(ids(&linux.containers), ["busy"]);
    assert!(
        linux
            .cpu
            .as_ref()
            .unwrap()
            .usage_core_nano_seconds
            .as_ref()
            .unwrap()
            .value
            >= cpu1
    );
    assert!(
        linux
            .process
            .as_ref()
            .unwrap()
            .process_count
            .as_ref()
            .unwrap()
            .value
            >= 1
    );
    let pods = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: String::new(),
                label_selector: [("app".to_string(), "b".to_string())].into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].attributes.as_ref().unwrap().id, "pod-b");

    // cAdvisor's names.
    let descriptors = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ] {
        assert!(descriptors.iter().any(|d| d.name == name), "{name}");
    }
    let metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pod_a = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == "pod-a")
        .unwrap();
    let busy = pod_a
        .container_metrics
        .iter()
        .find(|c| c.container_id == "busy")
        .unwrap();
    let ws = busy
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .unwrap();
    assert!(ws.value.as_ref().unwrap().value > 0);
    assert_eq!(ws.label_values.len(), descriptors[0].label_keys.len());
}

/// The bench figure of issue 14, never run by CI (ignored, and it times nothing it asserts):
/// `cargo test -p berth-cri --test stats -- --ignored --nocapture` prints ListContainerStats
/// latency with `BENCH_CRI_CONTAINERS` (default 100) running containers, each call reading
/// every cgroup afresh (the cache expired) and within the cache interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand"]
async fn bench_list_container_stats() {
    let n: usize = std::env::var("BENCH_CRI_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let env = Env::start().await;
    for p in 0..n.div_ceil(10) {
        env.pod(&format!("bench-pod-{p}"), &[], false).await;
    }
    for i in 0..n {
        env.container(
            &format!("bench-c-{i}"),
            &format!("bench-pod-{}", i / 10),
            &["sleep", "3600"],
            false,
            None,
            &[],
        )
        .await;
    }
    let time = |fresh: bool| {
        let env = &env;
        async move {
            let mut ms = Vec::new();
            for _ in 0..20 {
                if fresh {
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                }
                let t = std::time::Instant::now();
                let stats = list(env, None).await;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(stats.len(), n);
            }
            ms.sort_by(f64::total_cmp);
            (ms[ms.len() / 2], ms[ms.len() - 1])
        }
    };
    let (fresh_med, fresh_max) = time(true).await;
    let (cached_med, cached_max) = time(false).await;
    println!(
        "ListContainerStats, {n} running containers, 20 calls: cgroups read afresh median \
         {fresh_med:.1} ms (max {fresh_max:.1}); within the cache interval median \
         {cached_med:.1} ms (max {cached_max:.1})"
    );
}
