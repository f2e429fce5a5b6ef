use crate::body::FaultBody;
use crate::error::FaultReset;
use crate::future::ResponseFuture;
use crate::headers::strip_fault_headers;
use crate::plan::{FaultPlan, FaultTarget, Terminal};
use crate::registry::FaultRegistry;
use bytes::Bytes;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};

/// A service that injects the faults planned for each request before, instead of, or after
/// calling the inner service.
///
/// The inner service must be `Clone`: a delayed request keeps the service that was made ready
/// and leaves a clone in its place (the usual tower idiom).
#[derive(Debug)]
pub struct Fault<S> {
    inner: S,
    registry: FaultRegistry,
    target: Arc<FaultTarget>,
    rng: fastrand::Rng,
}

impl<S> Fault<S> {
    /// Wraps `inner`; rules come from `registry`, filtered by `target`.
    pub fn new(inner: S, registry: FaultRegistry, target: Arc<FaultTarget>) -> Self {
        let rng = registry.rng();
        Fault {
            inner,
            registry,
            target,
            rng,
        }
    }
}

impl<S: Clone> Clone for Fault<S> {
    fn clone(&self) -> Self {
        // A fresh generator, so clones do not replay the same rolls.
        Fault::new(
            self.inner.clone(),
            self.registry.clone(),
            self.target.clone(),
        )
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for Fault<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: From<FaultReset>,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<FaultBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, Request<ReqB>, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let plan = self.registry.plan(&req, &self.target, &mut self.rng);
        if self.target.header_faults.is_some() {
            strip_fault_headers(req.headers_mut());
        }
        let Some(plan) = plan else {
            return ResponseFuture::passthrough(self.inner.call(req));
        };
        let FaultPlan {
            request_delay,
            response_delay,
            terminal,
            throttle,
            applied,
            guards,
            body_guards,
        } = plan;
        let rest = crate::future::Rest {
            response_delay,
            throttle,
            applied,
            guards,
            body_guards,
        };
        match terminal {
            // The request never goes upstream; both delays happen before the answer.
            Some(t) => {
                let delay = request_delay.unwrap_or_default() + response_delay.unwrap_or_default();
                let next = match t {
                    Terminal::Abort(a) => crate::future::Next::Abort(a),
                    Terminal::Reset => crate::future::Next::Reset,
                };
                ResponseFuture::wait(delay, next, rest)
            }
            None => match request_delay {
                Some(d) => {
                    let clone = self.inner.clone();
                    let ready = std::mem::replace(&mut self.inner, clone);
                    ResponseFuture::wait(d, crate::future::Next::Call(ready, req), rest)
                }
                None => ResponseFuture::call(self.inner.call(req), rest),
            },
        }
    }
}
