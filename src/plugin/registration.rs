//! The kubelet's plugin registration service (`pluginregistration.Registration`).
//!
//! The kubelet finds our registration socket in its registry directory, asks [`GetInfo`] which
//! DRA services we offer and where, and answers with [`NotifyRegistrationStatus`]. That answer is
//! the only way to learn whether the kubelet will call us, so it is published on a watch
//! channel for the agent's `PluginRegistered` condition and readiness.
//!
//! [`GetInfo`]: pluginregistration::registration_server::Registration::get_info
//! [`NotifyRegistrationStatus`]: pluginregistration::registration_server::Registration::notify_registration_status

use std::path::PathBuf;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info};

use crate::proto::{dra_health_v1, dra_health_v1alpha1, dra_v1, dra_v1beta1, pluginregistration};

/// The plugin type the kubelet routes to its DRA manager.
pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";

/// The kubelet's latest verdict on our registration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrationState {
    /// True once the kubelet accepted the plugin; false before its first answer or after a
    /// refusal.
    pub registered: bool,
    /// The kubelet's reason for a refusal; empty otherwise.
    pub error: String,
}

/// The `supported_versions` we advertise, most preferred first: `v1.DRAPlugin`, then
/// `v1beta1.DRAPlugin`, then `v1.DRAResourceHealth` and `v1alpha1.DRAResourceHealth` when
/// device health is served (a 1.37 kubelet picks v1, older ones v1alpha1).
/// Derived from the generated service names so that they cannot drift from the services
/// actually served.
pub fn supported_versions(health: bool) -> Vec<String> {
    let health_v1 = health.then_some(dra_health_v1::dra_resource_health_server::SERVICE_NAME);
    let health = health.then_some(dra_health_v1alpha1::dra_resource_health_server::SERVICE_NAME);
    [
        Some(dra_v1::dra_plugin_server::SERVICE_NAME),
        Some(dra_v1beta1::dra_plugin_server::SERVICE_NAME),
        health_v1,
        health,
    ]
    .into_iter()
    .flatten()
    .map(short_service_name)
    .collect()
}

/// `k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin` → `v1.DRAPlugin`: the kubelet matches services by
/// their last package element and service name.
fn short_service_name(full: &str) -> String {
    let mut parts = full.rsplitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(service), Some(package)) => format!("{package}.{service}"),
        _ => full.to_string(),
    }
}

/// Answers the kubelet's registration calls for one DRA driver.
pub struct RegistrationService {
    driver_name: String,
    endpoint: PathBuf,
    supported_versions: Vec<String>,
    state: watch::Sender<RegistrationState>,
}

impl RegistrationService {
    /// `endpoint` is the absolute path of the DRA socket, as the kubelet will dial it;
    /// `supported_versions` the services served there (see [`supported_versions`]).
    pub fn new(
        driver_name: impl Into<String>,
        endpoint: PathBuf,
        supported_versions: Vec<String>,
        state: watch::Sender<RegistrationState>,
    ) -> Self {
        Self {
            driver_name: driver_name.into(),
            endpoint,
            supported_versions,
            state,
        }
    }
}

#[tonic::async_trait]
impl pluginregistration::registration_server::Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<pluginregistration::InfoRequest>,
    ) -> Result<Response<pluginregistration::PluginInfo>, Status> {
        debug!(driver = %self.driver_name, "kubelet asked for plugin info");
        Ok(Response::new(pluginregistration::PluginInfo {
            r#type: DRA_PLUGIN_TYPE.to_string(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.to_string_lossy().into_owned(),
            supported_versions: self.supported_versions.clone(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<pluginregistration::RegistrationStatus>,
    ) -> Result<Response<pluginregistration::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        // send_replace: the state must be recorded even while nobody is watching yet.
        self.state.send_replace(RegistrationState {
            registered: status.plugin_registered,
            error: status.error.clone(),
        });
        if status.plugin_registered {
            info!(driver = %self.driver_name, "kubelet registered the plugin");
            return Ok(Response::new(
                pluginregistration::RegistrationStatusResponse {},
            ));
        }
        error!(
            driver = %self.driver_name,
            error = %status.error,
            "kubelet refused to register the plugin"
        );
        Err(Status::failed_precondition(format!(
            "plugin {} was not registered by the kubelet: {}",
            self.driver_name, status.error
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pluginregistration::registration_server::Registration;

    #[test]
    fn advertises_v1_then_v1beta1_then_health_when_served() {
        assert_eq!(
            supported_versions(false),
            ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        );
        assert_eq!(
            supported_versions(true),
            [
                "v1.DRAPlugin",
                "v1beta1.DRAPlugin",
                "v1.DRAResourceHealth",
                "v1alpha1.DRAResourceHealth"
            ]
        );
    }

    #[test]
    fn short_name_keeps_last_package_element_and_service() {
        assert_eq!(short_service_name("a.b.v1.DRAPlugin"), "v1.DRAPlugin");
        assert_eq!(
            short_service_name("v1alpha1.DRAResourceHealth"),
            "v1alpha1.DRAResourceHealth"
        );
        assert_eq!(short_service_name("Lonely"), "Lonely");
    }

    #[tokio::test]
    async fn verdicts_reach_the_watch_channel() {
        let (tx, mut rx) = watch::channel(RegistrationState::default());
        let versions = supported_versions(false);
        let service =
            RegistrationService::new("d.example.com", PathBuf::from("/p/dra.sock"), versions, tx);

        let info = service
            .get_info(Request::new(pluginregistration::InfoRequest {}))
            .await;
        let info = info.unwrap().into_inner();
        assert_eq!(info.r#type, "DRAPlugin");
        assert_eq!(info.endpoint, "/p/dra.sock");
        assert_eq!(
            info.supported_versions,
            ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        );

        let refused = service
            .notify_registration_status(Request::new(pluginregistration::RegistrationStatus {
                plugin_registered: false,
                error: "no supported version".into(),
            }))
            .await
            .unwrap_err();
        assert!(refused.message().contains("no supported version"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            *rx.borrow_and_update(),
            RegistrationState {
                registered: false,
                error: "no supported version".into()
            }
        );

        service
            .notify_registration_status(Request::new(pluginregistration::RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            }))
            .await
            .unwrap();
        assert!(rx.borrow_and_update().registered);
    }
}
