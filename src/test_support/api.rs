//! A mocked Kubernetes API server in the tower-test "ApiServerVerifier" style: the code under
//! test gets a real [`kube::Client`] whose requests arrive here one by one; the test answers
//! each in turn and asserts its method, path, query and body. A request the test does not
//! expect fails it; so does a missing one, and [`ApiServer::done`] checks at the end that
//! nothing else was sent. Nothing waits on real time, so tests may run on tokio's paused clock.

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// A client wired to a fresh mocked API server (default namespace `default`).
pub fn mock_client() -> (Client, ApiServer) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), ApiServer(handle))
}

/// One request as the mocked API server received it; answer it with [`Call::ok`],
/// [`Call::fail`] or [`Call::respond`].
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// The JSON body, `Value::Null` when there was none.
    pub body: Value,
    reply: SendResponse<Response<Body>>,
}

impl Call {
    /// The decoded value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    pub fn respond(self, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("serializable response");
        self.reply.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(bytes))
                .expect("valid response"),
        );
    }

    pub fn ok(self, body: &Value) {
        self.respond(StatusCode::OK, body)
    }

    /// Answers with a `Status` failure, as the API server does (`reason` such as `NotFound`).
    pub fn fail(self, code: u16, reason: &str) {
        let status = StatusCode::from_u16(code).expect("valid code");
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("mocked {reason}"), "reason": reason, "code": code,
        });
        self.respond(status, &body)
    }
}

/// The test's end of the mocked API server.
pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// The next request, whatever it is. Panics when the client is gone first.
    pub async fn next(&mut self) -> Call {
        let (req, reply) = self
            .0
            .next_request()
            .await
            .expect("the code under test stopped sending requests before the scenario ended");
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON request body")
        };
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            body,
            reply,
        }
    }

    /// The next request must be `method path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request {} {}?{} body {}",
            call.method,
            call.path,
            call.query,
            call.body
        );
        call
    }

    /// Asserts that nothing else was sent; call after every client clone is dropped.
    pub async fn done(mut self) {
        if let Some((req, _)) = self.0.next_request().await {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn query_parameters_are_percent_decoded() {
        let (client, mut api) = mock_client();
        let request = http::Request::get("/api/v1/nodes?labelSelector=a%3Db%2Cc%3Dd&x=1+2")
            .body(Vec::new())
            .unwrap();
        let sent = tokio::spawn(async move { client.request_text(request).await });
        let call = api.expect(Method::GET, "/api/v1/nodes").await;
        assert_eq!(call.param("labelSelector").as_deref(), Some("a=b,c=d"));
        assert_eq!(call.param("x").as_deref(), Some("1 2"));
        assert_eq!(call.param("missing"), None);
        call.ok(&json!({}));
        assert_eq!(sent.await.unwrap().unwrap(), "{}");
        api.done().await;
    }
}
