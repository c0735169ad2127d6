//! Plain-HTTP GETs against a running control plane's monitoring port (its `/debug/*` views).

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Where `meshpilot discovery` serves its monitoring endpoint by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:15014";

/// A debug view that does not answer within this long is as good as unreachable.
const TIMEOUT: Duration = Duration::from_secs(15);

pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GETs `path_and_query` below the control plane's base URL.
pub fn get(base_url: &str, path_and_query: &str) -> Result<Response> {
    let base = checked_base(base_url)?;
    let url = format!("{base}{path_and_query}");
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(async {
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let response = tokio::time::timeout(TIMEOUT, client.get(uri))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))??;
            let status = response.status().as_u16();
            let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
                .await
                .map_err(|_| anyhow::anyhow!("the answer did not complete within {TIMEOUT:?}"))??
                .to_bytes();
            Ok::<_, anyhow::Error>(Response {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
        .with_context(|| format!("cannot reach the control plane at {base}"))
}

/// The base URL without a trailing slash; only `http://host:port` makes sense here.
fn checked_base(base_url: &str) -> Result<&str> {
    let base = base_url.trim_end_matches('/');
    let uri: hyper::Uri = base
        .parse()
        .with_context(|| format!("--control-plane {base_url:?}: not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        bail!("--control-plane {base_url:?}: expected http://HOST:PORT");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--control-plane {base_url:?}: expected no path, just http://HOST:PORT");
    }
    Ok(base)
}

/// Percent-encodes a query parameter value.
pub fn query_value(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The first line of an error body, for one-line error messages.
pub fn first_line(body: &str) -> &str {
    body.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// What the control plane's debug views key proxies by: `pod.namespace`. A node id
/// (`sidecar~IP~pod.ns~ns.svc.cluster.local`) is reduced to that.
pub fn proxy_key(spec: &str) -> &str {
    if spec.contains('~') {
        spec.split('~').nth(2).unwrap_or(spec)
    } else {
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_base_urls() {
        assert_eq!(
            checked_base("http://127.0.0.1:15014/").unwrap(),
            "http://127.0.0.1:15014"
        );
        assert!(checked_base("https://127.0.0.1:15014").is_err());
        assert!(checked_base("127.0.0.1:15014").is_err());
        assert!(checked_base("http://127.0.0.1:15014/debug").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("pod-1.default"), "pod-1.default");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }

    #[test]
    fn node_ids_reduce_to_pod_dot_namespace() {
        assert_eq!(
            proxy_key("sidecar~10.244.1.20~productpage-v1.default~default.svc.cluster.local"),
            "productpage-v1.default"
        );
        assert_eq!(
            proxy_key("productpage-v1.default"),
            "productpage-v1.default"
        );
    }

    #[test]
    fn refused_connection_is_one_error_line() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = get(&format!("http://127.0.0.1:{port}"), "/debug/syncz")
            .err()
            .expect("nothing listens there");
        let text = format!("{err:#}");
        assert!(text.starts_with("cannot reach the control plane at http://127.0.0.1:"));
        assert!(!text.contains('\n'), "{text}");
    }
}
