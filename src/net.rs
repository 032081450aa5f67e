//! Network clients that never touch the host libc's name resolution.
//!
//! A static glibc binary that calls getaddrinfo would load NSS modules of whatever glibc the host has,
//! which is exactly the dependency a portable binary must not have. Every HTTP client embark builds (the
//! AWS SDK's and reqwest) resolves names through one pure-Rust resolver (hickory) that reads
//! `/etc/resolv.conf` and `/etc/hosts` itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{ResolverBuilder, TokioResolver};

/// The pure-Rust resolver shared by every client.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver(hickory)")
    }
}

impl Resolver {
    /// Reads `/etc/resolv.conf`; without one (a minimal chroot, a container) only `/etc/hosts` and
    /// literal addresses resolve, which is still enough for IMDS and the emulator.
    pub fn from_system() -> Result<Resolver, String> {
        let builder = TokioResolver::builder_tokio().unwrap_or_else(|err| {
            tracing::debug!("no usable /etc/resolv.conf ({err}); resolving from /etc/hosts only");
            hosts_only_builder()
        });
        Resolver::build(builder)
    }

    /// Names from `/etc/hosts` and literal addresses only; never sends a DNS query.
    pub fn hosts_only() -> Result<Resolver, String> {
        Resolver::build(hosts_only_builder())
    }

    fn build(mut builder: ResolverBuilder<TokioRuntimeProvider>) -> Result<Resolver, String> {
        let options = builder.options_mut();
        options.use_hosts_file = ResolveHosts::Always;
        // A then AAAA, as glibc does: with both at once, a name that /etc/hosts answers still waits for
        // the AAAA query to time out at the name server (seconds, at boot, with no DNS yet).
        options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        let inner = builder
            .build()
            .map_err(|err| format!("cannot set up name resolution: {err}"))?;
        Ok(Resolver {
            inner: Arc::new(inner),
        })
    }

    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let started = std::time::Instant::now();
        let answer = self.inner.lookup_ip(name).await;
        tracing::debug!(name, elapsed = ?started.elapsed(), ok = answer.is_ok(), "resolved");
        let answer = answer.map_err(|err| format!("cannot resolve {name}: {err}"))?;
        let ips: Vec<IpAddr> = answer.iter().collect();
        if ips.is_empty() {
            return Err(format!("cannot resolve {name}: no addresses"));
        }
        Ok(ips)
    }
}

impl ResolveDns for Resolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move { self.lookup(name).await.map_err(ResolveDnsError::new) })
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let ips = resolver.lookup(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

fn hosts_only_builder() -> ResolverBuilder<TokioRuntimeProvider> {
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![]),
        TokioRuntimeProvider::default(),
    )
}

/// The AWS SDK's HTTP client: hyper + rustls (ring), names resolved by `resolver`.
pub fn aws_http_client(resolver: &Resolver) -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_with_resolver(resolver.clone())
}

/// A plain HTTP(S) client for health probes and HTTP hooks, on the same resolver.
pub fn http_client(resolver: &Resolver) -> Result<reqwest::Client, String> {
    // reqwest is built without a bundled crypto provider; ring is the one the SDK client uses too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver.clone()))
        .no_proxy()
        .user_agent(concat!("embark/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn literal_addresses_need_no_lookup() {
        let resolver = Resolver::from_system().unwrap();
        assert_eq!(
            resolver.lookup("127.0.0.1").await,
            Ok(vec!["127.0.0.1".parse::<IpAddr>().unwrap()])
        );
        assert_eq!(
            resolver.lookup("[::1]").await,
            Ok(vec!["::1".parse::<IpAddr>().unwrap()])
        );
    }

    #[tokio::test]
    async fn reqwest_resolves_through_hickory_hosts_file() {
        // `localhost` comes from /etc/hosts (or hickory's built-in answer), never from getaddrinfo.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await.unwrap();
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
        });
        let client = http_client(&Resolver::from_system().unwrap()).unwrap();
        let body = client
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
        server.await.unwrap();
    }
}
