//! Rust types generated at build time from the kubelet plugin protos in `proto/`: the
//! registration service, the DRA service in its v1 and v1beta1 versions, and the v1alpha1
//! device health service in its v1alpha1 and v1 versions. The proto package names are kept exactly as the kubelet uses them,
//! because gRPC paths derive from them.

/// `pluginregistration.Registration`: how the kubelet discovers the plugin.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// `k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin` (kubelet 1.34 and newer).
pub mod dra_v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

/// `k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin` (kubelet 1.32 and newer).
pub mod dra_v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}

/// `v1alpha1.DRAResourceHealth`: device health streamed to the kubelet (KEP-4680).
pub mod dra_health_v1alpha1 {
    tonic::include_proto!("v1alpha1");
}

/// `v1.DRAResourceHealth`: the same stream, as kubelets 1.37 and newer prefer it.
pub mod dra_health_v1 {
    tonic::include_proto!("v1");
}
