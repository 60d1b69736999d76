//! Serving CRI on a unix socket: socket housekeeping, HTTP/2 connections, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;

use crate::authority::{self, AuthorityFix};
use crate::error::{Error, Result};
use crate::route;
use crate::router::Router;

/// Where and how to listen.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// The unix socket path kubelet connects to.
    pub socket: PathBuf,
    /// Its file mode (kubelet runs as root; group access lets tools read it).
    pub mode: u32,
    /// How long in-flight calls may finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

/// Prepares the socket path: creates parent directories, replaces a stale socket, refuses a
/// live one or a non-socket file, binds and sets the mode.
pub async fn bind(opts: &ListenOptions) -> Result<UnixListener> {
    let path = opts.socket.as_path();
    let err = |step, source| Error::Listen {
        path: path.to_owned(),
        step,
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err("create parent directory", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Error::SocketInUse {
                    path: path.to_owned(),
                });
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path).map_err(|e| err("remove stale socket", e))?;
        }
        Ok(_) => {
            return Err(Error::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("inspect socket path", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| err("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode))
        .map_err(|e| err("set mode", e))?;
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight calls finish
/// for up to the grace period and removes the socket file.
pub async fn serve(
    listener: UnixListener,
    opts: &ListenOptions,
    router: Router,
    metrics: Option<Arc<netready_metrics::Metrics>>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let router = Arc::new(router);
    let metrics = metrics.map(|m| crate::observe::CriMetrics::register(&m));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // Large CRI messages (ListContainers on a busy node) must not stall on window updates.
        .initial_connection_window_size(4 * 1024 * 1024)
        .initial_stream_window_size(2 * 1024 * 1024)
        // The authority adapter parses the client's frames against these: one source for both.
        .max_frame_size(authority::MAX_FRAME_SIZE)
        .header_table_size(authority::HEADER_TABLE_SIZE)
        .max_header_list_size(authority::MAX_HEADER_LIST_SIZE);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds and the like: log and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let metrics = metrics.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let router = router.clone();
            let metrics = metrics.clone();
            async move {
                let path = req.uri().path().to_owned();
                let start = Instant::now();
                let (resp, outcome) = router.handle(req).await;
                tracing::debug!(
                    method = route::method_name(&path),
                    route = outcome.owner.as_str(),
                    code = ?outcome.code,
                    micros = start.elapsed().as_micros() as u64,
                    "cri call"
                );
                let resp = match &metrics {
                    Some(m) => {
                        crate::observe::observe(m, &path, outcome.owner.as_str(), start, resp)
                    }
                    None => resp,
                };
                Ok::<_, Infallible>(resp)
            }
        });
        // Real clients send a socket path as :authority, which h2 alone would refuse.
        let conn = builder.serve_connection(TokioIo::new(AuthorityFix::new(stream)), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    tracing::info!("shutting down: no new connections, finishing calls in flight");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!(grace = ?opts.shutdown_grace, "calls still in flight after the grace period");
        }
    }
    remove_socket(&opts.socket);
    Ok(())
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(socket = %path.display(), error = %e, "removing socket");
        }
    }
}
