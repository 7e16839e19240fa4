//! `berth search`: the repositories of a registry's catalog (`/v2/_catalog`) whose names
//! contain a term. The catalog is read by this process, not the daemon (no image is stored),
//! with the credentials pulls use: docker's config.json, then `berth login`'s store.

use super::CliResult;
use berth_registry::{
    Chain, Client as RegistryClient, ClientConfig, CredentialProvider, DockerConfig, Error,
};
use clap::Args;
use std::sync::Arc;

/// docker's key for Docker Hub, when TERM names no registry.
const DOCKER_HUB: &str = "docker.io";
/// Names asked per catalog page (the registry may answer fewer and link the next page).
const PAGE_SIZE: usize = 100;

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Show at most this many matches.
    #[arg(long, default_value_t = 25)]
    limit: usize,
    /// Names asked per catalog page.
    #[arg(long, default_value_t = PAGE_SIZE, hide = true)]
    page_size: usize,
    /// [REGISTRY/]TERM: the repositories of REGISTRY (default docker.io) containing TERM.
    term: String,
}

/// `host[:port]/rest` → (`host[:port]`, `rest`) when the first part names a host, as image
/// references do (a dot, a port or `localhost`); else Docker Hub and the whole term.
fn split_term(term: &str) -> (String, String) {
    match term.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), term.to_string()),
    }
}

/// The catalog's refusal said plainly: what the registry answered and what may help.
fn refusal(registry: &str, e: &Error) -> Option<String> {
    let why = match e {
        Error::Unauthorized(_) => format!(
            "{registry} refused to list its repositories (401 Unauthorized on /v2/_catalog): \
             berth login {registry} if it lists them to signed-in users; many registries \
             (Docker Hub among them) list them to no one"
        ),
        Error::Denied(_) => format!(
            "{registry} refused to list its repositories (403 Forbidden on /v2/_catalog): \
             these credentials may not read its catalog"
        ),
        Error::NotFound(_) => format!(
            "{registry} does not list its repositories (404 on /v2/_catalog: no catalog API)"
        ),
        _ => return None,
    };
    Some(why)
}

pub async fn search(a: SearchArgs) -> CliResult {
    let (registry, term) = split_term(&a.term);
    let mut chain: Vec<Box<dyn CredentialProvider>> = Vec::new();
    if let Some(path) = DockerConfig::default_path() {
        chain.push(Box::new(DockerConfig::new(path)));
    }
    chain.push(Box::new(super::image::login_store()));
    let client = RegistryClient::with_credentials(ClientConfig::default(), Arc::new(Chain(chain)));
    // Docker Hub's API host; catalogs are asked of the registry itself.
    let catalog = client
        .catalog(&registry, a.page_size, usize::MAX)
        .await
        .map_err(|e| refusal(&registry, &e).unwrap_or_else(|| format!("search {registry}: {e}")))?;
    let needle = term.to_lowercase();
    let matches: Vec<&String> = catalog
        .repositories
        .iter()
        .filter(|r| r.to_lowercase().contains(&needle))
        .take(a.limit)
        .collect();
    println!("NAME");
    for r in matches {
        println!("{registry}/{r}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_name_a_registry_as_references_do() {
        assert_eq!(
            split_term("127.0.0.1:5000/busy"),
            ("127.0.0.1:5000".into(), "busy".into())
        );
        assert_eq!(
            split_term("localhost/app"),
            ("localhost".into(), "app".into())
        );
        assert_eq!(
            split_term("busybox"),
            ("docker.io".into(), "busybox".into())
        );
        assert_eq!(split_term("me/app"), ("docker.io".into(), "me/app".into()));
    }

    #[test]
    fn refusals_say_what_the_registry_answered() {
        let e = Error::Unauthorized("http://r/v2/_catalog".into());
        let m = refusal("r:5000", &e).unwrap();
        assert!(m.contains("401") && m.contains("berth login r:5000"), "{m}");
        let m = refusal("r:5000", &Error::NotFound("x".into())).unwrap();
        assert!(m.contains("404") && m.contains("does not list"), "{m}");
        assert!(refusal("r", &Error::Schema1("x".into())).is_none());
    }
}
