//! The plugin's sockets answer HTTP/2 requests whose `:authority` is a socket path, escaped or
//! not, or absent: the kubelet dials the registration socket with a bare path, and grpc-go then
//! sends `%2Fvar%2Flib%2Fkubelet%2F...-reg.sock` as the authority. These tests speak HTTP/2 by
//! hand (an HTTP/2 client library would refuse to send such an authority) against the real
//! servers started by `serve`.

use std::{path::Path, sync::Arc, time::Duration};

use loona_hpack::{Decoder, Encoder};
use mock_accel_dra::{
    plugin::{
        ClaimHandler, ClaimRef, PrepareResults, UnprepareResults,
        server::{PluginConfig, serve},
    },
    proto::{
        dra_v1,
        pluginregistration::{
            self, InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
        },
    },
};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};
use tokio_util::sync::CancellationToken;

const DRIVER: &str = "mock-accel.example.com";
const LIMIT: Duration = Duration::from_secs(10);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Answers every claim with an error naming it, so the reply proves the call got through.
struct Refuser;

impl ClaimHandler for Refuser {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        claims
            .into_iter()
            .map(|c| (c.uid.clone(), Err(format!("refused {}", c.name))))
            .collect()
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        claims.into_iter().map(|c| (c.uid, Ok(()))).collect()
    }
}

/// The outcome of one unary call made by hand.
#[derive(Debug)]
enum Reply {
    /// Response headers and trailers (name, value) and the response message bytes.
    Answered {
        headers: Vec<(String, String)>,
        message: Vec<u8>,
    },
    /// The server reset the stream with this HTTP/2 error code.
    Reset(u32),
}

impl Reply {
    fn grpc_status(&self) -> Option<&str> {
        match self {
            Reply::Answered { headers, .. } => headers
                .iter()
                .find(|(n, _)| n == "grpc-status")
                .map(|(_, v)| v.as_str()),
            Reply::Reset(_) => None,
        }
    }

    fn message<M: Message + Default>(&self) -> M {
        match self {
            Reply::Answered { message, .. } => M::decode(&message[..]).expect("response decodes"),
            Reply::Reset(code) => panic!("stream reset with HTTP/2 error {code}"),
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One gRPC unary call on stream 1 of a new connection, with the headers grpc-go sends.
async fn call(socket: &Path, path: &str, authority: Option<&str>, request: &[u8]) -> Reply {
    tokio::time::timeout(LIMIT, call_inner(socket, path, authority, request))
        .await
        .expect("the server answers in time")
}

async fn call_inner(socket: &Path, path: &str, authority: Option<&str>, request: &[u8]) -> Reply {
    let mut conn = UnixStream::connect(socket).await.expect("connect");
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
    ];
    if let Some(authority) = authority {
        headers.push((b":authority", authority.as_bytes()));
    }
    headers.extend([
        (&b"content-type"[..], &b"application/grpc"[..]),
        (b"user-agent", b"grpc-go/1.75.0"),
        (b"te", b"trailers"),
    ]);
    let block = Encoder::new().encode(headers);
    let mut body = vec![0];
    body.extend_from_slice(&u32::try_from(request.len()).unwrap().to_be_bytes());
    body.extend_from_slice(request);

    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0x0, 0x1, 1, &body)); // DATA, END_STREAM
    conn.write_all(&out).await.expect("write request");

    let mut decoder = Decoder::new();
    let mut got_headers = Vec::new();
    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).await.expect("read frame header");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload)
            .await
            .expect("read frame payload");
        match kind {
            0x4 if flags & 0x1 == 0 => {
                conn.write_all(&frame(0x4, 0x1, 0, &[]))
                    .await
                    .expect("ack settings");
            }
            0x1 if stream == 1 => {
                assert_ne!(flags & 0x4, 0, "the server's header blocks fit one frame");
                for (n, v) in decoder.decode(&payload).expect("server headers decode") {
                    got_headers
                        .push((String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()));
                }
                if flags & 0x1 != 0 {
                    break;
                }
            }
            0x0 if stream == 1 => {
                data.extend_from_slice(&payload);
                if flags & 0x1 != 0 {
                    break;
                }
            }
            0x3 if stream == 1 => {
                return Reply::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            0x7 => panic!("connection closed by GOAWAY: {payload:?}"),
            _ => {}
        }
    }
    let message = if data.len() >= 5 {
        data[5..].to_vec()
    } else {
        Vec::new()
    };
    Reply::Answered {
        headers: got_headers,
        message,
    }
}

struct Plugin {
    registration: std::path::PathBuf,
    dra: std::path::PathBuf,
    shutdown: CancellationToken,
}

async fn start(root: &Path) -> Plugin {
    let shutdown = CancellationToken::new();
    let config = PluginConfig {
        driver_name: DRIVER.to_string(),
        registry_dir: root.join("plugins_registry"),
        plugin_dir: root.join("plugins").join(DRIVER),
        pod_uid: None,
    };
    let handle = serve(config, Arc::new(Refuser), shutdown.clone())
        .await
        .expect("plugin starts");
    Plugin {
        registration: handle.registration_socket().to_path_buf(),
        dra: handle.dra_socket().to_path_buf(),
        shutdown,
    }
}

/// What grpc-go puts in `:authority` when dialled with a bare socket path.
fn escaped(path: &Path) -> String {
    path.display().to_string().replace('/', "%2F")
}

#[tokio::test]
async fn registration_answers_whatever_authority_the_kubelet_sends() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start(dir.path()).await;
    let socket = plugin.registration.clone();
    let raw = socket.display().to_string();
    let escaped = escaped(&socket);
    for authority in [
        Some(escaped.as_str()),
        Some(raw.as_str()),
        Some("localhost"),
        None,
    ] {
        let reply = call(
            &socket,
            "/pluginregistration.Registration/GetInfo",
            authority,
            &InfoRequest {}.encode_to_vec(),
        )
        .await;
        assert_eq!(
            reply.grpc_status(),
            Some("0"),
            "authority {authority:?}: {reply:?}"
        );
        let info: PluginInfo = reply.message();
        assert_eq!(info.name, DRIVER, "authority {authority:?}");
        assert_eq!(info.endpoint, plugin.dra.display().to_string());
        assert!(
            info.supported_versions
                .contains(&"v1.DRAPlugin".to_string())
        );

        let reply = call(
            &socket,
            "/pluginregistration.Registration/NotifyRegistrationStatus",
            authority,
            &RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            }
            .encode_to_vec(),
        )
        .await;
        assert_eq!(
            reply.grpc_status(),
            Some("0"),
            "authority {authority:?}: {reply:?}"
        );
        let _: RegistrationStatusResponse = reply.message();
    }
    plugin.shutdown.cancel();
}

#[tokio::test]
async fn dra_socket_answers_a_socket_path_authority_too() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start(dir.path()).await;
    let request = dra_v1::NodePrepareResourcesRequest {
        claims: vec![dra_v1::Claim {
            namespace: "ns".into(),
            uid: "uid-1".into(),
            name: "claim-1".into(),
        }],
    };
    let reply = call(
        &plugin.dra,
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
        Some(&escaped(&plugin.dra)),
        &request.encode_to_vec(),
    )
    .await;
    assert_eq!(reply.grpc_status(), Some("0"), "{reply:?}");
    let response: dra_v1::NodePrepareResourcesResponse = reply.message();
    assert_eq!(response.claims["uid-1"].error, "refused claim-1");
    plugin.shutdown.cancel();
}

/// Why the normalising layer exists: tonic alone resets such a stream with PROTOCOL_ERROR (1).
/// Should a future h2 accept these authorities, this test says so and the layer can go.
#[tokio::test]
async fn plain_tonic_refuses_a_socket_path_authority() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (state, _) = tokio::sync::watch::channel(Default::default());
    let service = mock_accel_dra::plugin::registration::RegistrationService::new(
        DRIVER,
        dir.path().join("dra.sock"),
        vec!["v1.DRAPlugin".into()],
        state,
    );
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pluginregistration::registration_server::RegistrationServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let reply = call(
        &path,
        "/pluginregistration.Registration/GetInfo",
        Some(&escaped(&path)),
        &InfoRequest {}.encode_to_vec(),
    )
    .await;
    assert!(matches!(reply, Reply::Reset(1)), "{reply:?}");
    stop.cancel();
    server.await.unwrap().unwrap();
}
