//! The transport seam: every connection dffs makes or accepts is built
//! here, and nowhere else. gRPC channels to the scheduler and to peerd's
//! Unix socket, the gRPC servers' builder and incoming connections, and
//! the data plane's piece connections all come from these functions, so
//! that TLS (and mTLS identities) can later be switched on in this one
//! place without touching a caller.

use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

/// The endpoint URI is required by tonic but never used: the connector
/// below ignores it and dials the socket.
const PLACEHOLDER_URI: &str = "http://peerd.local";

fn endpoint() -> Endpoint {
    Endpoint::from_static(PLACEHOLDER_URI)
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) }
    })
}

/// Connects to a local socket now, failing at once when nothing listens
/// on `path`.
pub async fn connect_local(path: &Path) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .connect_with_connector(connector(path.to_path_buf()))
        .await
}

/// A channel to a local socket that dials on first use and redials after
/// the server restarts, for long-lived clients such as a dffs mount.
pub fn connect_local_lazy(path: &Path) -> Channel {
    endpoint()
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector_lazy(connector(path.to_path_buf()))
}

/// A channel to a scheduler at `addr`, dialled on first use and redialled
/// after failures.
pub fn scheduler_channel(addr: SocketAddr) -> Channel {
    // A socket address always makes a valid URI.
    let uri: Uri = format!("http://{addr}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static(PLACEHOLDER_URI));
    Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .connect_lazy()
}

/// The builder every gRPC server of dffs starts from.
pub fn grpc_server() -> Server {
    Server::builder().tcp_nodelay(true)
}

/// The connections a TCP gRPC server accepts. `Server::tcp_nodelay` covers
/// only listeners the server binds itself; these have it set one by one,
/// or every reply over a few KB would wait for a delayed ACK. A failed
/// accept (out of file descriptors, say) is logged and retried after a
/// pause, never handed to the server, which would spin on it.
pub fn tcp_incoming(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let (stream, _) = accept_patiently(|| listener.accept()).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        Some((Ok(stream), listener))
    })
}

/// The connections a Unix-socket gRPC server accepts, retried like
/// [`tcp_incoming`]'s.
pub fn unix_incoming(
    listener: UnixListener,
) -> impl Stream<Item = std::io::Result<UnixStream>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let (stream, _) = accept_patiently(|| listener.accept()).await;
        Some((Ok(stream), listener))
    })
}

/// How long to wait after a failed accept before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts the next connection, waiting out failures: an accept fails
/// when the process is out of file descriptors, and trying again at once
/// would take a core until some are freed.
async fn accept_patiently<S, A, F, Fut>(accept: F) -> (S, A)
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<(S, A)>>,
{
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Dials a peer's data plane (piece uploads) at `addr`.
pub async fn dial_data(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Accepts the next data-plane connection, waiting out failed accepts.
pub async fn accept_data(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let (stream, peer) = accept_patiently(|| listener.accept()).await;
    // A piece header must not wait for the ACK of the one before.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
    }
    (stream, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_grpc_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(tcp_incoming(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = tokio_stream::StreamExt::next(&mut incoming)
            .await
            .unwrap()
            .unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
