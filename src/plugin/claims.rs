//! The production [`ClaimSource`]: ResourceClaims read from the API server (`resource.k8s.io/v1`).

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::{Api, Client};

use super::ClaimSource;

/// Reads claims with the node agent's client (RBAC: `resourceclaims` `get`).
#[derive(Clone)]
pub struct KubeClaimSource {
    client: Client,
}

impl KubeClaimSource {
    pub fn new(client: Client) -> Self {
        KubeClaimSource { client }
    }
}

impl ClaimSource for KubeClaimSource {
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<ResourceClaim>, String> {
        Api::<ResourceClaim>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| format!("GET resourceclaims {namespace}/{name}: {e}"))
    }
}
