//! The kubelet plugin over real Unix sockets in a temporary directory, driven by the generated
//! gRPC clients the way the kubelet drives it: find the registration socket, GetInfo, dial the
//! advertised endpoint, NodePrepareResources / NodeUnprepareResources.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use mock_accel_dra::{
    plugin::{
        ClaimHandler, ClaimRef, PrepareResults, PreparedDevice, UnprepareResults,
        registration::RegistrationState,
        server::{PluginConfig, PluginError, PluginHandle, serve},
    },
    proto::{
        dra_v1::{self, dra_plugin_client::DraPluginClient as V1Client},
        dra_v1beta1::{self, dra_plugin_client::DraPluginClient as V1beta1Client},
        pluginregistration::{
            InfoRequest, RegistrationStatus, registration_client::RegistrationClient,
        },
    },
};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

const DRIVER: &str = "mock-accel.example.com";
const LIMIT: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Opens a gRPC channel over the Unix socket at `path`, as the kubelet does (the URI is unused).
async fn connect(path: &Path) -> Result<Channel, Box<dyn std::error::Error>> {
    let path = path.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(channel)
}

fn config(root: &Path) -> PluginConfig {
    PluginConfig {
        driver_name: DRIVER.to_string(),
        registry_dir: root.join("plugins_registry"),
        plugin_dir: root.join("plugins").join(DRIVER),
    }
}

/// Prepares every claim with one device named after the claim, except claims whose name starts
/// with `fail`, and records each batch it is given.
#[derive(Default)]
struct FakeHandler {
    prepared: Mutex<Vec<Vec<ClaimRef>>>,
    unprepared: Mutex<Vec<Vec<ClaimRef>>>,
}

fn fake_device(claim: &ClaimRef) -> PreparedDevice {
    PreparedDevice {
        request_names: vec!["accel".to_string()],
        pool_name: "node-a/numa0".to_string(),
        device_name: format!("dev-{}", claim.name),
        cdi_device_ids: vec![format!("{DRIVER}/accel={}-dev-{}", claim.uid, claim.name)],
        share_id: Some(format!("share-{}", claim.name)),
    }
}

impl ClaimHandler for FakeHandler {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let results = claims
            .iter()
            .map(|claim| {
                let result = if claim.name.starts_with("fail") {
                    Err(format!("cannot prepare {claim}: device busy"))
                } else {
                    Ok(vec![fake_device(claim)])
                };
                (claim.uid.clone(), result)
            })
            .collect();
        self.prepared.lock().unwrap().push(claims);
        results
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let results = claims
            .iter()
            .map(|claim| {
                let result = if claim.name.starts_with("fail") {
                    Err(format!("cannot unprepare {claim}: register stuck"))
                } else {
                    Ok(())
                };
                (claim.uid.clone(), result)
            })
            .collect();
        self.unprepared.lock().unwrap().push(claims);
        results
    }
}

struct Running {
    handle: PluginHandle,
    shutdown: CancellationToken,
}

impl Running {
    async fn start<H: ClaimHandler>(root: &Path, handler: Arc<H>) -> Result<Self, PluginError> {
        let shutdown = CancellationToken::new();
        let handle = serve(config(root), handler, shutdown.clone()).await?;
        Ok(Self { handle, shutdown })
    }

    async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        tokio::time::timeout(LIMIT, self.handle.join()).await??;
        Ok(())
    }
}

fn v1_claim(uid: &str, name: &str) -> dra_v1::Claim {
    dra_v1::Claim {
        namespace: "default".into(),
        uid: uid.into(),
        name: name.into(),
    }
}

fn v1beta1_claim(uid: &str, name: &str) -> dra_v1beta1::Claim {
    dra_v1beta1::Claim {
        namespace: "default".into(),
        uid: uid.into(),
        name: name.into(),
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Asks GetInfo on the registration socket, as the kubelet's plugin watcher does.
async fn plugin_info(
    registration_socket: &Path,
) -> Result<mock_accel_dra::proto::pluginregistration::PluginInfo, Box<dyn std::error::Error>> {
    let mut client = RegistrationClient::new(connect(registration_socket).await?);
    Ok(client.get_info(InfoRequest {}).await?.into_inner())
}

#[tokio::test]
async fn registration_flow_reports_the_kubelets_verdict() -> TestResult {
    let root = tempfile::tempdir()?;
    let plugin = Running::start(root.path(), Arc::new(FakeHandler::default())).await?;
    let registration_socket = root
        .path()
        .join("plugins_registry")
        .join(format!("{DRIVER}-reg.sock"));
    assert_eq!(plugin.handle.registration_socket(), registration_socket);
    assert!(is_socket(&registration_socket));

    let info = plugin_info(&registration_socket).await?;
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRIVER);
    let endpoint = PathBuf::from(&info.endpoint);
    assert!(endpoint.is_absolute(), "{endpoint:?}");
    assert_eq!(
        endpoint,
        root.path().join("plugins").join(DRIVER).join("dra.sock")
    );
    assert!(is_socket(&endpoint));
    assert_eq!(
        info.supported_versions,
        ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    );

    let mut state = plugin.handle.registration_state();
    assert_eq!(*state.borrow_and_update(), RegistrationState::default());
    let mut client = RegistrationClient::new(connect(&registration_socket).await?);

    let refused = client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: "endpoint already registered".into(),
        })
        .await
        .expect_err("a refusal is answered with an error, like the Go helper");
    assert!(
        refused.message().contains("endpoint already registered"),
        "{refused:?}"
    );
    tokio::time::timeout(LIMIT, state.changed()).await??;
    assert_eq!(
        *state.borrow_and_update(),
        RegistrationState {
            registered: false,
            error: "endpoint already registered".into()
        }
    );

    client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await?;
    tokio::time::timeout(LIMIT, state.changed()).await??;
    assert_eq!(
        *state.borrow_and_update(),
        RegistrationState {
            registered: true,
            error: String::new()
        }
    );
    plugin.stop().await
}

#[tokio::test]
async fn prepare_and_unprepare_through_v1() -> TestResult {
    let root = tempfile::tempdir()?;
    let handler = Arc::new(FakeHandler::default());
    let plugin = Running::start(root.path(), Arc::clone(&handler)).await?;
    let info = plugin_info(plugin.handle.registration_socket()).await?;
    let mut client = V1Client::new(connect(Path::new(&info.endpoint)).await?);

    let response = client
        .node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: vec![
                v1_claim("uid-a", "a"),
                v1_claim("uid-b", "fail-b"),
                v1_claim("uid-c", ""),
            ],
        })
        .await?
        .into_inner();
    assert_eq!(
        response.claims.len(),
        3,
        "every claim gets an entry: {response:?}"
    );
    let a = &response.claims["uid-a"];
    assert_eq!(a.error, "");
    assert_eq!(
        a.devices,
        [dra_v1::Device {
            request_names: vec!["accel".into()],
            pool_name: "node-a/numa0".into(),
            device_name: "dev-a".into(),
            cdi_device_ids: vec![format!("{DRIVER}/accel=uid-a-dev-a")],
            share_id: Some("share-a".into()),
        }]
    );
    let b = &response.claims["uid-b"];
    assert!(b.devices.is_empty());
    assert!(b.error.contains("device busy"), "{}", b.error);
    assert!(response.claims["uid-c"].error.contains("empty name"));
    // The claim without a name never reached the handler.
    assert_eq!(
        handler.prepared.lock().unwrap().clone(),
        [vec![
            ClaimRef {
                namespace: "default".into(),
                uid: "uid-a".into(),
                name: "a".into()
            },
            ClaimRef {
                namespace: "default".into(),
                uid: "uid-b".into(),
                name: "fail-b".into()
            },
        ]]
    );

    let response = client
        .node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest {
            claims: vec![v1_claim("uid-a", "a"), v1_claim("uid-b", "fail-b")],
        })
        .await?
        .into_inner();
    assert_eq!(response.claims.len(), 2);
    assert_eq!(response.claims["uid-a"].error, "");
    assert!(response.claims["uid-b"].error.contains("register stuck"));
    assert_eq!(handler.unprepared.lock().unwrap().len(), 1);
    plugin.stop().await
}

#[tokio::test]
async fn prepare_and_unprepare_through_v1beta1() -> TestResult {
    let root = tempfile::tempdir()?;
    let handler = Arc::new(FakeHandler::default());
    let plugin = Running::start(root.path(), Arc::clone(&handler)).await?;
    let mut client = V1beta1Client::new(connect(plugin.handle.dra_socket()).await?);

    let response = client
        .node_prepare_resources(dra_v1beta1::NodePrepareResourcesRequest {
            claims: vec![v1beta1_claim("uid-a", "a"), v1beta1_claim("uid-a", "a")],
        })
        .await?
        .into_inner();
    assert_eq!(response.claims.len(), 1);
    let devices = &response.claims["uid-a"].devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device_name, "dev-a");
    assert_eq!(
        devices[0].cdi_device_ids,
        [format!("{DRIVER}/accel=uid-a-dev-a")]
    );
    // The repeated claim reached the handler once.
    assert_eq!(handler.prepared.lock().unwrap()[0].len(), 1);

    let response = client
        .node_unprepare_resources(dra_v1beta1::NodeUnprepareResourcesRequest {
            claims: vec![v1beta1_claim("uid-a", "a"), v1beta1_claim("uid-z", "gone")],
        })
        .await?
        .into_inner();
    let errors: HashMap<&str, &str> = response
        .claims
        .iter()
        .map(|(uid, r)| (uid.as_str(), r.error.as_str()))
        .collect();
    assert_eq!(errors, HashMap::from([("uid-a", ""), ("uid-z", "")]));
    plugin.stop().await
}

#[tokio::test]
async fn stale_sockets_are_replaced_at_start() -> TestResult {
    let root = tempfile::tempdir()?;
    let config = config(root.path());
    for path in [config.registration_socket(), config.dra_socket()] {
        std::fs::create_dir_all(path.parent().unwrap())?;
        // A listener that is dropped leaves its socket file behind, like a killed process.
        drop(std::os::unix::net::UnixListener::bind(&path)?);
        assert!(is_socket(&path));
        assert!(
            UnixStream::connect(&path).await.is_err(),
            "nobody listens on {path:?}"
        );
    }
    let plugin = Running::start(root.path(), Arc::new(FakeHandler::default())).await?;
    let info = plugin_info(&config.registration_socket()).await?;
    assert_eq!(info.name, DRIVER);
    let mut client = V1Client::new(connect(&config.dra_socket()).await?);
    let response = client
        .node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest {
            claims: vec![v1_claim("uid-a", "a")],
        })
        .await?;
    assert_eq!(response.into_inner().claims["uid-a"].error, "");
    plugin.stop().await
}

#[tokio::test]
async fn sockets_are_removed_on_shutdown() -> TestResult {
    let root = tempfile::tempdir()?;
    let plugin = Running::start(root.path(), Arc::new(FakeHandler::default())).await?;
    let sockets = [
        plugin.handle.registration_socket().to_path_buf(),
        plugin.handle.dra_socket().to_path_buf(),
    ];
    // A connected client must not keep the servers from stopping.
    let _client = RegistrationClient::new(connect(&sockets[0]).await?);
    assert!(sockets.iter().all(|s| is_socket(s)));
    plugin.stop().await?;
    for socket in &sockets {
        assert!(!socket.exists(), "{socket:?} left behind");
    }
    Ok(())
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_refused_and_kept() -> TestResult {
    let root = tempfile::tempdir()?;
    let config = config(root.path());
    let registration_socket = config.registration_socket();
    std::fs::create_dir_all(&config.registry_dir)?;
    std::fs::write(&registration_socket, "not a socket")?;

    let error = match Running::start(root.path(), Arc::new(FakeHandler::default())).await {
        Ok(_) => return Err("the plugin started over a regular file".into()),
        Err(error) => error,
    };
    assert!(matches!(error, PluginError::NotASocket { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&registration_socket.display().to_string()),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&registration_socket)?,
        "not a socket"
    );
    // The DRA server, already started, was stopped and cleaned up.
    assert!(!config.dra_socket().exists());
    Ok(())
}

#[tokio::test]
async fn an_overlong_socket_path_is_refused_before_anything_is_created() -> TestResult {
    let root = tempfile::tempdir()?;
    let deep = root.path().join("d".repeat(120));
    let error = match Running::start(&deep, Arc::new(FakeHandler::default())).await {
        Ok(_) => return Err("the plugin started on an over-long path".into()),
        Err(error) => error,
    };
    assert!(matches!(error, PluginError::PathTooLong { .. }), "{error}");
    assert!(error.to_string().contains("dra.sock"), "{error}");
    assert!(!deep.exists());
    Ok(())
}
