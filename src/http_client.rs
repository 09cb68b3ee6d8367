//! The HTTP client of the calls untaken makes for every pair: the shadow call to the
//! route not taken and the judge's calls. One POST, its answer read whole (up to a
//! limit) within one deadline.
//!
//! It is hyper's pooled client, called directly: HTTP/1.1, and HTTP/2 where TLS
//! negotiates it (ALPN), native TLS, `TCP_NODELAY` and TCP keep-alive as reqwest sets
//! them. No redirects, no retries (callers own theirs), no decompression, and no work
//! per call beyond the request itself: reqwest's layers (a URL parsed and printed
//! again at every call for its redirect policy, header maps copied) cost as much CPU
//! per pair as everything untaken does with the pair (BENCHMARKS.md).
//!
//! What reqwest gave that hyper does not is kept by calling reqwest for it: a URL
//! that the environment's proxy settings send through a proxy (`HTTP_PROXY`,
//! `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, read once, as reqwest reads them), or
//! that `http::Uri` cannot carry (credentials in the URL, a non-ASCII host), goes
//! through a reqwest client with the same settings, so such deployments reach their
//! proxy as before. Redirects are not followed on either path: a 3xx is an answer.
//!
//! Never logs. Errors name the cause (timeout, refused, reset...) and never contain a
//! body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// `Authorization: Bearer <token>`, marked sensitive (kept out of `Debug` output);
/// an error when the token holds bytes a header cannot carry.
pub fn bearer(token: &str) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    let mut v = http::HeaderValue::try_from(format!("Bearer {token}"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// What the proxy matcher reads (hyper-util's `Matcher::from_env`, as reqwest does):
/// with none of them set, no URL is proxied.
const PROXY_VARIABLES: [&str; 6] = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];

/// Connection settings, shared by both paths.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Longest wait for a TCP connection (TLS excluded).
    pub connect_timeout: Duration,
    /// An idle pooled connection is closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(5), pool_idle_timeout: Duration::from_secs(60), pool_max_idle_per_host: usize::MAX }
    }
}

/// Where a call goes, resolved once per URL: straight through hyper, or through reqwest.
#[derive(Debug, Clone)]
pub struct Target {
    via: Via,
}

#[derive(Debug, Clone)]
enum Via {
    Direct(Uri),
    Reqwest(reqwest::Url),
    /// Neither parses: every call fails with this (config validation refuses such URLs).
    Invalid(String),
}

/// An answer, read whole or cut at the limit.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    /// Empty when `truncated`.
    pub body: Bytes,
    /// The body was longer than the caller's limit and was dropped.
    pub truncated: bool,
}

/// Why a call has no answer. `Display` is "kind" or "kind: innermost cause".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The deadline passed, connecting, sending or reading.
    #[error("timeout")]
    Timeout,
    #[error("connect error{}", cause(.0))]
    Connect(String),
    #[error("response body error{}", cause(.0))]
    Body(String),
    #[error("request error{}", cause(.0))]
    Request(String),
}

fn cause(c: &str) -> String {
    if c.is_empty() { String::new() } else { format!(": {c}") }
}

#[derive(Clone)]
pub struct HttpClient {
    direct: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    reqwest: reqwest::Client,
    /// `None`: no proxy is configured, nothing to look up per call.
    proxies: Option<std::sync::Arc<Matcher>>,
}

impl HttpClient {
    /// A client with the environment's proxy settings (as reqwest reads them).
    pub fn new(options: Options) -> Self {
        let mut c = Self::with_proxies(options, Matcher::from_system());
        if !proxy_configured(|v| std::env::var_os(v)) {
            c.proxies = None;
        }
        c
    }

    /// A client whose proxy settings are `proxies` (tests: the environment is process-wide).
    pub fn with_proxies(options: Options, proxies: Matcher) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(options.connect_timeout));
        // reqwest's defaults, so a half-open connection is noticed the same way.
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        let proxies = std::sync::Arc::new(proxies);
        let tls = native_tls::TlsConnector::builder()
            .request_alpns(&["h2", "http/1.1"])
            .build()
            .expect("the system's TLS library initialises");
        let direct = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(HttpsConnector::from((http, tls.into())));
        let reqwest = reqwest::Client::builder()
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .proxy(reqwest_proxy(proxies.clone()))
            .build()
            .expect("static reqwest configuration is valid");
        Self { direct, reqwest, proxies: Some(proxies) }
    }

    /// How calls to `url` are made (cheap: call it per call or keep it).
    pub fn target(&self, url: &str) -> Target {
        let via = match url.parse::<Uri>() {
            Ok(uri) if is_plain(&uri) && self.proxies.as_ref().is_none_or(|p| p.intercept(&uri).is_none()) => Via::Direct(uri),
            _ => match reqwest::Url::parse(url) {
                Ok(u) => Via::Reqwest(u),
                Err(e) => Via::Invalid(format!("invalid URL: {e}")),
            },
        };
        Target { via }
    }

    /// POSTs `body` with `headers` and reads the answer, at most `max_body_bytes` of
    /// it, all within `timeout`.
    pub async fn post(&self, target: &Target, headers: HeaderMap, body: Bytes, timeout: Duration, max_body_bytes: usize) -> Result<Response, CallError> {
        let call = async {
            match &target.via {
                Via::Direct(uri) => self.post_direct(uri, headers, body, max_body_bytes).await,
                Via::Reqwest(url) => self.post_reqwest(url, headers, body, max_body_bytes).await,
                Via::Invalid(e) => Err(CallError::Request(e.clone())),
            }
        };
        tokio::time::timeout(timeout, call).await.unwrap_or(Err(CallError::Timeout))
    }

    async fn post_direct(&self, uri: &Uri, headers: HeaderMap, body: Bytes, max: usize) -> Result<Response, CallError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers;
        // As reqwest sends it (some gateways route on it).
        req.headers_mut().entry(http::header::ACCEPT).or_insert(http::HeaderValue::from_static("*/*"));
        let resp = self.direct.request(req).await.map_err(|e| {
            if timed_out(&e) {
                // The connect timeout, as reqwest reported it.
                CallError::Timeout
            } else if e.is_connect() {
                CallError::Connect(innermost(&e))
            } else {
                CallError::Request(innermost(&e))
            }
        })?;
        let (parts, mut incoming) = resp.into_parts();
        let mut reader = BodyReader::new(max);
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| CallError::Body(innermost(&e)))?;
            if let Ok(data) = frame.into_data() {
                if !reader.push(data) {
                    return Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body: Bytes::new(), truncated: true });
                }
            }
        }
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body: reader.finish(), truncated: false })
    }

    async fn post_reqwest(&self, url: &reqwest::Url, headers: HeaderMap, body: Bytes, max: usize) -> Result<Response, CallError> {
        let classify = |e: reqwest::Error| {
            let c = innermost(&e);
            if e.is_timeout() {
                CallError::Timeout
            } else if e.is_connect() {
                CallError::Connect(c)
            } else if e.is_body() || e.is_decode() {
                CallError::Body(c)
            } else {
                CallError::Request(c)
            }
        };
        let mut resp = self.reqwest.post(url.clone()).headers(headers).body(body).send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        let mut reader = BodyReader::new(max);
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if !reader.push(chunk) {
                return Ok(Response { status, headers, body: Bytes::new(), truncated: true });
            }
        }
        Ok(Response { status, headers, body: reader.finish(), truncated: false })
    }
}

/// Whether any variable the proxy matcher reads is set (`env` looks one up).
fn proxy_configured(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    PROXY_VARIABLES.iter().any(|v| env(v).is_some_and(|x| !x.is_empty()))
}

/// A URI hyper sends as it is: http(s), an ASCII host, no credentials.
fn is_plain(uri: &Uri) -> bool {
    matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
}

/// reqwest's proxy setting for the same matcher (the environment's, in production).
fn reqwest_proxy(m: std::sync::Arc<Matcher>) -> reqwest::Proxy {
    reqwest::Proxy::custom(move |url| {
        let proxy = m.intercept(&url.as_str().parse().ok()?)?;
        let mut p = reqwest::Url::parse(&proxy.uri().to_string()).ok()?;
        if let Some((user, pass)) = proxy.raw_auth() {
            let _ = p.set_username(user);
            let _ = p.set_password(Some(pass));
        }
        Some(p)
    })
}

/// The answer's bytes, kept as the one chunk they usually arrive in.
struct BodyReader {
    max: usize,
    first: Option<Bytes>,
    rest: Option<BytesMut>,
}

impl BodyReader {
    fn new(max: usize) -> Self {
        Self { max, first: None, rest: None }
    }

    /// False when the body would exceed the limit.
    fn push(&mut self, data: Bytes) -> bool {
        if data.is_empty() {
            return true;
        }
        // `rest`, once started, holds `first` too.
        let len = match (&self.first, &self.rest) {
            (_, Some(all)) => all.len(),
            (Some(first), None) => first.len(),
            (None, None) => 0,
        };
        if len + data.len() > self.max {
            return false;
        }
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(data),
            (Some(first), None) => {
                let mut all = BytesMut::with_capacity((first.len() + data.len()) * 2);
                all.extend_from_slice(first);
                all.extend_from_slice(&data);
                self.rest = Some(all);
            }
            (Some(_), Some(all)) => all.extend_from_slice(&data),
        }
        true
    }

    fn finish(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(all)) => all.freeze(),
            (Some(first), None) => first,
            (None, None) => Bytes::new(),
        }
    }
}

/// True when an I/O error in the chain timed out (hyper's connect timeout).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        src = s.source();
    }
    false
}

/// The innermost cause in an error's source chain (names what failed; never a body).
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_kept_whole_up_to_the_limit() {
        let mut r = BodyReader::new(10);
        assert!(r.push(Bytes::from_static(b"abcd")));
        assert_eq!(r.finish(), Bytes::from_static(b"abcd"));
        let mut r = BodyReader::new(10);
        for part in [&b"ab"[..], b"", b"cde", b"fghij"] {
            assert!(r.push(Bytes::copy_from_slice(part)));
        }
        assert_eq!(r.finish(), Bytes::from_static(b"abcdefghij"));
        let mut r = BodyReader::new(10);
        assert!(r.push(Bytes::from_static(b"abcdefgh")));
        assert!(!r.push(Bytes::from_static(b"ijk")), "11 bytes are over a 10-byte limit");
        assert_eq!(BodyReader::new(0).finish(), Bytes::new());
    }

    #[test]
    fn plain_urls_go_direct_the_others_through_reqwest() {
        let c = HttpClient::with_proxies(Options::default(), Matcher::builder().build());
        let direct = |u: &str| matches!(c.target(u).via, Via::Direct(_));
        assert!(direct("http://127.0.0.1:8080/v1/chat/completions"));
        assert!(direct("https://api.example.test/v1/chat/completions"));
        assert!(!direct("https://user:secret@api.example.test/v1"), "credentials in the URL: reqwest sends them as basic auth");
        assert!(!direct("https://bücher.example.test/v1"), "a non-ASCII host: reqwest encodes it");
        assert!(matches!(c.target("not a url").via, Via::Invalid(_)));
        let proxied = HttpClient::with_proxies(Options::default(), Matcher::builder().http("http://127.0.0.1:3128").no("localhost").build());
        assert!(matches!(proxied.target("http://api.example.test/v1").via, Via::Reqwest(_)), "HTTP_PROXY applies");
        assert!(matches!(proxied.target("https://api.example.test/v1").via, Via::Direct(_)), "no HTTPS_PROXY set");
        assert!(matches!(proxied.target("http://localhost:9/v1").via, Via::Direct(_)), "NO_PROXY applies");
    }

    /// The proxy variables are looked up under every name the matcher reads (a name
    /// missing here would send that deployment's calls past its proxy).
    #[test]
    fn any_proxy_variable_turns_the_proxy_lookup_on() {
        let none = |_: &str| None;
        assert!(!proxy_configured(none));
        for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
            assert!(proxy_configured(|v: &str| (v == name).then(|| "http://127.0.0.1:3128".into())), "{name}");
            assert!(!proxy_configured(|v: &str| (v == name).then(|| "".into())), "{name} set but empty");
        }
        // NO_PROXY alone proxies nothing.
        assert!(!proxy_configured(|v: &str| (v == "NO_PROXY").then(|| "localhost".into())));
        // What the matcher itself reads from these names agrees.
        let m = Matcher::builder().https("http://127.0.0.1:3128").build();
        assert!(m.intercept(&"https://api.example.test/v1".parse().unwrap()).is_some());
    }

    #[test]
    fn errors_read_as_the_shadow_half_records_them() {
        assert_eq!(CallError::Timeout.to_string(), "timeout");
        assert_eq!(CallError::Connect("Connection refused (os error 111)".into()).to_string(), "connect error: Connection refused (os error 111)");
        assert_eq!(CallError::Request(String::new()).to_string(), "request error");
    }
    /// A peer on loopback: echoes what it got, or answers big, slowly, or not at all.
    mod peer {
        use std::net::SocketAddr;
        use std::sync::{Arc, Mutex};

        use axum::extract::{ConnectInfo, State};
        use axum::routing::post;

        #[derive(Default)]
        pub struct Seen {
            /// (peer address, request URI as received, x-request-id, authorization, body)
            pub calls: Vec<(SocketAddr, String, String, String, String)>,
        }

        pub async fn start() -> (String, Arc<Mutex<Seen>>) {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let app = axum::Router::new()
                .route(
                    "/v1/echo",
                    post(|ConnectInfo(addr): ConnectInfo<SocketAddr>, State(seen): State<Arc<Mutex<Seen>>>, uri: http::Uri, headers: http::HeaderMap, body: String| async move {
                        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        seen.lock().unwrap().calls.push((addr, uri.to_string(), h("x-request-id"), h("authorization"), body.clone()));
                        ([("retry-after", "7")], format!("{{\"echo\":{}}}", body.len()))
                    }),
                )
                .route("/v1/big", post(|| async { "x".repeat(100_000) }))
                .route("/v1/moved", post(|| async { (http::StatusCode::TEMPORARY_REDIRECT, [("location", "/v1/echo")], "") }))
                .route(
                    "/v1/slow",
                    post(|| async {
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                        "late"
                    }),
                )
                .with_state(seen.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
            (format!("http://{addr}"), seen)
        }
    }

    fn headers(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", id.parse().unwrap());
        h.insert(http::header::AUTHORIZATION, "Bearer k-1".parse().unwrap());
        h
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn posts_headers_and_body_and_reuses_one_connection() {
        let (base, seen) = peer::start().await;
        let c = HttpClient::with_proxies(Options::default(), Matcher::builder().build());
        let t = c.target(&format!("{base}/v1/echo"));
        for i in 0..5 {
            let r = c.post(&t, headers(&format!("r-{i}")), Bytes::from(vec![b'a'; 10 * i + 1]), SECOND, 1 << 20).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body, Bytes::from(format!("{{\"echo\":{}}}", 10 * i + 1)));
            assert_eq!(r.headers["retry-after"], "7");
            assert!(!r.truncated);
        }
        let seen = seen.lock().unwrap();
        let ids: Vec<_> = seen.calls.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(ids, ["r-0", "r-1", "r-2", "r-3", "r-4"]);
        assert!(seen.calls.iter().all(|c| c.3 == "Bearer k-1" && c.1 == "/v1/echo"));
        let peers: std::collections::HashSet<_> = seen.calls.iter().map(|c| c.0).collect();
        assert_eq!(peers.len(), 1, "one pooled connection for sequential calls");
    }

    /// Redirects are not followed (README): a 307 is the answer, and nothing reaches its target.
    #[tokio::test]
    async fn a_redirect_is_the_answer_not_followed() {
        let (base, seen) = peer::start().await;
        let c = HttpClient::with_proxies(Options::default(), Matcher::builder().build());
        let r = c.post(&c.target(&format!("{base}/v1/moved")), headers("r-307"), Bytes::from_static(b"{}"), SECOND, 1000).await.unwrap();
        assert_eq!((r.status, r.headers["location"].to_str().unwrap()), (307, "/v1/echo"));
        assert!(seen.lock().unwrap().calls.is_empty(), "the redirect's target was not called");
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_dropped_with_its_status() {
        let (base, _) = peer::start().await;
        let c = HttpClient::with_proxies(Options::default(), Matcher::builder().build());
        let t = c.target(&format!("{base}/v1/big"));
        let r = c.post(&t, HeaderMap::new(), Bytes::new(), SECOND, 50_000).await.unwrap();
        assert_eq!((r.status, r.truncated, r.body.len()), (200, true, 0));
        let r = c.post(&t, HeaderMap::new(), Bytes::new(), SECOND, 100_000).await.unwrap();
        assert_eq!((r.truncated, r.body.len()), (false, 100_000), "exactly at the limit is kept");
    }

    #[tokio::test]
    async fn a_slow_answer_times_out_at_the_deadline_and_a_closed_port_is_a_connect_error() {
        let (base, _) = peer::start().await;
        let c = HttpClient::with_proxies(Options::default(), Matcher::builder().build());
        let started = std::time::Instant::now();
        let e = c.post(&c.target(&format!("{base}/v1/slow")), HeaderMap::new(), Bytes::new(), Duration::from_millis(200), 1000).await.unwrap_err();
        assert_eq!(e, CallError::Timeout);
        assert!(started.elapsed() < 3 * SECOND, "gave up at the deadline, not the answer: {:?}", started.elapsed());
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = c.post(&c.target(&format!("http://{closed}/v1")), HeaderMap::new(), Bytes::new(), SECOND, 1000).await.unwrap_err();
        assert!(matches!(&e, CallError::Connect(c) if c.contains("refused")), "{e}");
    }

    /// A connect that does not complete within `connect_timeout` is a timeout (the
    /// `timeout` outcome), not a transport error: here a listener whose accept queue
    /// is full, so the kernel drops further SYNs.
    #[tokio::test]
    async fn a_connect_that_times_out_is_a_timeout_at_the_connect_timeout() {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        sock.listen(0).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let _held: Vec<_> = (0..4).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()).collect();
        let options = Options { connect_timeout: Duration::from_millis(300), ..Options::default() };
        let c = HttpClient::with_proxies(options, Matcher::builder().build());
        let started = std::time::Instant::now();
        let e = c.post(&c.target(&format!("http://{addr}/v1")), HeaderMap::new(), Bytes::new(), 5 * SECOND, 1000).await.unwrap_err();
        assert_eq!(e, CallError::Timeout);
        assert!(started.elapsed() < 3 * SECOND, "the connect timeout fired, not the call's deadline: {:?}", started.elapsed());
        let half = crate::record::Half { body: Bytes::new(), status_code: 0, latency_ms: 0.0, error: e.to_string(), source: crate::record::Source::Untaken };
        assert_eq!(crate::upstream::outcome(&half), "timeout", "counted as a timeout in the shadow calls' metric");
    }

    /// A URL the proxy settings cover is sent to the proxy (as reqwest sends it: the
    /// absolute URL in the request line), with the same headers and body.
    #[tokio::test]
    async fn a_proxied_url_goes_through_the_proxy() {
        let (proxy, seen) = peer::start().await;
        let c = HttpClient::with_proxies(Options::default(), Matcher::builder().http(proxy.as_str()).build());
        let t = c.target("http://llm.internal.test/v1/echo");
        assert!(matches!(t.via, Via::Reqwest(_)));
        let r = c.post(&t, headers("via-proxy"), Bytes::from_static(b"abc"), SECOND, 1000).await.unwrap();
        assert_eq!((r.status, r.body), (200, Bytes::from_static(b"{\"echo\":3}")));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.calls.len(), 1);
        let (_, uri, id, auth, body) = &seen.calls[0];
        assert_eq!(uri, "http://llm.internal.test/v1/echo");
        assert_eq!((id.as_str(), auth.as_str(), body.as_str()), ("via-proxy", "Bearer k-1", "abc"));
    }
}
