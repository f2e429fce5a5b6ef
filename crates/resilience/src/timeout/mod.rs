//! Deadline for a whole request: the inner future must produce a response within the duration.
//!
//! Unlike `tower::timeout`, the error type stays the inner service's: it must implement
//! `From<Elapsed>`, so the proxy maps an elapsed deadline to 504 without downcasting.

mod error;
mod future;
mod layer;
mod service;

pub use error::Elapsed;
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use service::Timeout;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::{Service, ServiceExt, service_fn};

    #[derive(Debug, PartialEq)]
    enum Err {
        Elapsed,
    }
    impl From<Elapsed> for Err {
        fn from(_: Elapsed) -> Self {
            Err::Elapsed
        }
    }

    async fn slow(d: Duration) -> Result<&'static str, Err> {
        tokio::time::sleep(d).await;
        Ok("done")
    }

    #[tokio::test(start_paused = true)]
    async fn passes_responses_within_the_deadline() {
        let mut svc =
            TimeoutLayer::new(Some(Duration::from_secs(2))).layer_service(service_fn(slow));
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(Duration::from_millis(1999))
            .await;
        assert_eq!(out, Ok("done"));
    }

    #[tokio::test(start_paused = true)]
    async fn fails_with_elapsed_at_the_deadline() {
        let mut svc =
            TimeoutLayer::new(Some(Duration::from_secs(2))).layer_service(service_fn(slow));
        let start = tokio::time::Instant::now();
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(Duration::from_secs(60))
            .await;
        assert_eq!(out, Err(Err::Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn none_means_no_deadline() {
        let mut svc = TimeoutLayer::new(None).layer_service(service_fn(slow));
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(Duration::from_secs(3600))
            .await;
        assert_eq!(out, Ok("done"));
    }
}
