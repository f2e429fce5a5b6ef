//! Deadline for a whole request: the inner future must produce a response within the duration.
//!
//! Unlike `tower::timeout`, the error type stays the inner service's: it must implement
//! `From<Elapsed>`, so the proxy maps an elapsed deadline to 504 without downcasting.

mod error;
mod future;
mod layer;
mod reusable;
mod service;

pub use error::Elapsed;
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use reusable::ReusableDeadline;
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

    /// One call on a service with the connection's entry, as the proxy makes per request.
    async fn call_reusing(
        entry: &mut ReusableDeadline,
        timeout: Duration,
        takes: Duration,
    ) -> Result<&'static str, Err> {
        TimeoutLayer::new(Some(timeout))
            .layer_service(service_fn(slow))
            .reusing(entry)
            .oneshot(takes)
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_entry_times_each_call_from_its_own_start() {
        let mut entry = ReusableDeadline::default();
        let start = tokio::time::Instant::now();
        let first = call_reusing(
            &mut entry,
            Duration::from_secs(2),
            Duration::from_millis(1500),
        );
        assert_eq!(first.await, Ok("done"));
        assert_eq!(entry.armed_until(), Some(start + Duration::from_secs(2)));
        // The entry is still armed for the first call's deadline (2 s): the second call, which
        // started at 1.5 s, must not end there but may take until 3.5 s.
        let second = call_reusing(
            &mut entry,
            Duration::from_secs(2),
            Duration::from_millis(1999),
        );
        assert_eq!(second.await, Ok("done"));
        assert_eq!(start.elapsed(), Duration::from_millis(3499));
        // It fired once at 2 s and moved to the second call's deadline.
        assert_eq!(
            entry.armed_until(),
            Some(start + Duration::from_millis(3500))
        );
        let third = call_reusing(&mut entry, Duration::from_secs(2), Duration::from_secs(60));
        assert_eq!(third.await, Err(Err::Elapsed));
        assert_eq!(start.elapsed(), Duration::from_millis(5499));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_entry_armed_later_still_fires_at_a_shorter_deadline() {
        let mut entry = ReusableDeadline::default();
        let long = call_reusing(&mut entry, Duration::from_secs(30), Duration::from_secs(1));
        assert_eq!(long.await, Ok("done"));
        let start = tokio::time::Instant::now();
        let short = call_reusing(&mut entry, Duration::from_secs(2), Duration::from_secs(60));
        assert_eq!(short.await, Err(Err::Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_first_call_uses_the_reused_entry() {
        let mut entry = ReusableDeadline::default();
        let mut svc = TimeoutLayer::new(Some(Duration::from_secs(2)))
            .layer_service(service_fn(slow))
            .reusing(&mut entry);
        let start = tokio::time::Instant::now();
        let first = svc.call(Duration::from_secs(60));
        // A second call in flight at the same time times itself.
        let second = svc.call(Duration::from_secs(60));
        let (a, b) = tokio::join!(first, second);
        assert_eq!((a, b), (Err(Err::Elapsed), Err(Err::Elapsed)));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
