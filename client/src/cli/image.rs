//! Image commands: images (ls), rmi, tag, image inspect, and the transfers: pull, push,
//! save and load (through the daemon's Transfer service, see `crate::transfer`).

use super::format::{self, Format};
use super::CliResult;
use crate::images::{ImageDetails, ImageInfo};
use crate::Client;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::os::fd::AsFd;
use std::time::SystemTime;

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Only ids.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// table, json, or a template such as '{{.Repository}}:{{.Tag}}'.
    #[arg(long)]
    format: Option<String>,
    /// Do not truncate ids.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Only images whose name matches (REPOSITORY[:TAG]).
    reference: Option<String>,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Accepted for docker compatibility; images are records, removal never needs force.
    #[arg(short = 'f', long)]
    force: bool,
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    source: String,
    target: String,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    #[command(visible_alias = "list")]
    Ls(ImagesArgs),
    Rm(RmiArgs),
    Tag(TagArgs),
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove dangling (untagged) images, or with -a every image no container uses.
    #[command(after_help = "Examples:\n  berth image prune -f\n  berth image prune -a -f")]
    Prune(super::prune::ImagePruneArgs),
    /// Make an image of one layer from a filesystem tarball.
    Import(ImportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Apply a Dockerfile instruction to the image's config (CMD, ENTRYPOINT, ENV, ...).
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// The history entry's comment.
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// The tarball (plain or gzip), or - for stdin.
    #[arg(value_name = "FILE|-")]
    source: String,
    /// The image's name (default: untagged, named by its digest).
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
}

/// docker's `import`: prints the new image's id (its config digest).
pub async fn import(client: &Client, a: ImportArgs) -> CliResult {
    use std::io::Read;
    let mut bytes = Vec::new();
    if a.source == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read stdin: {e}"))?;
    } else {
        bytes = std::fs::read(&a.source).map_err(|e| format!("read {}: {e}", a.source))?;
    }
    let opts = crate::import::ImportOptions {
        reference: a.reference,
        message: a.message,
        changes: a.changes,
    };
    let imported = client.import_rootfs(bytes, &opts).await?;
    println!("{}", imported.config_digest);
    Ok(0)
}

/// `docker.io/library/busybox:latest` → (`docker.io/library/busybox`, `latest`).
fn split_name(name: &str) -> (String, String) {
    if let Some((repo, digest)) = name.split_once('@') {
        return (repo.to_string(), format!("@{digest}"));
    }
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (name.to_string(), "<none>".to_string()),
    }
}

async fn image_value(client: &Client, i: &ImageInfo, now: SystemTime, no_trunc: bool) -> Value {
    let (repo, tag) = split_name(&i.name);
    let size = client
        .images()
        .inspect(&i.name)
        .await
        .map(|d| d.size)
        .unwrap_or(i.target.size);
    let created = i.created_at.unwrap_or(now);
    json!({
        "Repository": repo,
        "Tag": tag,
        "ID": if no_trunc { i.target.digest.clone() } else { crate::names::short_id(i.id()).to_string() },
        "Digest": i.target.digest,
        "CreatedAt": crate::events::rfc3339(created),
        "CreatedSince": format!("{} ago", crate::lifecycle::human_duration(now.duration_since(created).unwrap_or_default())),
        "Size": format::human_size(size),
    })
}

pub async fn images(client: &Client, a: ImagesArgs) -> CliResult {
    let now = SystemTime::now();
    let mut list = client.images().list(&[]).await?;
    if let Some(r) = &a.reference {
        let full = crate::images::normalize(r);
        list.retain(|i| {
            i.name == *r
                || i.name == full
                || split_name(&i.name).0 == *r
                || split_name(&i.name).0 == split_name(&full).0
        });
    }
    if a.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for i in &list {
            let id = if a.no_trunc {
                i.target.digest.clone()
            } else {
                crate::names::short_id(i.id()).to_string()
            };
            if seen.insert(id.clone()) {
                println!("{id}");
            }
        }
        return Ok(0);
    }
    let mut values = Vec::new();
    for i in &list {
        values.push(image_value(client, i, now, a.no_trunc).await);
    }
    format::print_list(&Format::parse(a.format.as_deref()), &values, |vs| {
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| format::cells(v, &["Repository", "Tag", "ID", "CreatedSince", "Size"]))
            .collect();
        format::print_table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows);
    })?;
    Ok(0)
}

pub async fn rmi(client: &Client, a: RmiArgs) -> CliResult {
    let _ = a.force;
    let mut code = 0;
    for name in &a.images {
        match client.images().remove(name, false).await {
            Ok(i) => println!("Untagged: {}", i.name),
            Err(e) => {
                eprintln!("berth: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

pub async fn tag(client: &Client, a: TagArgs) -> CliResult {
    client.images().tag(&a.source, &a.target).await?;
    Ok(0)
}

/// An image in `inspect`'s JSON.
pub fn inspect_value(d: &ImageDetails) -> Value {
    json!({
        "Id": d.image.target.digest,
        "RepoTags": [d.image.name],
        "Created": d.config.created(),
        "Architecture": d.config.architecture().to_string(),
        "Os": d.config.os().to_string(),
        "Size": d.size,
        "Config": d.config.config(),
        "RootFS": d.config.rootfs(),
        "Manifest": d.manifest_descriptor.digest,
        "ChainID": d.chain_id,
        "Labels": d.image.labels,
    })
}

pub async fn image_command(client: &Client, c: ImageCommand) -> CliResult {
    match c {
        ImageCommand::Ls(a) => images(client, a).await,
        ImageCommand::Rm(a) => rmi(client, a).await,
        ImageCommand::Tag(a) => tag(client, a).await,
        ImageCommand::Prune(a) => super::prune::image_prune(client, a).await,
        ImageCommand::Import(a) => import(client, a).await,
        ImageCommand::Inspect { format, images } => {
            let mut out = Vec::new();
            for i in &images {
                out.push(inspect_value(&client.images().inspect(i).await?));
            }
            match format {
                Some(f) => {
                    for v in &out {
                        println!("{}", format::render(&f, v)?);
                    }
                }
                None => println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                ),
            }
            Ok(0)
        }
    }
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Speak plain HTTP to the registry (loopback registries always do).
    #[arg(long = "plain-http")]
    plain_http: bool,
    /// Print nothing but the image's name at the end.
    #[arg(short = 'q', long)]
    quiet: bool,
    image: String,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write the archive to FILE instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<std::path::PathBuf>,
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read the archive from FILE instead of stdin.
    #[arg(short = 'i', long)]
    input: Option<std::path::PathBuf>,
    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// Show a transfer's progress on stderr: a bar per blob on a terminal (indicatif), else one
/// line per blob state change (never per byte).
async fn follow<T>(mut t: crate::transfer::Transfer<T>, quiet: bool) -> crate::Result<T> {
    use std::io::IsTerminal;
    if quiet {
        while t.next_event().await.is_some() {}
        return t.finish().await;
    }
    let bars = std::io::stderr()
        .is_terminal()
        .then(indicatif::MultiProgress::new);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:12} {msg:16} [{bar:30}] {bytes}/{total_bytes}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut shown: std::collections::HashMap<String, (String, Option<indicatif::ProgressBar>)> =
        Default::default();
    while let Some(e) = t.next_event().await {
        if e.name.is_empty() {
            continue;
        }
        let short = e
            .name
            .split_once("sha256:")
            .map(|(_, d)| d.get(..12).unwrap_or(d))
            .unwrap_or(&e.name)
            .to_string();
        let entry = shown.entry(e.name.clone()).or_insert_with(|| {
            let bar = bars.as_ref().map(|m| {
                let b = m.add(indicatif::ProgressBar::new(e.total.max(0) as u64));
                b.set_style(style.clone());
                b.set_prefix(short.clone());
                b
            });
            (String::new(), bar)
        });
        match &entry.1 {
            Some(bar) => {
                if e.total > 0 {
                    bar.set_length(e.total as u64);
                }
                bar.set_position(e.progress.max(0) as u64);
                bar.set_message(e.event.clone());
                if matches!(
                    e.event.as_str(),
                    "complete" | "already exists" | "extracted" | "saved" | "exists"
                ) {
                    bar.finish();
                }
            }
            None if entry.0 != e.event => {
                if e.total > 0 {
                    eprintln!("{short}: {} {}/{}", e.event, e.progress, e.total);
                } else {
                    eprintln!("{short}: {}", e.event);
                }
            }
            None => {}
        }
        entry.0 = e.event;
    }
    for (_, bar) in shown.values() {
        if let Some(b) = bar {
            b.finish();
        }
    }
    t.finish().await
}

fn registry_options(plain_http: bool) -> crate::transfer::RegistryOptions {
    crate::transfer::RegistryOptions {
        plain_http,
        ..Default::default()
    }
}

pub async fn pull(client: &Client, a: PullArgs) -> CliResult {
    let name = crate::images::normalize(&a.image);
    let t = client
        .images()
        .pull(&a.image, &registry_options(a.plain_http))
        .await?;
    follow(t, a.quiet).await?;
    if !a.quiet {
        let digest = client.images().get_exact(&name).await?.target.digest;
        println!("Digest: {digest}");
        println!("Status: Downloaded newer image for {name}");
    }
    println!("{name}");
    Ok(0)
}

/// A pull for `run`/`create`: progress on stderr, nothing on stdout (that is the container's).
pub(super) async fn pull_quietly(client: &Client, image: &str) -> crate::Result<()> {
    let t = client
        .images()
        .pull(image, &registry_options(false))
        .await?;
    follow(t, false).await?;
    let name = crate::images::normalize(image);
    let digest = client.images().get_exact(&name).await?.target.digest;
    eprintln!("Digest: {digest}");
    eprintln!("Status: Downloaded newer image for {name}");
    Ok(())
}

pub async fn push(client: &Client, a: PullArgs) -> CliResult {
    let image = client.images().get(&a.image).await?;
    let t = client
        .images()
        .push(&image.name, &registry_options(a.plain_http))
        .await?;
    follow(t, a.quiet).await?;
    if !a.quiet {
        println!("{}: digest: {}", image.name, image.target.digest);
    }
    Ok(0)
}

pub async fn save(client: &Client, a: SaveArgs) -> CliResult {
    match &a.output {
        Some(path) => {
            // Written beside the target and renamed, so a failed save leaves no half archive.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| format!("create a file in {}: {e}", dir.display()))?;
            let file = tokio::fs::File::from_std(
                tmp.reopen()
                    .map_err(|e| format!("open {}: {e}", tmp.path().display()))?,
            );
            let t = client.images().export(&a.images, file).await?;
            follow(t, true).await?;
            tmp.persist(path)
                .map_err(|e| format!("write {}: {}", path.display(), e.error))?;
        }
        None => {
            if nix::unistd::isatty(1).unwrap_or(false) {
                return Err(
                    "refusing to write an archive to a terminal: use -o FILE or a redirect"
                        .to_string()
                        .into(),
                );
            }
            let t = client
                .images()
                .export(&a.images, std_file(std::io::stdout().as_fd())?)
                .await?;
            follow(t, true).await?;
        }
    }
    Ok(0)
}

pub async fn load(client: &Client, a: LoadArgs) -> CliResult {
    let t = match &a.input {
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            client.images().import(file).await?
        }
        None => {
            client
                .images()
                .import(std_file(std::io::stdin().as_fd())?)
                .await?
        }
    };
    let mut t = t;
    let mut saved = Vec::new();
    while let Some(e) = t.next_event().await {
        if e.event == "saved" {
            saved.push(e.name);
        }
    }
    t.finish().await?;
    if saved.is_empty() {
        return Err("the archive names no image: nothing was loaded"
            .to_string()
            .into());
    }
    if !a.quiet {
        for name in saved {
            println!("Loaded image: {name}");
        }
    }
    Ok(0)
}

/// A tokio file on a copy of a standard stream (pipes and files alike; tokio's own
/// stdin/stdout are not among the crate's features).
fn std_file(fd: std::os::fd::BorrowedFd<'_>) -> CliResult<tokio::fs::File> {
    let owned = fd
        .try_clone_to_owned()
        .map_err(|e| format!("duplicate a standard stream: {e}"))?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(owned)))
}

/// Where `berth login` keeps credentials: berthd's `[transfer] login_store` default, or
/// `BERTH_LOGIN_STORE` for a daemon configured elsewhere.
const LOGIN_STORE: &str = "/etc/berth/auth.json";
const LOGIN_STORE_ENV: &str = "BERTH_LOGIN_STORE";
/// docker's key for Docker Hub, when no server is named.
const DOCKER_HUB: &str = "docker.io";

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// The password (visible in ps and history: prefer --password-stdin).
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from stdin.
    #[arg(long = "password-stdin")]
    password_stdin: bool,
    /// The registry host (default: docker.io).
    server: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry host (default: docker.io).
    server: Option<String>,
}

pub(super) fn login_store() -> berth_registry::LoginStore {
    let path = std::env::var_os(LOGIN_STORE_ENV)
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| LOGIN_STORE.into());
    berth_registry::LoginStore::new(path)
}

/// `https://host/v1/` or `host/` → `host`, the key the daemon looks credentials up by.
fn registry_key(server: Option<&str>) -> String {
    let s = server.unwrap_or(DOCKER_HUB);
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        host.to_string()
    }
}

fn read_line(prompt: Option<&str>) -> CliResult<String> {
    if let Some(p) = prompt {
        eprint!("{p}");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("read stdin: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Stores the credentials for the daemon's pulls and pushes; they are checked by the first
/// transfer that needs them, not here.
pub fn login(a: LoginArgs) -> CliResult {
    let key = registry_key(a.server.as_deref());
    let username = match a.username {
        Some(u) => u,
        None if a.password_stdin => {
            return Err("--password-stdin needs --username".to_string().into())
        }
        None => read_line(Some("Username: "))?,
    };
    let password = match a.password {
        Some(p) => p,
        None if a.password_stdin => read_line(None)?,
        None => {
            return Err("a password is needed: --password-stdin (or -p)"
                .to_string()
                .into())
        }
    };
    if username.is_empty() || password.is_empty() {
        return Err("username and password must not be empty".to_string().into());
    }
    let store = login_store();
    store
        .store(
            &key,
            &berth_registry::Credentials::Basic { username, password },
        )
        .map_err(|e| format!("store credentials in {}: {e}", store.path().display()))?;
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(a: LogoutArgs) -> CliResult {
    let key = registry_key(a.server.as_deref());
    let store = login_store();
    let had = store
        .remove(&key)
        .map_err(|e| format!("update {}: {e}", store.path().display()))?;
    if had {
        println!("Removing login credentials for {key}");
    } else {
        println!("Not logged in to {key}");
    }
    Ok(0)
}
