//! A crash of the real node-agent process at every persistent step of prepare and unprepare.
//!
//! For each named fail point (`src/plugin/prepare/fail_points.rs`), the node agent, built with
//! the `fail-points` feature (only test builds have it) and run as a child process of its own
//! (this test binary started again as the agent, see `agent_process_entry`), is started with `MOCK_ACCEL_FAIL_POINTS=<point>=abort` on a simulated sysfs tree, beside the fake
//! API server of `test_support::agent_process`. This test plays the kubelet over the real
//! sockets: the call reaches the point, the process aborts there (SIGABRT: no rollback, no
//! cleanup, as a kill -9 would), the agent is started again without the variable, and the
//! kubelet's retry succeeds. Then nothing leaks: the status register, the CDI files, the
//! checkpoint entries and the `status.preparedClaims` the agent wrote all agree, through the
//! retry, an unprepare and a prepare of the freed device.
//!
//! The two rollback branches no kubelet-driven path reaches otherwise: a failed rollback
//! (`RollbackFailed`, reported to the kubelet and resumed by its next call) and a rollback the
//! process died in (resumed at the next start).

use std::{ffi::OsString, os::unix::process::ExitStatusExt, path::Path, sync::Arc};

use clap::Parser;

use mock_accel_dra::{
    agent,
    checkpoint::{self, PrepareState},
    cli::{Cli, Command},
    proto::dra_v1::{
        Claim, NodePrepareResourcesRequest, NodePrepareResourcesResponse,
        NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse,
        dra_plugin_client::DraPluginClient,
    },
    sysfs, telemetry,
    test_support::{
        agent_process::{AgentResult, FakeApi, LIMIT, Layout, NODE, start_api_server, terminate},
        claims::{allocated_in, result},
        socket::connect,
    },
};
use tokio::process::Child;
use tonic::transport::Channel;

/// Makes the simulated sysfs tree (`sim create`); the agent itself runs from this test binary.
const AGENT: &str = env!("CARGO_BIN_EXE_mock-accel-dra");
/// The variable that arms fail points in a process built with them.
const FAIL_POINTS_ENV: &str = "MOCK_ACCEL_FAIL_POINTS";
const NS: &str = "crash";
const UID: &str = "c4a5b000-0000-4000-8000-000000000001";
const CLAIM: &str = "held";
/// The PF the claim is allocated; its register starts at 0.
const DEVICE: &str = "mock0";
const SIGABRT: i32 = 6;

const PREPARE_POINTS: [&str; 4] = [
    "prepare/checkpoint-started",
    "prepare/registers",
    "prepare/cdi",
    "prepare/checkpoint-completed",
];
const UNPREPARE_POINTS: [&str; 3] = [
    "unprepare/registers",
    "unprepare/cdi",
    "unprepare/checkpoint",
];

/// Where the agent's command line travels to [`agent_process_entry`].
const ARGV_ENV: &str = "AGENT_CRASH_AGENT_ARGV";
const ARGV_SEPARATOR: char = '\u{1f}';

/// Not a test: the node agent itself, when this test binary is started again with
/// [`ARGV_ENV`] set (see [`Node::start`]). The agent runs from this binary, built from the same
/// library with the `fail-points` feature, rather than from the `mock-accel-dra` binary: Cargo
/// puts every build's binary at one path, which a build with other features could replace
/// while the tests run.
#[test]
fn agent_process_entry() {
    let Ok(argv) = std::env::var(ARGV_ENV) else {
        return;
    };
    let cli = Cli::parse_from(std::iter::once("mock-accel-dra").chain(argv.split(ARGV_SEPARATOR)));
    let _ = rustls::crypto::ring::default_provider().install_default();
    telemetry::init_logging(cli.log.log_format, &cli.log.log_level).expect("logging");
    let Command::NodeAgent(args) = cli.command else {
        panic!("{ARGV_ENV} must start with node-agent");
    };
    let result = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(agent::run(args));
    if let Err(e) = &result {
        eprintln!("node agent failed: {e}");
    }
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

/// One node: fake API with the claim, layout, and the running agent.
struct Node {
    _dir: tempfile::TempDir,
    api: Arc<FakeApi>,
    layout: Layout,
    agent: Option<Child>,
}

impl Node {
    async fn new() -> AgentResult<Self> {
        let dir = tempfile::tempdir()?;
        let (api, port) = start_api_server().await?;
        let layout = Layout::create(Path::new(AGENT), dir.path(), port).await?;
        api.put_claim(allocated_in(
            NS,
            UID,
            CLAIM,
            vec![result("pf", DEVICE, &format!("{NODE}/numa0"))],
        ));
        sysfs::write_status(&layout.sys, DEVICE, 0)?;
        Ok(Node {
            _dir: dir,
            api,
            layout,
            agent: None,
        })
    }

    /// Starts the agent (with `fail_points` armed, when given) and registers it, as the
    /// kubelet does; returns a client on its DRA socket.
    async fn start(&mut self, fail_points: Option<&str>) -> AgentResult<DraPluginClient<Channel>> {
        let argv: Vec<String> = self
            .layout
            .agent_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let argv = argv.join(&ARGV_SEPARATOR.to_string());
        let mut env = vec![(ARGV_ENV, argv.as_str())];
        if let Some(points) = fail_points {
            env.push((FAIL_POINTS_ENV, points));
        }
        let this = std::env::current_exe()?;
        let harness_args = [
            "--exact",
            "agent_process_entry",
            "--nocapture",
            "--test-threads=1",
        ]
        .map(OsString::from);
        let mut agent = self.layout.spawn(&this, &harness_args, &env)?;
        self.layout.wait_for_socket(&mut agent).await?;
        let endpoint = self.layout.register().await?;
        self.agent = Some(agent);
        Ok(DraPluginClient::new(connect(&endpoint).await?))
    }

    /// Waits for the agent to die of SIGABRT at `point`.
    async fn expect_abort(&mut self, point: &str) -> AgentResult<()> {
        let mut agent = self.agent.take().ok_or("no agent running")?;
        let status = tokio::time::timeout(LIMIT, agent.wait()).await??;
        if status.signal() != Some(SIGABRT) {
            return Err(format!(
                "{point}: the agent ended with {status}, not SIGABRT; {}",
                self.layout.log_tail()
            )
            .into());
        }
        let log = std::fs::read_to_string(&self.layout.log)?;
        if !log.contains(&format!("fail point {point}: abort")) {
            return Err(format!("{point}: aborted elsewhere; {}", self.layout.log_tail()).into());
        }
        Ok(())
    }

    async fn stop(&mut self) -> AgentResult<()> {
        if let Some(mut agent) = self.agent.take() {
            terminate(agent.id().ok_or("agent gone")?).await?;
            let status = tokio::time::timeout(LIMIT, agent.wait()).await??;
            if !status.success() {
                return Err(format!("SIGTERM: {status}; {}", self.layout.log_tail()).into());
            }
        }
        Ok(())
    }

    /// Register, CDI files, checkpoint and the agent's `preparedClaims` all say the claim is
    /// prepared (or all say it is not).
    async fn assert_agree(&self, prepared: bool, when: &str) -> AgentResult<()> {
        let register = sysfs::read_status(&self.layout.sys, DEVICE)?;
        let mut cdi: Vec<String> = std::fs::read_dir(&self.layout.cdi)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        cdi.sort();
        let cp = checkpoint::load(&checkpoint::checkpoint_path(&self.layout.plugin))?;
        let entries: Vec<(String, PrepareState)> = cp
            .claims
            .values()
            .map(|e| (e.uid.clone(), e.state))
            .collect();
        let expected_uids: Vec<String> = if prepared {
            vec![UID.to_string()]
        } else {
            vec![]
        };
        self.api
            .wait_applied(&format!("preparedClaims {expected_uids:?} ({when})"), |a| {
                a.prepared_uids == expected_uids
            })
            .await?;
        let ok = if prepared {
            register == 1
                && cdi.len() == 1
                && cdi[0].contains(UID)
                && entries == [(UID.to_string(), PrepareState::PrepareCompleted)]
        } else {
            register == 0 && cdi.is_empty() && entries.is_empty()
        };
        if !ok {
            return Err(format!(
                "{when}: expected the claim {}: register {register}, CDI files {cdi:?}, \
                 checkpoint {entries:?}",
                if prepared { "prepared" } else { "released" }
            )
            .into());
        }
        Ok(())
    }
}

fn wire_claim() -> Claim {
    Claim {
        namespace: NS.into(),
        uid: UID.into(),
        name: CLAIM.into(),
    }
}

async fn prepare(
    client: &mut DraPluginClient<Channel>,
) -> Result<NodePrepareResourcesResponse, tonic::Status> {
    client
        .node_prepare_resources(NodePrepareResourcesRequest {
            claims: vec![wire_claim()],
        })
        .await
        .map(|r| r.into_inner())
}

async fn unprepare(
    client: &mut DraPluginClient<Channel>,
) -> Result<NodeUnprepareResourcesResponse, tonic::Status> {
    client
        .node_unprepare_resources(NodeUnprepareResourcesRequest {
            claims: vec![wire_claim()],
        })
        .await
        .map(|r| r.into_inner())
}

/// The per-claim error of a prepare ("" when it succeeded with one device).
fn prepare_error(response: &NodePrepareResourcesResponse) -> String {
    match response.claims.get(UID) {
        Some(c) if c.error.is_empty() && c.devices.len() == 1 => String::new(),
        Some(c) if c.error.is_empty() => format!("{} devices", c.devices.len()),
        Some(c) => c.error.clone(),
        None => "no answer for the claim".into(),
    }
}

async fn prepare_ok(client: &mut DraPluginClient<Channel>, when: &str) -> AgentResult<()> {
    let error = prepare_error(&prepare(client).await?);
    if !error.is_empty() {
        return Err(format!("{when}: prepare failed: {error}").into());
    }
    Ok(())
}

async fn unprepare_ok(client: &mut DraPluginClient<Channel>, when: &str) -> AgentResult<()> {
    let response = unprepare(client).await?;
    match response.claims.get(UID) {
        Some(c) if c.error.is_empty() => Ok(()),
        other => Err(format!("{when}: unprepare failed: {other:?}").into()),
    }
}

#[tokio::test]
async fn the_real_agent_killed_at_every_prepare_step_recovers_on_restart_and_retry()
-> AgentResult<()> {
    for point in PREPARE_POINTS {
        let mut node = Node::new().await?;
        let mut client = node.start(Some(&format!("{point}=abort"))).await?;
        // The call dies with the process: the kubelet sees a transport error.
        if let Ok(answer) = prepare(&mut client).await {
            return Err(format!("{point}: prepare answered {answer:?} instead of dying").into());
        }
        node.expect_abort(point).await?;

        let mut client = node.start(None).await?;
        prepare_ok(&mut client, &format!("{point}: the kubelet's retry")).await?;
        node.assert_agree(true, &format!("{point}: after the retry"))
            .await?;
        unprepare_ok(&mut client, point).await?;
        node.assert_agree(false, &format!("{point}: after unprepare"))
            .await?;
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_real_agent_killed_at_every_unprepare_step_recovers_on_restart_and_retry()
-> AgentResult<()> {
    for point in UNPREPARE_POINTS {
        let mut node = Node::new().await?;
        let mut client = node.start(Some(&format!("{point}=abort"))).await?;
        prepare_ok(&mut client, point).await?;
        if let Ok(answer) = unprepare(&mut client).await {
            return Err(format!("{point}: unprepare answered {answer:?} instead of dying").into());
        }
        node.expect_abort(point).await?;

        let mut client = node.start(None).await?;
        unprepare_ok(&mut client, &format!("{point}: the kubelet's retry")).await?;
        node.assert_agree(false, &format!("{point}: after the retry"))
            .await?;
        // The device is free for the next claim.
        prepare_ok(&mut client, &format!("{point}: prepare after")).await?;
        node.assert_agree(true, &format!("{point}: prepared again"))
            .await?;
        node.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_failed_rollback_is_reported_and_the_kubelets_retry_resumes_it() -> AgentResult<()> {
    let mut node = Node::new().await?;
    // The CDI write fails, and the rollback after it fails too.
    let mut client = node
        .start(Some("prepare/cdi=error,rollback/released=error"))
        .await?;
    let error = prepare_error(&prepare(&mut client).await?);
    if !error.contains("rolling back also failed") {
        return Err(format!("expected RollbackFailed, got {error:?}").into());
    }
    let cp = checkpoint::load(&checkpoint::checkpoint_path(&node.layout.plugin))?;
    if cp.claims.get(UID).map(|e| e.state) != Some(PrepareState::PrepareStarted) {
        return Err(format!("the unfinished rollback is not recorded: {cp:?}").into());
    }
    // The same process, the kubelet's next call: the rollback is finished, then the prepare.
    prepare_ok(&mut client, "the retry after RollbackFailed").await?;
    node.assert_agree(true, "after the resumed rollback")
        .await?;
    unprepare_ok(&mut client, "after the resumed rollback").await?;
    node.assert_agree(false, "after unprepare").await?;
    node.stop().await
}

#[tokio::test]
async fn a_rollback_the_process_died_in_is_resumed_at_the_next_start() -> AgentResult<()> {
    let mut node = Node::new().await?;
    let mut client = node
        .start(Some("prepare/registers=error,rollback/released=abort"))
        .await?;
    if let Ok(answer) = prepare(&mut client).await {
        return Err(format!("prepare answered {answer:?} instead of dying").into());
    }
    node.expect_abort("rollback/released").await?;
    let cp = checkpoint::load(&checkpoint::checkpoint_path(&node.layout.plugin))?;
    if cp.claims.get(UID).map(|e| e.state) != Some(PrepareState::PrepareStarted) {
        return Err(format!("the interrupted rollback is not recorded: {cp:?}").into());
    }

    // The start finishes the rollback before it serves anyone.
    let mut client = node.start(None).await?;
    node.assert_agree(false, "after the start").await?;
    let log = std::fs::read_to_string(&node.layout.log)?;
    if !log.contains("rolled back an interrupted prepare") {
        return Err(format!("no recovery logged; {}", node.layout.log_tail()).into());
    }
    prepare_ok(&mut client, "the kubelet's retry").await?;
    node.assert_agree(true, "after the retry").await?;
    node.stop().await
}
