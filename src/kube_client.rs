//! The Kubernetes client both roles use: built from the inferred configuration (in-cluster or
//! KUBECONFIG) with a deadline on every phase of a request, so that a hung API server costs one
//! failed call instead of a wedged node agent or controller. Also [`ApiView`], the record of
//! whether this process can currently reach the API server, which the controller uses to judge
//! agent heartbeats only over time it could have seen them.
//!
//! kube's client sets no read timeout by default (a watch may be silent for minutes), so long
//! calls get a client of their own: [`ClientSet::watch`] has no read timeout and is bounded by
//! the watcher's own server-side timeout plus its idle timeout instead.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Response, StatusCode};
use jiff::Timestamp;
use kube::{
    Client, Config,
    client::{ClientBuilder, DynBody},
};
use tower::{BoxError, util::MapResultLayer};

/// Server-side timeout of each watch request in seconds: the API server ends the watch after
/// this long and the watcher resumes from the last resourceVersion, and kube's watcher gives up
/// on a silent stream 5 s after it. This bounds how long a hung API server goes unnoticed by a
/// watch (kube's default is 290 s).
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// Deadlines of each request phase, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Longest wait for the next bytes of a response.
    pub read: Duration,
    /// Longest wait for a request to be written.
    pub write: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot build a Kubernetes client configuration (in-cluster service account or KUBECONFIG): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client from the configuration (check its TLS data): {0}")]
    Build(#[source] kube::Error),
}

/// Installs ring (kube's default) as the process's TLS crypto provider. Two providers end up
/// linked when test-only dependencies unify features, and rustls panics on an ambiguous choice;
/// each binary calls this once at start-up.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all this needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The clients of one process.
#[derive(Clone)]
pub struct ClientSet {
    /// Every request-response call: bounded by all three timeouts.
    pub requests: Client,
    /// Watches only: no read timeout (a quiet watch sends nothing for a minute); bounded by
    /// [`WATCH_TIMEOUT_SECS`] and kube's watch idle timeout.
    pub watch: Client,
}

/// Infers the configuration and builds both clients. When `view` is given, every request
/// outcome is recorded in it (watch successes are not: a watch can be served from the API
/// server's cache while its storage is down, so it proves nothing about writes).
pub async fn clients(timeouts: Timeouts, view: Option<&ApiView>) -> Result<ClientSet, ClientError> {
    let config = Config::infer().await.map_err(ClientError::Infer)?;
    let requests = build(request_config(config.clone(), timeouts), view, true)?;
    let watch = build(watch_config(config, timeouts), view, false)?;
    Ok(ClientSet { requests, watch })
}

/// The configuration of request-response calls: every phase bounded. The read timeout counts
/// from when the request was written, not from when its pooled connection went idle.
pub fn request_config(mut config: Config, timeouts: Timeouts) -> Config {
    config.connect_timeout = Some(timeouts.connect);
    config.read_timeout = Some(timeouts.read);
    config.write_timeout = Some(timeouts.write);
    config.reset_reader_on_write = true;
    config
}

/// The configuration of watches: connect and write bounded, reads not (see [`ClientSet::watch`]).
pub fn watch_config(mut config: Config, timeouts: Timeouts) -> Config {
    config.connect_timeout = Some(timeouts.connect);
    config.read_timeout = None;
    config.write_timeout = Some(timeouts.write);
    config
}

fn build(config: Config, view: Option<&ApiView>, successes: bool) -> Result<Client, ClientError> {
    let builder = ClientBuilder::try_from(config).map_err(ClientError::Build)?;
    Ok(match view {
        None => builder.build(),
        Some(view) => {
            let view = view.clone();
            builder
                .with_layer(&MapResultLayer::new(
                    move |r: Result<Response<Box<DynBody>>, BoxError>| {
                        match classify(&r) {
                            Contact::Failed => view.failure(Timestamp::now()),
                            Contact::Answered if successes => view.success(Timestamp::now()),
                            Contact::Answered => {}
                        }
                        r
                    },
                ))
                .build()
        }
    })
}

/// What one response says about the API server's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// It answered from its storage (any status it decides itself: 2xx, 404, 409, 403, ...).
    Answered,
    /// No answer (connect, TLS, timeout, reset), or it could not serve the request: 429 and
    /// 5xx, which is what an API server without etcd or under overload returns.
    Failed,
}

/// Sorts a response (or transport error) into [`Contact`].
pub fn classify<B, E>(result: &Result<Response<B>, E>) -> Contact {
    match result {
        Err(_) => Contact::Failed,
        Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() => {
            Contact::Failed
        }
        Ok(_) => Contact::Answered,
    }
}

/// Whether this process can reach the API server, and since when without interruption.
///
/// Agents cannot write heartbeats while the API server (or its etcd) is down, so a heartbeat
/// that looks old right after an outage says nothing about the agent. The controller therefore
/// counts a heartbeat's age from no earlier than [`ApiView::since`]: the first answer after the
/// last failure, or the process start.
#[derive(Clone, Debug)]
pub struct ApiView {
    state: Arc<Mutex<ViewState>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ViewState {
    /// Start of the current uninterrupted run of answers (or the process start).
    since: Timestamp,
    /// The last response was a failure: no view at all right now.
    failing: bool,
}

impl ApiView {
    /// A view that starts now: heartbeats from before the process started are judged from
    /// `started`, as nothing could be seen before it.
    pub fn new(started: Timestamp) -> Self {
        ApiView {
            state: Arc::new(Mutex::new(ViewState {
                since: started,
                failing: false,
            })),
        }
    }

    /// A request got no usable answer at `at`.
    pub fn failure(&self, at: Timestamp) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if !s.failing {
            tracing::warn!(at = %at, "API server not answering; agent heartbeats are not judged until it answers again");
        }
        s.failing = true;
    }

    /// A request was answered at `at`.
    pub fn success(&self, at: Timestamp) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.failing {
            tracing::info!(at = %at, "API server answers again; agent heartbeats are judged from now on");
            s.failing = false;
            s.since = at;
        }
    }

    /// From when heartbeats can be judged at `now`: the start of the current uninterrupted view,
    /// or `now` itself while requests are failing (nothing can be judged then).
    pub fn since(&self, now: Timestamp) -> Timestamp {
        match self.state.lock() {
            Ok(s) if !s.failing => s.since,
            _ => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// As `main` does: dev-dependencies link a second rustls provider.
    fn tls_provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[test]
    fn the_view_resumes_at_the_first_answer_after_a_failure() {
        let view = ApiView::new(t("2026-01-01T00:00:00Z"));
        assert_eq!(
            view.since(t("2026-01-01T00:05:00Z")),
            t("2026-01-01T00:00:00Z")
        );
        view.success(t("2026-01-01T00:05:00Z"));
        assert_eq!(
            view.since(t("2026-01-01T00:05:01Z")),
            t("2026-01-01T00:00:00Z"),
            "answers without a failure in between change nothing"
        );

        view.failure(t("2026-01-01T00:06:00Z"));
        assert_eq!(
            view.since(t("2026-01-01T00:06:30Z")),
            t("2026-01-01T00:06:30Z"),
            "while failing nothing can be judged"
        );
        view.failure(t("2026-01-01T00:06:40Z"));
        view.success(t("2026-01-01T00:07:00Z"));
        view.success(t("2026-01-01T00:07:05Z"));
        assert_eq!(
            view.since(t("2026-01-01T00:08:00Z")),
            t("2026-01-01T00:07:00Z")
        );
    }

    #[test]
    fn failures_are_no_answer_throttling_and_server_errors() {
        let status = |code: u16| -> Result<Response<()>, ()> {
            Ok(Response::builder().status(code).body(()).unwrap())
        };
        for code in [200, 201, 403, 404, 409, 422] {
            assert_eq!(classify(&status(code)), Contact::Answered, "{code}");
        }
        for code in [429, 500, 503, 504] {
            assert_eq!(classify(&status(code)), Contact::Failed, "{code}");
        }
        assert_eq!(classify::<(), _>(&Err(())), Contact::Failed);
    }

    #[test]
    fn request_calls_are_bounded_and_watches_are_not_cut_by_the_read_timeout() {
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(15),
            write: Duration::from_secs(10),
        };
        let base = Config::new("https://127.0.0.1:6443".parse().unwrap());
        let r = request_config(base.clone(), timeouts);
        assert_eq!(
            (r.connect_timeout, r.read_timeout, r.write_timeout),
            (
                Some(timeouts.connect),
                Some(timeouts.read),
                Some(timeouts.write)
            )
        );
        assert!(r.reset_reader_on_write);
        let w = watch_config(base, timeouts);
        assert_eq!(
            (w.connect_timeout, w.read_timeout, w.write_timeout),
            (Some(timeouts.connect), None, Some(timeouts.write))
        );
    }

    /// An API server that accepts connections and never answers (a stopped process: the
    /// kernel still completes the TCP handshake) costs one failed call, not a wedged caller.
    /// Real time, but bounded: the deadline fires after 200 ms; nothing sleeps.
    #[tokio::test]
    async fn a_hung_api_server_costs_one_failed_call() {
        // Bound and listening, never accepted: connections complete in the backlog, no bytes
        // ever come back.
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = hung.local_addr().unwrap().port();
        tls_provider();
        let view = ApiView::new(t("2026-01-01T00:00:00Z"));
        let mut config = Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        config.default_retry = false;
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_millis(200),
            write: Duration::from_secs(5),
        };
        let client = build(request_config(config, timeouts), Some(&view), true).unwrap();
        let nodes = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client);
        let result = tokio::time::timeout(Duration::from_secs(10), nodes.get_opt("n1"))
            .await
            .expect("the request hung although it has a read deadline");
        assert!(
            result.is_err(),
            "a server that never answers cannot succeed"
        );
        let now = Timestamp::now();
        assert_eq!(view.since(now), now, "a timed-out request is a failure");
        drop(hung);
    }

    #[tokio::test]
    async fn a_refused_request_marks_the_view_failing() {
        // A loopback port nobody listens on: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        tls_provider();
        let view = ApiView::new(t("2026-01-01T00:00:00Z"));
        let mut config = Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        config.default_retry = false;
        let client = build(config, Some(&view), true).unwrap();
        let nodes = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client);
        assert!(nodes.get_opt("n1").await.is_err());
        let now = Timestamp::now();
        assert_eq!(view.since(now), now, "a refused request is a failure");
    }
}
