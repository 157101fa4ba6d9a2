//! gRPC over a Unix socket, the way dfget and dffs reach peerd.

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

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

/// Connects now, failing at once when nothing listens on `path`.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    endpoint()
        .connect_with_connector(connector(path.to_path_buf()))
        .await
}

/// A channel that dials on first use and redials after the server
/// restarts, for long-lived clients such as a dffs mount.
pub fn connect_lazy(path: &Path) -> Channel {
    endpoint()
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect_with_connector_lazy(connector(path.to_path_buf()))
}
