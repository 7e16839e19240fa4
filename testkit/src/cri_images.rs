//! The images critest (sigs.k8s.io/cri-tools v1.37.0) pulls, rebuilt without internet as one OCI
//! image layout: a busybox base from Debian's busybox-static plus the small layer and config each
//! cri-tools Dockerfile (images/) adds, under the names pkg/validate expects. Byte-for-byte
//! reproducible, so a layout that is already pushed is recognised by its index.json.
//!
//! Every image is built for the host's platform only. Where upstream publishes a manifest list
//! (the `images/build` script's multi-arch images) the fixture is an image index holding that one
//! manifest, so a runtime resolves it through the same index path it takes for the real image.

use crate::image::{
    append_dir, append_file, gzip, header, json_bytes, oci_arch, sha256, Blob, CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// cri-tools' own test images (pkg/validate/consts.go `registry`).
const CRI_TOOLS: &str = "gcr.io/k8s-staging-cri-tools";
/// Kubernetes' e2e test images (pkg/framework `DefaultRegistryE2ETestImagesPrefix`).
const E2E: &str = "registry.k8s.io/e2e-test-images";

/// The pause image a CRI runtime that runs a sandbox container is configured with (containerd's
/// `sandbox` image). Not one of critest's `pause:3.9` names: critest removes those, and a runtime
/// removes every tag of an image ID, which would take the sandbox image with it.
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// busybox's image (and Alpine's) users and groups: critest runs as `www-data` and `nobody`.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
bin:x:2:2:bin:/bin:/bin/false\n\
sys:x:3:3:sys:/dev:/bin/false\n\
sync:x:4:100:sync:/bin:/bin/sync\n\
mail:x:8:8:mail:/var/spool/mail:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
operator:x:37:37:Operator:/var:/bin/false\n\
nobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
bin:x:2:\n\
sys:x:3:\n\
adm:x:4:\n\
tty:x:5:\n\
disk:x:6:\n\
wheel:x:10:root\n\
mail:x:12:\n\
www-data:x:33:\n\
users:x:100:\n\
nogroup:x:65534:\n";

/// Stand-ins, as scripts of busybox applets, for the tools critest runs in its containers that
/// Debian's busybox-static leaves out: `pgrep NAME` (the execSync timeout case) and `ipcs -m`
/// (the host IPC cases look for a segment's id in it). Installed only where busybox has no applet.
const TOOL_SCRIPTS: &[(&str, &str)] = &[
    (
        "usr/bin/pgrep",
        r#"#!/bin/sh
# pgrep [-f] PATTERN: the pids whose name (with -f: command line) matches the extended regex.
full=
[ "$1" = -f ] && { full=1; shift; }
found=1
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = $$ ] && continue
  if [ -n "$full" ]; then
    name=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
  else
    read -r name <"$d/comm" 2>/dev/null || continue
  fi
  if printf '%s
' "$name" | grep -qE -- "$1"; then echo "$pid"; found=0; fi
done
exit $found
"#,
    ),
    (
        "usr/bin/ipcs",
        r#"#!/bin/sh
# ipcs -m: the shared memory segments of this IPC namespace, in util-linux's layout.
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
awk 'NR > 1 { printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm
echo
"#,
    ),
];

/// The nginx stand-in: busybox httpd under a process named nginx (`pidof nginx` finds it, as the
/// host PID case checks) whose pid is in /var/run/nginx.pid, as nginx writes it. Its image runs it
/// as `nginx PORT "master process"`: the container PID case waits for nginx's process title
/// ("nginx: master process …") in /proc/1/cmdline, and an argument is where a script can put it.
const NGINX_SCRIPT: &str = r#"#!/bin/sh
# nginx [PORT [TITLE]]: serve /usr/share/nginx/html with busybox httpd on PORT (default 80).
echo $$ >/var/run/nginx.pid
httpd -f -v -p "${1:-80}" -h /usr/share/nginx/html &
trap 'kill $! 2>/dev/null; exit 0' TERM INT
wait
"#;

/// One image of the layout: the reference it is pushed as, the name of its entry in index.json
/// (a plain token: skopeo's `oci:DIR:REF` cannot take a reference with its own colons) and the
/// digest and media type of its top object.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub reference: String,
    pub ref_name: String,
    pub top: Blob,
    pub media_type: &'static str,
}

/// What an image adds to the busybox base.
#[derive(Default)]
struct Variant {
    /// Regular files (path, mode, uid, bytes) and directories (bytes `None`) of the extra layer.
    files: Vec<(String, u32, u64, Option<Vec<u8>>)>,
    user: Option<&'static str>,
    entrypoint: Option<Vec<&'static str>>,
    cmd: Vec<&'static str>,
    port: Option<u16>,
    label: Option<&'static str>,
    /// Published as a single-platform image index rather than a bare manifest.
    index: bool,
}

struct Layout {
    blobs: BTreeMap<String, Vec<u8>>,
    base_layer: (Blob, String),
}

impl Layout {
    fn put(&mut self, bytes: Vec<u8>) -> Blob {
        let blob = Blob::of(&bytes);
        self.blobs.insert(blob.digest.clone(), bytes);
        blob
    }

    /// A gzip layer and its diff ID.
    fn layer(&mut self, tar: Vec<u8>) -> (Blob, String) {
        let diff_id = sha256(&tar);
        (self.put(gzip(&tar)), diff_id)
    }

    fn image(&mut self, v: &Variant) -> (Blob, &'static str) {
        let mut layers = vec![self.base_layer.clone()];
        if !v.files.is_empty() {
            let mut tar = tar::Builder::new(Vec::new());
            for (path, mode, uid, bytes) in &v.files {
                match bytes {
                    Some(bytes) => append_file(&mut tar, path, *mode, bytes),
                    None => {
                        let mut h = header(tar::EntryType::Directory, *mode, 0);
                        h.set_uid(*uid);
                        h.set_gid(*uid);
                        tar.append_data(&mut h, path, io::empty())
                            .expect("append dir");
                    }
                }
            }
            layers.push(self.layer(tar.into_inner().expect("finish layer tar")));
        }
        let mut config = json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": v.cmd,
        });
        if let Some(user) = v.user {
            config["User"] = json!(user);
        }
        if let Some(entrypoint) = &v.entrypoint {
            config["Entrypoint"] = json!(entrypoint);
        }
        if let Some(port) = v.port {
            config["ExposedPorts"] = json!({ format!("{port}/tcp"): {} });
        }
        if let Some(label) = v.label {
            config["Labels"] = json!({ "org.berth.fixture": label });
        }
        let config = json_bytes(&json!({
            "architecture": oci_arch(),
            "os": "linux",
            "created": "2020-01-01T00:00:00Z",
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({
                "created": "2020-01-01T00:00:00Z",
                "created_by": "berth critest fixture",
            })).collect::<Vec<_>>(),
        }));
        let config = self.put(config);
        let manifest = json_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": descriptor(CONFIG_MEDIA_TYPE, &config),
            "layers": layers.iter().map(|(b, _)| descriptor(LAYER_MEDIA_TYPE, b)).collect::<Vec<_>>(),
        }));
        let manifest = self.put(manifest);
        if !v.index {
            return (manifest, MANIFEST_MEDIA_TYPE);
        }
        let mut entry = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
        entry["platform"] = json!({ "architecture": oci_arch(), "os": "linux" });
        let index = json_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [entry],
        }));
        (self.put(index), INDEX_MEDIA_TYPE)
    }
}

fn descriptor(media_type: &str, blob: &Blob) -> Value {
    json!({ "mediaType": media_type, "digest": blob.digest, "size": blob.size })
}

/// The busybox base: /bin/busybox, every applet it lists at the path it lists (hard links), busybox's image
/// users and groups, and the directories a shell expects.
fn base_layer_tar(busybox: &[u8], applets: &[String]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for dir in [
        "bin/",
        "sbin/",
        "usr/",
        "usr/bin/",
        "usr/sbin/",
        "etc/",
        "root/",
    ] {
        append_dir(&mut tar, dir);
    }
    for dir in ["home/", "var/", "var/run/", "var/www/"] {
        append_dir(&mut tar, dir);
    }
    let mut h = header(tar::EntryType::Directory, 0o1777, 0);
    tar.append_data(&mut h, "tmp/", io::empty())
        .expect("append dir");
    append_file(&mut tar, "bin/busybox", 0o755, busybox);
    for applet in applets {
        if applet == "bin/busybox" {
            continue;
        }
        // Hard links, as busybox's own image has them: a runtime masking one applet (critest
        // masks /bin/ls) must not follow a symlink and mask busybox itself.
        let mut h = header(tar::EntryType::Link, 0o755, 0);
        tar.append_link(&mut h, applet, "bin/busybox")
            .expect("append hard link");
    }
    for (path, script) in TOOL_SCRIPTS {
        if !applets
            .iter()
            .any(|a| a.rsplit('/').next() == path.rsplit('/').next())
        {
            append_file(&mut tar, path, 0o755, script.as_bytes());
        }
    }
    append_file(&mut tar, "etc/passwd", 0o644, PASSWD.as_bytes());
    append_file(&mut tar, "etc/group", 0o644, GROUP.as_bytes());
    tar.into_inner().expect("finish layer tar")
}

/// The applets of the host's busybox-static (`busybox --list-full`: `usr/bin/[`, `sbin/acpid`, …).
fn busybox_applets() -> io::Result<Vec<String>> {
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list-full")
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other("busybox --list-full failed"));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// A web page for the nginx stand-ins (critest only checks the status code).
const INDEX_HTML: &[u8] = b"<html><body><h1>berth critest fixture</h1></body></html>\n";

/// Write the layout to `dir` (created; an existing layout there is replaced) and return its
/// images. `bin` holds the static programs the images carry: `pause` (the pause images' /pause)
/// and `nonewprivs` (setuid root in the nonewprivs image).
pub fn write_layout(dir: &Path, bin: &Path) -> io::Result<Vec<Fixture>> {
    let busybox = std::fs::read("/bin/busybox").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("/bin/busybox is not readable ({e}): install busybox-static"),
        )
    })?;
    let program = |name: &str| {
        let path = bin.join(name);
        std::fs::read(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))
    };
    let pause = program("pause")?;
    let nonewprivs = program("nonewprivs")?;
    let applets = busybox_applets()?;

    let mut layout = Layout {
        blobs: BTreeMap::new(),
        base_layer: (Blob::of(b""), String::new()),
    };
    layout.base_layer = layout.layer(base_layer_tar(&busybox, &applets));

    let mut images: Vec<(Vec<String>, Variant)> = Vec::new();
    let named = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // The default container image, every critest case runs it.
    images.push((
        named(&[&format!("{E2E}/busybox:1.29-2")]),
        Variant {
            cmd: vec!["sh"],
            ..Default::default()
        },
    ));
    // nginx:1.14-2 listens on 80; httpd:2.4.39-4 too and says "httpd" in its log (the
    // multi-container case waits for that word); hostnet-nginx listens on 12003 in the host's
    // network. busybox httpd in the foreground stands in for all three (the nginx ones through
    // NGINX_SCRIPT).
    let web = |root: &str, port: u16, cmd: Vec<&'static str>| Variant {
        files: vec![
            (root.to_string(), 0o755, 0, None),
            (
                format!("{root}index.html"),
                0o644,
                0,
                Some(INDEX_HTML.to_vec()),
            ),
            ("usr/sbin/".into(), 0o755, 0, None),
            (
                "usr/sbin/nginx".into(),
                0o755,
                0,
                Some(NGINX_SCRIPT.as_bytes().to_vec()),
            ),
        ],
        cmd,
        port: Some(port),
        ..Default::default()
    };
    images.push((
        named(&[&format!("{E2E}/nginx:1.14-2")]),
        web(
            "usr/share/nginx/html/",
            80,
            vec!["nginx", "80", "master process"],
        ),
    ));
    images.push((
        named(&[&format!("{E2E}/httpd:2.4.39-4")]),
        web(
            "usr/local/apache2/htdocs/",
            80,
            vec![
                "sh",
                "-c",
                "echo 'httpd: serving /usr/local/apache2/htdocs on port 80' >&2; \
                 exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs",
            ],
        ),
    ));
    images.push((
        named(&[&format!("{CRI_TOOLS}/hostnet-nginx-{}:latest", oci_arch())]),
        web(
            "usr/share/nginx/html/",
            12003,
            vec!["nginx", "12003", "master process"],
        ),
    ));

    // Kubernetes' nonewprivs:1.3: a setuid-root program that prints its effective uid.
    images.push((
        named(&[&format!("{E2E}/nonewprivs:1.3")]),
        Variant {
            files: vec![
                ("usr/local/".into(), 0o755, 0, None),
                ("usr/local/bin/".into(), 0o755, 0, None),
                ("usr/local/bin/nnp".into(), 0o4755, 0, Some(nonewprivs)),
            ],
            cmd: vec!["/usr/local/bin/nnp"],
            ..Default::default()
        },
    ));

    // images/image-user: busybox with USER set.
    for (image, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ] {
        images.push((
            named(&[&format!("{CRI_TOOLS}/{image}:latest")]),
            Variant {
                user: Some(user),
                cmd: vec!["sh"],
                index: true,
                ..Default::default()
            },
        ));
    }

    // images/image-predefined-group: `adduser -u 1000 -D default-user`, group 50000 with it.
    let passwd = format!("{PASSWD}default-user:x:1000:1000::/home/default-user:/bin/sh\n");
    let group =
        format!("{GROUP}default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n");
    images.push((
        named(&[&format!("{CRI_TOOLS}/test-image-predefined-group:latest")]),
        Variant {
            files: vec![
                ("etc/".into(), 0o755, 0, None),
                ("etc/passwd".into(), 0o644, 0, Some(passwd.into_bytes())),
                ("etc/group".into(), 0o644, 0, Some(group.into_bytes())),
                ("home/default-user/".into(), 0o755, 1000, None),
            ],
            user: Some("1000"),
            cmd: vec!["sh"],
            index: true,
            ..Default::default()
        },
    ));

    // images/image-test: busybox plus an empty file named by its build argument; one image per
    // name, test-image-tags' three tags share one image, test-image-tag has one per tag.
    // test-image-digest is left out: critest names it by a digest no rebuild can reproduce.
    let marked = |file: &str| Variant {
        files: vec![(file.to_string(), 0o644, 0, Some(Vec::new()))],
        cmd: vec!["sh"],
        index: true,
        ..Default::default()
    };
    for image in [
        "test-image-1",
        "test-image-2",
        "test-image-3",
        "test-image-latest",
    ] {
        images.push((
            named(&[&format!("{CRI_TOOLS}/{image}:latest")]),
            marked(image),
        ));
    }
    images.push((
        (1..=3)
            .map(|t| format!("{CRI_TOOLS}/test-image-tags:{t}"))
            .collect(),
        marked("same-image"),
    ));
    for tag in ["test", "all"] {
        images.push((
            named(&[&format!("{CRI_TOOLS}/test-image-tag:{tag}")]),
            marked(tag),
        ));
    }

    // The pause image under the two names critest pulls as "the same image from different
    // registries", and the runtime's sandbox image, which differs from it by a label.
    let pause_image = |label: &'static str| Variant {
        files: vec![("pause".into(), 0o755, 0, Some(pause.clone()))],
        user: Some("65535:65535"),
        entrypoint: Some(vec!["/pause"]),
        label: Some(label),
        index: true,
        ..Default::default()
    };
    images.push((
        named(&["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"]),
        pause_image("pause-3.9"),
    ));
    images.push((named(&[SANDBOX_IMAGE]), pause_image("pause-3.10")));

    let mut fixtures = Vec::new();
    let mut index = Vec::new();
    for (names, variant) in &images {
        let (top, media_type) = layout.image(variant);
        for reference in names {
            let ref_name = ref_name(reference);
            let mut entry = descriptor(media_type, &top);
            entry["annotations"] = json!({ "org.opencontainers.image.ref.name": ref_name });
            index.push(entry);
            fixtures.push(Fixture {
                reference: reference.clone(),
                ref_name,
                top: top.clone(),
                media_type,
            });
        }
    }

    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    for (digest, bytes) in &layout.blobs {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes)?;
    }
    std::fs::write(
        dir.join("oci-layout"),
        json_bytes(&json!({ "imageLayoutVersion": "1.0.0" })),
    )?;
    std::fs::write(
        dir.join("index.json"),
        json_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": index,
        })),
    )?;
    Ok(fixtures)
}

/// `gcr.io/k8s-staging-cri-tools/test-image-tags:1` -> `test-image-tags_1`: unique across the
/// fixtures (no two differ only in host), made of the characters an OCI ref name allows.
fn ref_name(reference: &str) -> String {
    let path = reference.split_once('/').map_or(reference, |(_, p)| p);
    let last = path.rsplit('/').next().unwrap_or(path);
    let host = reference.split('/').next().unwrap_or("");
    let prefix = if host == "k8s.gcr.io" { "k8s-gcr-" } else { "" };
    format!("{prefix}{}", last.replace(':', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_reproducible_and_names_every_reference_once() {
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("pause"), b"\x7fELF not really").unwrap();
        std::fs::write(bin.path().join("nonewprivs"), b"\x7fELF nor this").unwrap();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let x = write_layout(&a.path().join("l"), bin.path()).unwrap();
        write_layout(&b.path().join("l"), bin.path()).unwrap();
        assert_eq!(
            std::fs::read(a.path().join("l/index.json")).unwrap(),
            std::fs::read(b.path().join("l/index.json")).unwrap()
        );
        let mut refs: Vec<_> = x.iter().map(|f| f.ref_name.clone()).collect();
        refs.sort();
        let n = refs.len();
        refs.dedup();
        assert_eq!(refs.len(), n, "ref names must be unique: {refs:?}");
        let digest = |r: &str| {
            x.iter()
                .find(|f| f.reference == r)
                .unwrap()
                .top
                .digest
                .clone()
        };
        assert_eq!(
            digest("registry.k8s.io/pause:3.9"),
            digest("k8s.gcr.io/pause:3.9")
        );
        assert_ne!(digest("registry.k8s.io/pause:3.9"), digest(SANDBOX_IMAGE));
        assert_eq!(
            digest(&format!("{CRI_TOOLS}/test-image-tags:1")),
            digest(&format!("{CRI_TOOLS}/test-image-tags:3"))
        );
        assert_ne!(
            digest(&format!("{CRI_TOOLS}/test-image-tag:test")),
            digest(&format!("{CRI_TOOLS}/test-image-tag:all"))
        );
        for f in &x {
            let hex = f.top.digest.trim_start_matches("sha256:");
            let bytes = std::fs::read(a.path().join("l/blobs/sha256").join(hex)).unwrap();
            assert_eq!(sha256(&bytes), f.top.digest);
        }
    }
}
