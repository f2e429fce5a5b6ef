use crate::plan::FaultTarget;
use crate::registry::FaultRegistry;
use crate::service::Fault;
use std::sync::Arc;

/// Applies [`Fault`] to a service: the registry's rules for `target` (its scope, listener, route,
/// cluster) and, if the target enables them, header-driven faults.
#[derive(Clone, Debug)]
pub struct FaultLayer {
    registry: FaultRegistry,
    target: Arc<FaultTarget>,
}

impl FaultLayer {
    /// A layer reading `registry` for requests at `target` (build the target once per route).
    pub fn new(registry: FaultRegistry, target: Arc<FaultTarget>) -> Self {
        FaultLayer { registry, target }
    }

    /// Wraps `inner` (same as `Layer::layer`, without importing the trait).
    pub fn layer_service<S>(&self, inner: S) -> Fault<S> {
        Fault::new(inner, self.registry.clone(), self.target.clone())
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Fault<S> {
        self.layer_service(inner)
    }
}
