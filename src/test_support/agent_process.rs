//! The real node agent as a child process, for tests and benches that need the binary itself
//! (a crash that kills the process, resident memory): a directory layout with a simulated sysfs
//! tree made by `mock-accel-dra sim create`, a small fake Kubernetes API server over plain HTTP
//! on 127.0.0.1 (a kubeconfig in `KUBECONFIG` points at it), the agent started on them, and
//! the kubelet's side of registration.
//!
//! The fake API serves what the agent reads and writes: the Node, the node's MockAccelNode
//! (server-side apply of the object and of its status, GETs), ResourceClaims from a map the
//! test fills, and Events (accepted, counted). Anything else is logged and answered 404. It
//! follows the agent's last applied status (`preparedClaims`, `agent.pluginRegistered`).

use std::{
    collections::HashMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::{Method, StatusCode, Uri},
    routing::{get, post},
};
use k8s_openapi::{
    api::{core::v1::Node, resource::v1::ResourceClaim},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::{Value, json};
use tokio::{
    process::{Child, Command},
    sync::watch,
};

use crate::{
    plugin::server::DRA_SOCKET_NAME,
    proto::pluginregistration::{
        InfoRequest, RegistrationStatus, registration_client::RegistrationClient,
    },
    test_support::socket::connect,
};

pub type AgentResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const DRIVER: &str = crate::inventory::DEFAULT_DRIVER_NAME;
/// The node the agent runs as.
pub const NODE: &str = "agent-node";
const NODE_UID: &str = "6d0c1a52-0000-4000-8000-000000000001";
const CRD_PATH: &str = "/apis/mock-accel.example.com/v1alpha1/mockaccelnodes";
/// How long any cross-process step (start-up, status catching up, exit) may take.
pub const LIMIT: Duration = Duration::from_secs(30);

/// What the agent last wrote into its MockAccelNode status, as far as tests care.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub status_applies: usize,
    pub plugin_registered: bool,
    pub prepared_claims: i64,
    /// UIDs of `status.preparedClaims`, in the written order.
    pub prepared_uids: Vec<String>,
}

/// The fake API server's state; clones of the `Arc` share it.
#[derive(Default)]
pub struct FakeApi {
    /// The node's MockAccelNode as applied so far (`Null` until the agent creates it).
    object: Mutex<Value>,
    claims: Mutex<HashMap<(String, String), ResourceClaim>>,
    pub applied: watch::Sender<Applied>,
    pub node_gets: AtomicUsize,
    pub claim_gets: AtomicUsize,
    pub status_gets: AtomicUsize,
    pub events: AtomicUsize,
    pub unexpected: AtomicUsize,
}

impl FakeApi {
    /// Stores (or replaces) `claim` under its namespace and name.
    pub fn put_claim(&self, claim: ResourceClaim) {
        let key = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        lock(&self.claims).insert(key, claim);
    }

    /// Deletes a claim.
    pub fn remove_claim(&self, namespace: &str, name: &str) {
        lock(&self.claims).remove(&(namespace.to_string(), name.to_string()));
    }

    /// Waits until the agent's applied status satisfies `done`.
    pub async fn wait_applied(
        &self,
        what: &str,
        done: impl Fn(&Applied) -> bool,
    ) -> AgentResult<()> {
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(LIMIT, applied.wait_for(|a| done(a))).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "the agent did not write a MockAccelNode status with {what} within {LIMIT:?} \
                 (last: {:?})",
                *self.applied.borrow()
            )
            .into()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Reply = (StatusCode, Json<Value>);

fn not_found(what: &str) -> Reply {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("{what} not found"),
        })),
    )
}

fn to_reply<T: serde::Serialize>(object: &T) -> Reply {
    match serde_json::to_value(object) {
        Ok(value) => (StatusCode::OK, Json(value)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"kind": "Status", "code": 500, "message": e.to_string()})),
        ),
    }
}

async fn get_node(State(api): State<Arc<FakeApi>>, UrlPath(name): UrlPath<String>) -> Reply {
    api.node_gets.fetch_add(1, Ordering::Relaxed);
    if name != NODE {
        return not_found(&format!("nodes {name}"));
    }
    to_reply(&Node {
        metadata: ObjectMeta {
            name: Some(name),
            uid: Some(NODE_UID.into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

async fn get_claim(
    State(api): State<Arc<FakeApi>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Reply {
    api.claim_gets.fetch_add(1, Ordering::Relaxed);
    let found = lock(&api.claims)
        .get(&(namespace.clone(), name.clone()))
        .cloned();
    match found {
        Some(claim) => to_reply(&claim),
        None => not_found(&format!("resourceclaims {namespace}/{name}")),
    }
}

/// Server-side apply, reduced to what the agent sends: the patch's `metadata` fields, `spec`
/// and `status` replace the stored ones.
fn apply(api: &FakeApi, name: &str, body: &[u8]) -> Reply {
    if name != NODE {
        return not_found(&format!("mockaccelnodes {name}"));
    }
    let patch: Value = match serde_json::from_slice(body) {
        Ok(patch) => patch,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"kind": "Status", "code": 400, "message": e.to_string()})),
            );
        }
    };
    let mut object = lock(&api.object);
    if object.is_null() {
        *object = json!({
            "apiVersion": "mock-accel.example.com/v1alpha1", "kind": "MockAccelNode",
            "metadata": {"name": NODE, "uid": "7f1e2d3c-0000-4000-8000-000000000002",
                         "generation": 1, "resourceVersion": "0"},
        });
    }
    if let (Some(stored), Some(given)) = (
        object["metadata"].as_object_mut(),
        patch.get("metadata").and_then(Value::as_object),
    ) {
        for (key, value) in given {
            stored.insert(key.clone(), value.clone());
        }
    }
    for key in ["spec", "status"] {
        if let Some(value) = patch.get(key) {
            object[key] = value.clone();
        }
    }
    let version = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
    if patch.get("status").is_some() {
        let status = &object["status"];
        let uids = status["preparedClaims"]
            .as_array()
            .map(|claims| {
                claims
                    .iter()
                    .filter_map(|c| c["uid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        api.applied.send_modify(|applied| {
            applied.status_applies += 1;
            applied.plugin_registered = status["agent"]["pluginRegistered"] == json!(true);
            applied.prepared_claims = status["preparedClaimCount"].as_i64().unwrap_or(0);
            applied.prepared_uids = uids;
        });
    }
    (StatusCode::OK, Json(object.clone()))
}

async fn apply_object(
    State(api): State<Arc<FakeApi>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply {
    apply(&api, &name, &body)
}

async fn get_object(State(api): State<Arc<FakeApi>>, UrlPath(name): UrlPath<String>) -> Reply {
    api.status_gets.fetch_add(1, Ordering::Relaxed);
    let object = lock(&api.object).clone();
    if name != NODE || object.is_null() {
        return not_found(&format!("mockaccelnodes {name}"));
    }
    (StatusCode::OK, Json(object))
}

async fn create_event(State(api): State<Arc<FakeApi>>, body: Bytes) -> Reply {
    api.events.fetch_add(1, Ordering::Relaxed);
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (StatusCode::CREATED, Json(event))
}

async fn unexpected(State(api): State<Arc<FakeApi>>, method: Method, uri: Uri) -> Reply {
    api.unexpected.fetch_add(1, Ordering::Relaxed);
    eprintln!("fake API server: unexpected {method} {uri}, answered 404");
    not_found(&uri.to_string())
}

/// Serves a fake API on an ephemeral port of 127.0.0.1; returns its state and port.
pub async fn start_api_server() -> AgentResult<(Arc<FakeApi>, u16)> {
    let api = Arc::new(FakeApi::default());
    let app = Router::new()
        .route("/api/v1/nodes/{name}", get(get_node))
        .route(
            &format!("{CRD_PATH}/{{name}}"),
            get(get_object).patch(apply_object),
        )
        .route(
            &format!("{CRD_PATH}/{{name}}/status"),
            get(get_object).patch(apply_object),
        )
        .route(
            "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}",
            get(get_claim),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{namespace}/events",
            post(create_event),
        )
        .fallback(unexpected)
        .with_state(Arc::clone(&api));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("fake API server stopped: {e}");
        }
    });
    Ok((api, port))
}

fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
"
    )
}

/// Where the agent's files live, all under one directory.
pub struct Layout {
    /// The `mock-accel-dra` binary.
    pub binary: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub cdi: PathBuf,
    pub registry: PathBuf,
    pub plugin: PathBuf,
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    /// The layout under `dir`, with a kubeconfig for the fake API on `port` and a canonical
    /// simulated sysfs tree (mock0..mock5) made by the binary's `sim create`.
    pub async fn create(binary: &Path, dir: &Path, port: u16) -> AgentResult<Self> {
        let layout = Layout {
            binary: binary.to_path_buf(),
            sys: dir.join("sys"),
            dev: dir.join("dev"),
            cdi: dir.join("cdi"),
            registry: dir.join("plugins_registry"),
            plugin: dir.join("plugins").join(DRIVER),
            kubeconfig: dir.join("kubeconfig"),
            log: dir.join("agent.log"),
        };
        std::fs::write(&layout.kubeconfig, kubeconfig(port))?;
        let output = Command::new(binary)
            .arg("sim")
            .arg("create")
            .arg("--root")
            .arg(&layout.sys)
            .arg("--dev-root")
            .arg(&layout.dev)
            .args(["--topology", "canonical"])
            .output()
            .await?;
        if !output.status.success() {
            return Err(format!(
                "{} sim create failed ({}): {}",
                binary.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(layout)
    }

    pub fn registration_socket(&self) -> PathBuf {
        self.registry.join(format!("{DRIVER}-reg.sock"))
    }

    pub fn dra_socket(&self) -> PathBuf {
        self.plugin.join(DRA_SOCKET_NAME)
    }

    /// The end of the agent's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("agent log {} ends with:\n{tail}", self.log.display())
    }

    /// The node agent's command line for this layout (without the program).
    pub fn agent_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["node-agent", "--node-name", NODE, "--driver-name", DRIVER]
            .into_iter()
            .map(OsString::from)
            .collect();
        for (flag, path) in [
            ("--sysfs-root", &self.sys),
            ("--dev-root", &self.dev),
            ("--cdi-dir", &self.cdi),
            ("--registry-dir", &self.registry),
            ("--plugin-dir", &self.plugin),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
        args.extend(["--metrics-addr", "127.0.0.1:0"].map(OsString::from));
        args
    }

    /// Starts the agent binary with `env` added to its environment.
    pub fn start_agent(&self, env: &[(&str, &str)]) -> AgentResult<Child> {
        self.spawn(&self.binary, &self.agent_args(), env)
    }

    /// Starts `program` with `args`, `KUBECONFIG` and `env`; its output is appended to the log.
    pub fn spawn(
        &self,
        program: &Path,
        args: &[OsString],
        env: &[(&str, &str)],
    ) -> AgentResult<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        Ok(child)
    }

    /// Polls for the registration socket, as the kubelet's plugin watcher notices it, until it
    /// accepts connections (a killed predecessor leaves its socket file behind).
    pub async fn wait_for_socket(&self, agent: &mut Child) -> AgentResult<()> {
        let socket = self.registration_socket();
        let deadline = Instant::now() + LIMIT;
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            if let Some(status) = agent.try_wait()? {
                return Err(
                    format!("the agent exited early ({status}); {}", self.log_tail()).into(),
                );
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no {} after {LIMIT:?}; {}",
                    socket.display(),
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// GetInfo and NotifyRegistrationStatus(true), as the kubelet does; returns the DRA
    /// endpoint.
    pub async fn register(&self) -> AgentResult<PathBuf> {
        let mut registration = RegistrationClient::new(connect(&self.registration_socket()).await?);
        let info = registration.get_info(InfoRequest {}).await?.into_inner();
        if info.name != DRIVER || !info.supported_versions.iter().any(|v| v == "v1.DRAPlugin") {
            return Err(format!("unexpected plugin info: {info:?}").into());
        }
        registration
            .notify_registration_status(RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            })
            .await?;
        Ok(PathBuf::from(info.endpoint))
    }
}

/// Sends SIGTERM (through `kill(1)`: the crate has no signal binding and no `unsafe`).
pub async fn terminate(pid: u32) -> AgentResult<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    if !status.success() {
        return Err(format!("kill -TERM {pid} failed: {status}").into());
    }
    Ok(())
}
