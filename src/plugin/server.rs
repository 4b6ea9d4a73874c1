//! The kubelet plugin's two Unix-socket gRPC servers and their socket files: DRA
//! (`v1.DRAPlugin`, `v1beta1.DRAPlugin` and, when asked for, `v1alpha1.DRAResourceHealth`) on
//! `<plugin dir>/dra.sock`, registration on `<registry dir>/<driver>-reg.sock` (with a pod UID,
//! the rolling-update names of `socket_names`).
//!
//! The registration socket is bound last because the kubelet dials the DRA endpoint as soon as
//! the registration socket appears. A stale socket left by a killed predecessor is removed
//! before binding; on shutdown each server removes its own socket, unless another instance
//! has replaced the file meanwhile (the kubelet must keep seeing that instance).

use std::{
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    net::{UnixListener, UnixStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

use super::{
    ClaimHandler,
    dra::DraService,
    h2_authority::AuthorityNormalizer,
    health::{HealthService, HealthSource, RESEND_INTERVAL},
    registration::{RegistrationService, RegistrationState, supported_versions},
    socket_names::{self, PodUidError},
};
use crate::proto::{
    dra_health_v1alpha1::dra_resource_health_server::DraResourceHealthServer, dra_v1, dra_v1beta1,
    pluginregistration,
};

/// Longest socket path the kernel accepts: `sun_path` holds 108 bytes including the final NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// File name of the DRA socket inside the plugin directory.
pub const DRA_SOCKET_NAME: &str = "dra.sock";

/// Where the plugin's sockets go.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// The DRA driver name; also names the registration socket.
    pub driver_name: String,
    /// The directory the kubelet watches for registration sockets.
    pub registry_dir: PathBuf,
    /// The plugin's private data directory, which holds the DRA socket.
    pub plugin_dir: PathBuf,
    /// The node-agent pod's UID (`--pod-uid`, downward API): when set, both socket names carry
    /// it, so that two pods of one node can run side by side during a rolling update (see
    /// `socket_names`).
    pub pod_uid: Option<String>,
}

impl PluginConfig {
    /// `<registry dir>/<driver>-reg.sock`, or the rolling-update name with the pod UID.
    pub fn registration_socket(&self) -> PathBuf {
        // Whether a name fits is decided on the absolute path the socket is bound at.
        let dir = std::path::absolute(&self.registry_dir).unwrap_or(self.registry_dir.clone());
        dir.join(socket_names::registration_socket_file(
            &dir,
            &self.driver_name,
            self.pod_uid.as_deref(),
        ))
    }

    /// `<plugin dir>/dra.sock`, or `dra-<pod UID>.sock`.
    pub fn dra_socket(&self) -> PathBuf {
        let dir = std::path::absolute(&self.plugin_dir).unwrap_or(self.plugin_dir.clone());
        dir.join(socket_names::dra_socket_file(&dir, self.pod_uid.as_deref()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    PodUid(#[from] PodUidError),
    #[error("cannot create socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot make socket path {path} absolute: {source}")]
    Absolute { path: PathBuf, source: io::Error },
    #[error(
        "socket path {path} is {len} bytes long, more than the {MAX_SOCKET_PATH_BYTES} a Unix \
         socket allows; use a shorter --registry-dir or --plugin-dir"
    )]
    PathTooLong { path: PathBuf, len: usize },
    #[error(
        "{path} exists and is not a socket; refusing to delete it to bind the plugin socket \
         there (move it away or choose another directory)"
    )]
    NotASocket { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot inspect {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot listen on Unix socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot restrict the permissions of {path} to mode {mode:o}: {source}")]
    Permissions {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("gRPC server on {path} failed: {source}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("gRPC server task for {path} ended abnormally: {source}")]
    Task {
        path: PathBuf,
        source: tokio::task::JoinError,
    },
}

/// The running plugin: where its sockets are, what the kubelet said, and how to wait for it.
#[derive(Debug)]
pub struct PluginHandle {
    dra_socket: PathBuf,
    registration_socket: PathBuf,
    registration: watch::Receiver<RegistrationState>,
    dra_task: JoinHandle<Result<(), PluginError>>,
    registration_task: JoinHandle<Result<(), PluginError>>,
}

impl PluginHandle {
    /// Absolute path of the DRA socket (the endpoint given to the kubelet).
    pub fn dra_socket(&self) -> &Path {
        &self.dra_socket
    }

    /// Absolute path of the registration socket.
    pub fn registration_socket(&self) -> &Path {
        &self.registration_socket
    }

    /// Follows the kubelet's verdicts from NotifyRegistrationStatus.
    pub fn registration_state(&self) -> watch::Receiver<RegistrationState> {
        self.registration.clone()
    }

    /// Waits until both servers have stopped and removed their sockets; returns the first
    /// failure. Either server failing stops the other.
    pub async fn join(self) -> Result<(), PluginError> {
        let dra = flatten(&self.dra_socket, self.dra_task.await);
        let registration = flatten(&self.registration_socket, self.registration_task.await);
        dra.and(registration)
    }
}

fn flatten(
    path: &Path,
    joined: Result<Result<(), PluginError>, tokio::task::JoinError>,
) -> Result<(), PluginError> {
    joined.map_err(|source| PluginError::Task {
        path: path.to_path_buf(),
        source,
    })?
}

/// Binds both sockets and serves until `shutdown` is cancelled (or one server fails).
/// Device health is not served nor advertised; see [`serve_with_health`].
pub async fn serve<H: ClaimHandler>(
    config: PluginConfig,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<PluginHandle, PluginError> {
    serve_with_health(config, handler, None, shutdown).await
}

/// [`serve`], plus `v1.DRAResourceHealth` and `v1alpha1.DRAResourceHealth` on the DRA socket
/// (advertised to the kubelet) when `health` is given.
pub async fn serve_with_health<H: ClaimHandler>(
    config: PluginConfig,
    handler: Arc<H>,
    health: Option<HealthSource>,
    shutdown: CancellationToken,
) -> Result<PluginHandle, PluginError> {
    if let Some(uid) = &config.pod_uid {
        socket_names::check_pod_uid(uid)?;
    }
    let dra_path = absolute(&config.dra_socket())?;
    let registration_path = absolute(&config.registration_socket())?;
    // Check both paths before touching anything, so a bad flag fails without side effects.
    check_length(&dra_path)?;
    check_length(&registration_path)?;

    // Either server ending (cancelled or failed) stops the other through this token.
    let stop = shutdown.child_token();
    let (state_tx, state_rx) = watch::channel(RegistrationState::default());
    let versions = supported_versions(health.is_some());

    let dra = DraService::new(handler);
    let health = health.map(|source| HealthService::new(source, RESEND_INTERVAL, stop.clone()));
    let health_v1 = health
        .clone()
        .map(crate::proto::dra_health_v1::dra_resource_health_server::DraResourceHealthServer::new);
    let dra_router = Server::builder()
        .add_service(dra_v1::dra_plugin_server::DraPluginServer::new(dra.clone()))
        .add_service(dra_v1beta1::dra_plugin_server::DraPluginServer::new(dra))
        .add_optional_service(health_v1)
        .add_optional_service(health.map(DraResourceHealthServer::new));
    if let Some(dir) = dra_path.parent() {
        make_private_dir(dir)?;
    }
    let dra_socket = OwnedSocket::bind(&dra_path)?;
    let dra_task = tokio::spawn(run_server(dra_socket, stop.clone(), |incoming, stopped| {
        dra_router.serve_with_incoming_shutdown(incoming, stopped)
    }));
    info!(path = %dra_path.display(), services = ?versions, "DRA gRPC server listening");

    let registration =
        RegistrationService::new(config.driver_name, dra_path.clone(), versions, state_tx);
    let registration_router = Server::builder().add_service(
        pluginregistration::registration_server::RegistrationServer::new(registration),
    );
    let registration_socket = match OwnedSocket::bind(&registration_path) {
        Ok(socket) => socket,
        Err(error) => {
            stop.cancel();
            // The DRA server removes its socket as it stops; its own result adds nothing here.
            let _ = dra_task.await;
            return Err(error);
        }
    };
    let registration_task = tokio::spawn(run_server(
        registration_socket,
        stop,
        |incoming, stopped| registration_router.serve_with_incoming_shutdown(incoming, stopped),
    ));
    info!(path = %registration_path.display(), "registration gRPC server listening");

    Ok(PluginHandle {
        dra_socket: dra_path,
        registration_socket: registration_path,
        registration: state_rx,
        dra_task,
        registration_task,
    })
}

/// Accepted connections, each behind an [`AuthorityNormalizer`]: the kubelet dials the
/// registration socket with a bare path, and h2 would refuse the `:authority` that gives (see
/// `h2_authority`). The DRA and health sockets get the same treatment, so a kubelet that one day
/// dials them that way too still works.
type Incoming = futures::stream::Map<
    UnixListenerStream,
    fn(io::Result<UnixStream>) -> io::Result<AuthorityNormalizer<UnixStream>>,
>;

fn normalized(conn: io::Result<UnixStream>) -> io::Result<AuthorityNormalizer<UnixStream>> {
    conn.map(AuthorityNormalizer::new)
}

/// Serves one socket until `stop` fires, then removes the socket file; a failure stops the
/// sibling server too.
async fn run_server<F, Fut>(
    socket: OwnedSocket,
    stop: CancellationToken,
    serve: F,
) -> Result<(), PluginError>
where
    F: FnOnce(Incoming, tokio_util::sync::WaitForCancellationFutureOwned) -> Fut,
    Fut: Future<Output = Result<(), tonic::transport::Error>>,
{
    let OwnedSocket {
        listener,
        path,
        identity,
    } = socket;
    let normalize: fn(_) -> _ = normalized;
    let incoming = futures::StreamExt::map(UnixListenerStream::new(listener), normalize);
    let result = serve(incoming, stop.clone().cancelled_owned()).await;
    stop.cancel();
    remove_if_ours(&path, identity);
    info!(path = %path.display(), "gRPC server stopped");
    result.map_err(|source| PluginError::Serve { path, source })
}

/// A bound listener and the identity of the socket file it created.
struct OwnedSocket {
    listener: UnixListener,
    path: PathBuf,
    identity: FileIdentity,
}

/// Device and inode of a file: tells our socket from one a successor bound at the same path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

impl OwnedSocket {
    fn bind(path: &Path) -> Result<Self, PluginError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| PluginError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|source| PluginError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        if let Err(e) = set_mode(path, SOCKET_MODE) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let metadata = std::fs::symlink_metadata(path).map_err(|source| PluginError::Inspect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity: FileIdentity::of(&metadata),
        })
    }
}

/// Socket files: the kubelet (root) and the agent only. Whoever can connect to the DRA socket
/// can prepare claims, i.e. write device registers and CDI specs.
const SOCKET_MODE: u32 = 0o600;
/// The plugin directory holds the DRA socket and the checkpoint: owner only. The registry
/// directory belongs to the kubelet and is shared with other plugins, so it is left alone.
const PLUGIN_DIR_MODE: u32 = 0o700;

/// Creates the plugin directory if needed and makes it owner-only.
fn make_private_dir(dir: &Path) -> Result<(), PluginError> {
    std::fs::create_dir_all(dir).map_err(|source| PluginError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    set_mode(dir, PLUGIN_DIR_MODE)
}

/// Sets `mode` on `path`; bind creates a socket with whatever the umask leaves.
fn set_mode(path: &Path, mode: u32) -> Result<(), PluginError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        PluginError::Permissions {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })
}

fn absolute(path: &Path) -> Result<PathBuf, PluginError> {
    std::path::absolute(path).map_err(|source| PluginError::Absolute {
        path: path.to_path_buf(),
        source,
    })
}

fn check_length(path: &Path) -> Result<(), PluginError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(PluginError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// Removes a socket file left at `path` by an earlier instance; anything else is left alone.
fn remove_stale(path: &Path) -> Result<(), PluginError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PluginError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(PluginError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    warn!(path = %path.display(), "removing stale socket left by an earlier instance");
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PluginError::RemoveStale {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes the socket file at `path` if it is still the one we bound. Failures are only
/// logged: the server has stopped either way, and a leftover socket is removed as stale by the
/// next start.
fn remove_if_ours(path: &Path, identity: FileIdentity) {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if FileIdentity::of(&metadata) == identity => {
            if let Err(error) = std::fs::remove_file(path) {
                warn!(path = %path.display(), %error, "cannot remove own socket");
            }
        }
        Ok(_) => info!(path = %path.display(), "socket was replaced by another instance; kept"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => warn!(path = %path.display(), %error, "cannot inspect own socket"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> PluginConfig {
        PluginConfig {
            driver_name: "mock-accel.example.com".into(),
            registry_dir: root.join("plugins_registry"),
            plugin_dir: root.join("plugins/mock-accel.example.com"),
            pod_uid: None,
        }
    }

    #[test]
    fn socket_paths_follow_the_kubelet_layout() {
        let config = config(Path::new("/var/lib/kubelet"));
        assert_eq!(
            config.registration_socket(),
            Path::new("/var/lib/kubelet/plugins_registry/mock-accel.example.com-reg.sock")
        );
        assert_eq!(
            config.dra_socket(),
            Path::new("/var/lib/kubelet/plugins/mock-accel.example.com/dra.sock")
        );
    }

    #[test]
    fn socket_paths_carry_the_pod_uid_during_a_rolling_update() {
        let uid = "0f6e5d4c-3b2a-4190-8a7b-6c5d4e3f2a10";
        let config = PluginConfig {
            pod_uid: Some(uid.into()),
            ..config(Path::new("/var/lib/kubelet"))
        };
        assert_eq!(
            config.registration_socket(),
            Path::new(&format!(
                "/var/lib/kubelet/plugins_registry/mock-accel.example.com-{uid}-reg.sock"
            ))
        );
        assert_eq!(
            config.dra_socket(),
            Path::new(&format!(
                "/var/lib/kubelet/plugins/mock-accel.example.com/dra-{uid}.sock"
            ))
        );
    }

    #[tokio::test]
    async fn a_pod_uid_that_is_no_file_name_is_refused_before_anything_is_bound() {
        struct Nobody;
        impl ClaimHandler for Nobody {
            async fn prepare(
                &self,
                _: Vec<super::super::ClaimRef>,
            ) -> super::super::PrepareResults {
                Default::default()
            }
            async fn unprepare(
                &self,
                _: Vec<super::super::ClaimRef>,
            ) -> super::super::UnprepareResults {
                Default::default()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let config = PluginConfig {
            pod_uid: Some("../evil".into()),
            ..config(dir.path())
        };
        let error = serve(config, Arc::new(Nobody), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("'.' at byte 0"), "{error}");
        assert!(!dir.path().join("plugins").exists(), "nothing created");
    }

    #[test]
    fn length_limit_counts_bytes() {
        let ok = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH_BYTES - 1)));
        assert!(check_length(&ok).is_ok());
        let long = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH_BYTES)));
        let error = check_length(&long).unwrap_err();
        assert!(
            matches!(error, PluginError::PathTooLong { len: 108, .. }),
            "{error}"
        );
        assert!(error.to_string().contains(&long.display().to_string()));
    }

    #[test]
    fn stale_removal_spares_regular_files_and_ignores_absent_paths() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.sock");
        assert!(remove_stale(&absent).is_ok());
        let file = dir.path().join("file.sock");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(
            remove_stale(&file),
            Err(PluginError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn sockets_and_the_plugin_directory_are_not_world_accessible() {
        let dir = tempfile::tempdir().unwrap();
        let plugin_dir = dir.path().join("plugins/mock-accel.example.com");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        // As a kubelet's DirectoryOrCreate or a generous umask would leave it.
        std::fs::set_permissions(&plugin_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        make_private_dir(&plugin_dir).unwrap();
        let socket = OwnedSocket::bind(&plugin_dir.join(DRA_SOCKET_NAME)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&plugin_dir), 0o700);
        assert_eq!(mode(&socket.path), 0o600);
    }

    #[tokio::test]
    async fn own_socket_is_removed_but_a_replacement_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = OwnedSocket::bind(&path).unwrap();
        remove_if_ours(&path, first.identity);
        assert!(!path.exists());

        let second = OwnedSocket::bind(&path).unwrap();
        // A successor's socket replaces ours at the same path before we clean up (bound
        // elsewhere and renamed over it, so that the two files surely differ).
        let elsewhere = dir.path().join("successor.sock");
        let successor = OwnedSocket::bind(&elsewhere).unwrap();
        std::fs::rename(&elsewhere, &path).unwrap();
        remove_if_ours(&path, second.identity);
        let left = std::fs::symlink_metadata(&path).unwrap();
        assert!(left.file_type().is_socket());
        assert_eq!(FileIdentity::of(&left), successor.identity);
    }
}
