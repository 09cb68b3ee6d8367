//! The gRPC edge: the `untaken.v1.Mirror` service, the standard health service
//! and server reflection, served on a bound listener until a shutdown future.
//!
//! Handlers only translate: the engine decides, and [`status`] maps each engine
//! error to its gRPC status, in this one place. Optional bearer-token auth runs
//! as an interceptor, before any handler of `Mirror` and of reflection (health
//! stays open for the probes).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::config::Secret;
use crate::sidecar::engine::{Engine, RequestError};
use crate::proto::v1::mirror_server::{Mirror, MirrorServer};
use crate::proto::v1::{CompleteRequest, CompleteResponse, MirrorRequest, MirrorResponse};

/// Maps an engine error to the status the router sees. The only such mapping.
pub fn status(e: RequestError) -> Status {
    match &e {
        RequestError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        RequestError::AlreadyExists(_) | RequestError::PrimaryAlreadyGiven(_) => Status::already_exists(e.to_string()),
        RequestError::NotFound(..) => Status::not_found(e.to_string()),
        RequestError::Draining => Status::unavailable(e.to_string()),
    }
}

pub struct MirrorService {
    engine: Arc<Engine>,
}

fn traceparent<T>(req: &Request<T>) -> String {
    // A W3C traceparent is 55 characters; anything much longer is not one.
    req.metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
        .unwrap_or_default()
        .to_string()
}

#[tonic::async_trait]
impl Mirror for MirrorService {
    async fn mirror(&self, request: Request<MirrorRequest>) -> Result<Response<MirrorResponse>, Status> {
        let tp = traceparent(&request);
        self.engine.mirror(request.into_inner(), &tp).map(Response::new).map_err(status)
    }

    async fn complete(&self, request: Request<CompleteRequest>) -> Result<Response<CompleteResponse>, Status> {
        self.engine.complete(request.into_inner()).map(Response::new).map_err(status)
    }
}

/// Rejects calls without `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Secret>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(req) };
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer_token);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.expose().as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")),
        }
    }
}

/// The token of an `authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 7235), as gRPC clients and proxies may send `bearer`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves until `shutdown` resolves, then finishes in-flight calls and returns.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    token: Option<Secret>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor sets are valid");
    // Reflection describes the service, so it is behind the token too; health is not:
    // the kubelet's probe carries no token.
    let auth = BearerAuth { token };
    let reflection = tonic::service::interceptor::InterceptedService::new(reflection, auth.clone());
    let mirror = MirrorServer::with_interceptor(MirrorService { engine }, auth);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(health)
        .add_service(reflection)
        .add_service(mirror)
        // TCP_NODELAY: `Mirror` answers are tiny; Nagle's algorithm would hold them back
        // for the peer's delayed ACK (tens of ms on the router's request path).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
