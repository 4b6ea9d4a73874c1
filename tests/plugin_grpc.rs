//! The kubelet plugin over real Unix sockets in a temporary directory, driven by the generated
//! gRPC clients the way the kubelet drives it: find the registration socket, GetInfo, dial the
//! advertised endpoint, NodePrepareResources / NodeUnprepareResources.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use mock_accel_dra::test_support::socket::connect;
use mock_accel_dra::{
    plugin::{
        ClaimHandler, ClaimRef, PrepareResults, PreparedDevice, UnprepareResults,
        registration::RegistrationState,
        server::{PluginConfig, PluginError, PluginHandle, serve},
    },
    proto::{
        dra_health_v1alpha1::{
            NodeWatchResourcesRequest,
            dra_resource_health_client::DraResourceHealthClient as HealthClient,
        },
        dra_v1::{self, dra_plugin_client::DraPluginClient as V1Client},
        dra_v1beta1::{self, dra_plugin_client::DraPluginClient as V1beta1Client},
        pluginregistration::{
            InfoRequest, RegistrationStatus, registration_client::RegistrationClient,
        },
    },
};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

const DRIVER: &str = "mock-accel.example.com";
const LIMIT: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error>>;

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
async fn device_health_is_not_served_unless_asked_for() -> TestResult {
    let root = tempfile::tempdir()?;
    let plugin = Running::start(root.path(), Arc::new(FakeHandler::default())).await?;
    let info = plugin_info(plugin.handle.registration_socket()).await?;
    assert!(
        !info.supported_versions.iter().any(|v| v.contains("Health")),
        "{info:?}"
    );
    let mut health = HealthClient::new(connect(plugin.handle.dra_socket()).await?);
    let status = health
        .node_watch_resources(NodeWatchResourcesRequest {})
        .await
        .expect_err("no health service");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
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

// ---- the real Preparer behind the sockets -----------------------------------------------------

mod real {
    //! The node agent's real claim handler on a simulated node (the canonical `sim` tree:
    //! mock0 PF + mock1, mock2 VFs on NUMA 0; mock3 PF + mock4, mock5 VFs on NUMA 1), with
    //! claims served from a map instead of the API server.

    use std::collections::BTreeMap;

    use k8s_openapi::api::resource::v1::DeviceRequestAllocationResult;
    use mock_accel_dra::{
        cdi, checkpoint,
        checkpoint::PrepareState,
        inventory::Inventory,
        plugin::{
            metrics::PrepareMetrics,
            prepare::{Preparer, PreparerConfig},
        },
        sim::{self, TopologySpec},
        sysfs,
        test_support::claims::{self, ClaimMap, allocated},
    };
    use prometheus_client::registry::Registry;
    use tempfile::TempDir;
    use tokio::sync::watch;

    use super::*;

    const NODE: &str = "node-a";
    use claims::NS;
    /// Register value before any prepare, distinct from what prepare (1) and unprepare (0) write.
    const IDLE: u32 = 5;

    fn result(request: &str, device: &str, numa: u32) -> DeviceRequestAllocationResult {
        claims::result(request, device, &format!("{NODE}/numa{numa}"))
    }

    fn claim(uid: &str, name: &str) -> dra_v1::Claim {
        dra_v1::Claim {
            namespace: NS.into(),
            uid: uid.into(),
            name: name.into(),
        }
    }

    fn device(request: &str, device: &str, numa: u32, uid: &str) -> dra_v1::Device {
        dra_v1::Device {
            request_names: vec![request.into()],
            pool_name: format!("{NODE}/numa{numa}"),
            device_name: device.into(),
            cdi_device_ids: vec![cdi::qualified_device_id(DRIVER, uid, device)],
            share_id: None,
        }
    }

    /// A simulated node on disk: sysfs and /dev trees, CDI dir, kubelet dirs.
    struct TestNode {
        _tmp: TempDir,
        root: PathBuf,
        preparer: PreparerConfig,
        inventory: watch::Sender<Arc<Inventory>>,
        claims: ClaimMap,
    }

    /// A started plugin and the kubelet's client for the endpoint it advertised.
    struct Kubelet {
        plugin: Running,
        dra: V1Client<tonic::transport::Channel>,
    }

    impl Kubelet {
        async fn prepare(
            &mut self,
            claims: Vec<dra_v1::Claim>,
        ) -> Result<HashMap<String, dra_v1::NodePrepareResourceResponse>, tonic::Status> {
            let request = dra_v1::NodePrepareResourcesRequest { claims };
            Ok(self
                .dra
                .node_prepare_resources(request)
                .await?
                .into_inner()
                .claims)
        }

        async fn unprepare(
            &mut self,
            claims: Vec<dra_v1::Claim>,
        ) -> Result<HashMap<String, String>, tonic::Status> {
            let request = dra_v1::NodeUnprepareResourcesRequest { claims };
            let response = self
                .dra
                .node_unprepare_resources(request)
                .await?
                .into_inner();
            Ok(response
                .claims
                .into_iter()
                .map(|(uid, r)| (uid, r.error))
                .collect())
        }
    }

    impl TestNode {
        fn new() -> Result<Self, Box<dyn std::error::Error>> {
            let tmp = tempfile::tempdir()?;
            let root = tmp.path().to_path_buf();
            let preparer = PreparerConfig {
                driver_name: DRIVER.into(),
                node_name: NODE.into(),
                sysfs_root: root.join("sys"),
                dev_root: root.join("dev"),
                cdi_dir: root.join("run/cdi"),
                plugin_dir: config(&root).plugin_dir,
                layout: Default::default(),
            };
            sim::create(
                &preparer.sysfs_root,
                Some(&preparer.dev_root),
                &TopologySpec::canonical(1),
            )?;
            let scan = sysfs::scan(&preparer.sysfs_root)?;
            assert_eq!(scan.inventory.devices.len(), 6, "{:?}", scan.warnings);
            for d in &scan.inventory.devices {
                sysfs::write_status(&preparer.sysfs_root, &d.sysfs_name, IDLE)?;
            }
            let (inventory, _) = watch::channel(Arc::new(scan.inventory));
            Ok(Self {
                _tmp: tmp,
                root,
                preparer,
                inventory,
                claims: ClaimMap::default(),
            })
        }

        /// Starts a fresh Preparer behind fresh servers, as a new node-agent process would, and
        /// dials the endpoint that GetInfo names.
        async fn start(&self) -> Result<Kubelet, Box<dyn std::error::Error>> {
            let metrics = PrepareMetrics::register(&mut Registry::default());
            let preparer = Preparer::new(
                self.preparer.clone(),
                self.inventory.subscribe(),
                self.claims.clone(),
                metrics,
            )?;
            let plugin = Running::start(&self.root, Arc::new(preparer)).await?;
            let info = plugin_info(plugin.handle.registration_socket()).await?;
            let dra = V1Client::new(connect(Path::new(&info.endpoint)).await?);
            Ok(Kubelet { plugin, dra })
        }

        fn register(&self, sysfs_name: &str) -> u32 {
            sysfs::read_status(&self.preparer.sysfs_root, sysfs_name).unwrap()
        }

        fn registers(&self) -> BTreeMap<String, u32> {
            (0..6)
                .map(|i| format!("mock{i}"))
                .map(|name| {
                    let value = self.register(&name);
                    (name, value)
                })
                .collect()
        }

        fn spec_path(&self, uid: &str) -> PathBuf {
            cdi::spec_path(&self.preparer.cdi_dir, DRIVER, uid)
        }

        fn spec_files(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.preparer.cdi_dir)
                .map(|entries| {
                    entries
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }

        /// The CDI device ids a container runtime can resolve from the CDI directory, read
        /// with the reference CDI library.
        fn resolvable_cdi_ids(&self) -> Vec<String> {
            use container_device_interface::{cache, spec_dirs};
            let dir = self.preparer.cdi_dir.to_string_lossy().into_owned();
            let cache = cache::new_cache(vec![
                spec_dirs::with_spec_dirs(&[dir.as_str()]),
                cache::with_auto_refresh(false),
            ]);
            let mut cache = cache.lock().unwrap();
            if let Err(error) = cache.refresh() {
                panic!("CDI specs in {dir} do not load: {error}");
            }
            cache.list_devices()
        }

        fn checkpoint_path(&self) -> PathBuf {
            checkpoint::checkpoint_path(&self.preparer.plugin_dir)
        }
    }

    fn expected_registers(prepared: &[&str]) -> BTreeMap<String, u32> {
        (0..6)
            .map(|i| format!("mock{i}"))
            .map(|name| {
                let value = if prepared.contains(&name.as_str()) {
                    1
                } else {
                    IDLE
                };
                (name, value)
            })
            .collect()
    }

    #[tokio::test]
    async fn single_and_multi_device_claims_round_trip() -> TestResult {
        let node = TestNode::new()?;
        node.claims
            .put(allocated("uid-one", "one", vec![result("vf", "mock1", 0)]));
        node.claims.put(allocated(
            "uid-two",
            "two",
            vec![result("pf", "mock3", 1), result("vfs/small", "mock5", 1)],
        ));
        let mut kubelet = node.start().await?;

        let answers = kubelet
            .prepare(vec![claim("uid-one", "one"), claim("uid-two", "two")])
            .await?;
        assert_eq!(answers.len(), 2);
        assert_eq!(answers["uid-one"].error, "");
        assert_eq!(
            answers["uid-one"].devices,
            [device("vf", "mock1", 0, "uid-one")]
        );
        assert_eq!(answers["uid-two"].error, "");
        assert_eq!(
            answers["uid-two"].devices,
            [
                device("pf", "mock3", 1, "uid-two"),
                device("vfs", "mock5", 1, "uid-two")
            ]
        );
        assert_eq!(
            node.registers(),
            expected_registers(&["mock1", "mock3", "mock5"])
        );
        assert!(node.spec_path("uid-one").is_file());
        assert!(node.spec_path("uid-two").is_file());
        // Every id handed to the kubelet resolves through the reference CDI library.
        let resolvable = node.resolvable_cdi_ids();
        for answer in answers.values() {
            for id in answer.devices.iter().flat_map(|d| &d.cdi_device_ids) {
                assert!(resolvable.contains(id), "{id} not in {resolvable:?}");
            }
        }

        let errors = kubelet
            .unprepare(vec![claim("uid-one", "one"), claim("uid-two", "two")])
            .await?;
        assert_eq!(
            errors,
            HashMap::from([("uid-one".into(), "".into()), ("uid-two".into(), "".into())])
        );
        assert_eq!(node.registers().values().filter(|v| **v == 0).count(), 3);
        assert_eq!(node.register("mock1"), 0);
        assert_eq!(node.register("mock0"), IDLE);
        assert!(node.spec_files().is_empty(), "{:?}", node.spec_files());
        assert!(checkpoint::load(&node.checkpoint_path())?.claims.is_empty());
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn prepare_and_unprepare_are_idempotent() -> TestResult {
        let node = TestNode::new()?;
        node.claims
            .put(allocated("uid-one", "one", vec![result("vf", "mock2", 0)]));
        let mut kubelet = node.start().await?;

        let first = kubelet.prepare(vec![claim("uid-one", "one")]).await?;
        let spec = std::fs::read(node.spec_path("uid-one"))?;
        let again = kubelet.prepare(vec![claim("uid-one", "one")]).await?;
        assert_eq!(first, again);
        assert_eq!(
            again["uid-one"].devices,
            [device("vf", "mock2", 0, "uid-one")]
        );
        assert_eq!(std::fs::read(node.spec_path("uid-one"))?, spec);
        assert_eq!(node.spec_files().len(), 1);
        assert_eq!(node.register("mock2"), 1);

        for _ in 0..2 {
            let errors = kubelet.unprepare(vec![claim("uid-one", "one")]).await?;
            assert_eq!(errors["uid-one"], "");
            assert_eq!(node.register("mock2"), 0);
            assert!(node.spec_files().is_empty());
        }
        // A claim this node never prepared unprepares fine too.
        let errors = kubelet.unprepare(vec![claim("uid-never", "never")]).await?;
        assert_eq!(errors["uid-never"], "");
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn results_of_another_driver_are_left_alone() -> TestResult {
        let node = TestNode::new()?;
        let mut foreign = result("gpu", "gpu-0", 0);
        foreign.driver = "gpu.example.com".into();
        foreign.pool = "other-pool".into();
        node.claims
            .put(allocated("uid-gpu", "gpu", vec![foreign.clone()]));
        node.claims.put(allocated(
            "uid-mixed",
            "mixed",
            vec![foreign, result("vf", "mock4", 1)],
        ));
        let mut kubelet = node.start().await?;

        let answers = kubelet
            .prepare(vec![claim("uid-gpu", "gpu"), claim("uid-mixed", "mixed")])
            .await?;
        assert_eq!(answers["uid-gpu"].error, "");
        assert!(answers["uid-gpu"].devices.is_empty());
        assert_eq!(answers["uid-mixed"].error, "");
        assert_eq!(
            answers["uid-mixed"].devices,
            [device("vf", "mock4", 1, "uid-mixed")]
        );
        assert_eq!(
            node.spec_files(),
            [cdi::spec_file_name(DRIVER, "uid-mixed")]
        );
        assert_eq!(node.registers(), expected_registers(&["mock4"]));
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn an_unknown_device_fails_only_its_claim() -> TestResult {
        let node = TestNode::new()?;
        node.claims.put(allocated(
            "uid-bad",
            "bad",
            vec![result("vf", "mock1", 0), result("vf2", "mock9", 0)],
        ));
        node.claims.put(allocated(
            "uid-good",
            "good",
            vec![result("vf", "mock4", 1)],
        ));
        let mut kubelet = node.start().await?;

        let answers = kubelet
            .prepare(vec![claim("uid-bad", "bad"), claim("uid-good", "good")])
            .await?;
        let bad = &answers["uid-bad"];
        assert!(bad.devices.is_empty());
        assert!(
            bad.error.contains("mock9") && bad.error.contains("default/bad"),
            "{}",
            bad.error
        );
        assert_eq!(answers["uid-good"].error, "");
        // Nothing of the failed claim was left behind: mock1 untouched, no spec.
        assert_eq!(node.registers(), expected_registers(&["mock4"]));
        assert_eq!(node.spec_files(), [cdi::spec_file_name(DRIVER, "uid-good")]);

        // A claim the API server does not know fails with a message, and so does a replaced one.
        node.claims.put(allocated(
            "uid-new",
            "replaced",
            vec![result("vf", "mock2", 0)],
        ));
        let answers = kubelet
            .prepare(vec![
                claim("uid-gone", "gone"),
                claim("uid-old", "replaced"),
            ])
            .await?;
        assert!(
            answers["uid-gone"].error.contains("does not exist"),
            "{}",
            answers["uid-gone"].error
        );
        assert!(
            answers["uid-old"].error.contains("uid-new"),
            "{}",
            answers["uid-old"].error
        );
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn a_device_is_not_handed_out_twice() -> TestResult {
        let node = TestNode::new()?;
        node.claims.put(allocated(
            "uid-first",
            "first",
            vec![result("vf", "mock1", 0)],
        ));
        node.claims.put(allocated(
            "uid-second",
            "second",
            vec![result("vf", "mock1", 0)],
        ));
        let mut kubelet = node.start().await?;

        assert_eq!(
            kubelet.prepare(vec![claim("uid-first", "first")]).await?["uid-first"].error,
            ""
        );
        let refused = kubelet.prepare(vec![claim("uid-second", "second")]).await?;
        let error = &refused["uid-second"].error;
        assert!(
            error.contains("already prepared for claim default/first"),
            "{error}"
        );
        assert_eq!(
            node.spec_files(),
            [cdi::spec_file_name(DRIVER, "uid-first")]
        );

        assert_eq!(
            kubelet.unprepare(vec![claim("uid-first", "first")]).await?["uid-first"],
            ""
        );
        let answers = kubelet.prepare(vec![claim("uid-second", "second")]).await?;
        assert_eq!(
            answers["uid-second"].devices,
            [device("vf", "mock1", 0, "uid-second")]
        );
        assert_eq!(node.register("mock1"), 1);
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn a_restart_keeps_prepared_claims_and_rolls_back_an_unfinished_prepare() -> TestResult {
        let node = TestNode::new()?;
        node.claims.put(allocated(
            "uid-kept",
            "kept",
            vec![result("vf", "mock1", 0)],
        ));
        node.claims
            .put(allocated("uid-cut", "cut", vec![result("pf", "mock3", 1)]));
        let mut kubelet = node.start().await?;
        let before = kubelet
            .prepare(vec![claim("uid-kept", "kept"), claim("uid-cut", "cut")])
            .await?;
        assert!(before.values().all(|a| a.error.is_empty()), "{before:?}");
        kubelet.plugin.stop().await?;

        // The process died in the middle of preparing "cut": its record says started, its
        // register and spec are already written.
        let mut cp = checkpoint::load(&node.checkpoint_path())?;
        cp.claims
            .get_mut("uid-cut")
            .ok_or("no entry for uid-cut")?
            .state = PrepareState::PrepareStarted;
        checkpoint::store(&node.checkpoint_path(), &cp)?;

        let mut kubelet = node.start().await?;
        // The new instance undid the unfinished prepare, and kept the finished one.
        assert_eq!(node.register("mock3"), IDLE);
        assert!(!node.spec_path("uid-cut").exists());
        assert_eq!(node.register("mock1"), 1);
        assert!(node.spec_path("uid-kept").exists());

        // The kubelet repeats both prepares after the restart and gets the same answers.
        let after = kubelet
            .prepare(vec![claim("uid-kept", "kept"), claim("uid-cut", "cut")])
            .await?;
        assert_eq!(after, before);
        assert_eq!(node.registers(), expected_registers(&["mock1", "mock3"]));

        // Unprepare may reach a later instance than prepare did.
        kubelet.plugin.stop().await?;
        let mut kubelet = node.start().await?;
        let errors = kubelet
            .unprepare(vec![claim("uid-kept", "kept"), claim("uid-cut", "cut")])
            .await?;
        assert!(errors.values().all(String::is_empty), "{errors:?}");
        assert_eq!(node.register("mock1"), 0);
        assert_eq!(node.register("mock3"), 0);
        assert!(node.spec_files().is_empty());
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn after_a_reboot_prepare_recreates_the_cdi_spec() -> TestResult {
        let node = TestNode::new()?;
        node.claims
            .put(allocated("uid-one", "one", vec![result("vf", "mock5", 1)]));
        let mut kubelet = node.start().await?;
        let before = kubelet.prepare(vec![claim("uid-one", "one")]).await?;
        let spec = std::fs::read(node.spec_path("uid-one"))?;
        kubelet.plugin.stop().await?;

        // /var/run/cdi is a tmpfs: a reboot empties it, the checkpoint survives.
        std::fs::remove_dir_all(&node.preparer.cdi_dir)?;
        let mut kubelet = node.start().await?;
        let after = kubelet.prepare(vec![claim("uid-one", "one")]).await?;
        assert_eq!(after, before);
        assert_eq!(std::fs::read(node.spec_path("uid-one"))?, spec);
        let id = cdi::qualified_device_id(DRIVER, "uid-one", "mock5");
        assert_eq!(node.resolvable_cdi_ids(), [id]);
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_fails_prepare_but_not_unprepare() -> TestResult {
        let node = TestNode::new()?;
        node.claims
            .put(allocated("uid-old", "old", vec![result("vf", "mock1", 0)]));
        node.claims
            .put(allocated("uid-new", "new", vec![result("vf", "mock2", 0)]));
        let mut kubelet = node.start().await?;
        assert_eq!(
            kubelet.prepare(vec![claim("uid-old", "old")]).await?["uid-old"].error,
            ""
        );
        kubelet.plugin.stop().await?;

        std::fs::write(node.checkpoint_path(), b"{\"version\": 1, \"claims\": tru")?;
        let mut kubelet = node.start().await?;
        let answers = kubelet.prepare(vec![claim("uid-new", "new")]).await?;
        let error = &answers["uid-new"].error;
        assert!(answers["uid-new"].devices.is_empty());
        assert!(error.contains("corrupt"), "{error}");
        assert!(
            error.contains(&node.checkpoint_path().display().to_string()),
            "{error}"
        );
        assert_eq!(node.register("mock2"), IDLE);

        let errors = kubelet.unprepare(vec![claim("uid-old", "old")]).await?;
        assert_eq!(errors["uid-old"], "");
        assert!(!node.spec_path("uid-old").exists());
        kubelet.plugin.stop().await
    }

    #[tokio::test]
    async fn device_health_streams_over_the_dra_socket() -> TestResult {
        use mock_accel_dra::plugin::{health::HealthSource, server::serve_with_health};
        use tokio_stream::StreamExt;

        let node = TestNode::new()?;
        let shutdown = CancellationToken::new();
        let source = HealthSource {
            node_name: NODE.into(),
            inventory: node.inventory.subscribe(),
        };
        let handle = serve_with_health(
            config(&node.root),
            Arc::new(FakeHandler::default()),
            Some(source),
            shutdown.clone(),
        )
        .await?;
        let info = plugin_info(handle.registration_socket()).await?;
        assert_eq!(
            info.supported_versions,
            [
                "v1.DRAPlugin",
                "v1beta1.DRAPlugin",
                "v1alpha1.DRAResourceHealth"
            ]
        );

        let mut health = HealthClient::new(connect(Path::new(&info.endpoint)).await?);
        let mut stream = health
            .node_watch_resources(NodeWatchResourcesRequest {})
            .await?
            .into_inner();
        let report = tokio::time::timeout(LIMIT, stream.next())
            .await?
            .ok_or("stream ended")??;
        let mut devices: Vec<(String, String, i32)> = report
            .devices
            .iter()
            .map(|d| {
                let id = d.device.clone().unwrap_or_default();
                (id.pool_name, id.device_name, d.health)
            })
            .collect();
        devices.sort();
        let healthy = mock_accel_dra::proto::dra_health_v1alpha1::HealthStatus::Healthy as i32;
        let expected: Vec<(String, String, i32)> = (0..6)
            .map(|i| (format!("{NODE}/numa{}", i / 3), format!("mock{i}"), healthy))
            .collect();
        assert_eq!(devices, expected);

        // Hot-removal of a device shows in the next report.
        let fewer = Inventory::new(node.inventory.borrow().devices[1..].to_vec());
        node.inventory.send_replace(Arc::new(fewer));
        let report = tokio::time::timeout(LIMIT, stream.next())
            .await?
            .ok_or("stream ended")??;
        assert_eq!(report.devices.len(), 5);
        assert!(!report.devices.iter().any(|d| {
            d.device
                .as_ref()
                .is_some_and(|id| id.device_name == "mock0")
        }));

        // An open health stream does not hold up the shutdown.
        shutdown.cancel();
        tokio::time::timeout(LIMIT, handle.join()).await??;
        assert!(
            !node
                .root
                .join("plugins_registry")
                .join(format!("{DRIVER}-reg.sock"))
                .exists()
        );
        Ok(())
    }
}
