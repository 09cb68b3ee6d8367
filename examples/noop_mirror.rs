//! Benchmark baseline: a tonic server for `untaken.v1.Mirror` that does nothing.
//!
//! Every `Mirror` answers `sampled = false` at once (after tonic has decoded the
//! request, as any server must); every `Complete` answers an empty response. Same
//! generated types, same tonic/prost versions and same multi-threaded Tokio
//! runtime as `untaken serve`, so the difference between the two is untaken's own
//! work. Used by `benches/run.sh`.
//!
//!     cargo run --release --example noop_mirror -- [--nagle] [LISTEN_ADDR]   (default 127.0.0.1:0)
//!
//! Accepted sockets get TCP_NODELAY, as tonic's own `Server::serve(addr)` sets by
//! default (and as untaken's src/server.rs does since commit 1946cac). `--nagle`
//! leaves Nagle's algorithm on instead, as a bare
//! `serve_with_incoming(TcpListenerStream)` does: a diagnostic, not run by default,
//! showing what that costs (p99 ~45 ms instead of ~4 ms; see BENCHMARKS.md).
//!
//! Prints `listening <addr> nodelay=<bool>` on stdout once bound, then serves
//! until killed.

use std::io::Write;

use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use untaken::proto::v1::mirror_server::{Mirror, MirrorServer};
use untaken::proto::v1::{CompleteRequest, CompleteResponse, MirrorRequest, MirrorResponse};

struct Noop;

#[tonic::async_trait]
impl Mirror for Noop {
    async fn mirror(&self, _request: Request<MirrorRequest>) -> Result<Response<MirrorResponse>, Status> {
        Ok(Response::new(MirrorResponse { sampled: false, ..Default::default() }))
    }

    async fn complete(&self, _request: Request<CompleteRequest>) -> Result<Response<CompleteResponse>, Status> {
        Ok(Response::new(CompleteResponse::default()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nagle = args.iter().any(|a| a == "--nagle");
    let addr = args.iter().find(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {} nodelay={}", listener.local_addr()?, !nagle);
    std::io::stdout().flush()?;
    let incoming = TcpListenerStream::new(listener).map(move |s| {
        s.inspect(|s| {
            if !nagle {
                let _ = s.set_nodelay(true);
            }
        })
    });
    tonic::transport::Server::builder().add_service(MirrorServer::new(Noop)).serve_with_incoming(incoming).await?;
    Ok(())
}
