use crate::body::{FaultBody, Throttled};
use crate::error::FaultReset;
use crate::plan::AppliedFaults;
use crate::rule::AbortAction;
use crate::stats::ActiveGuard;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

/// What the layer still has to do once the response (or the decision) is there.
#[derive(Debug)]
pub(crate) struct Rest {
    pub response_delay: Option<Duration>,
    pub throttle: Option<u64>,
    pub applied: AppliedFaults,
    pub guards: Vec<ActiveGuard>,
    pub body_guards: Vec<ActiveGuard>,
}

/// What happens when a wait ends.
pub(crate) enum Next<S, Req, B> {
    /// Send the request upstream with this (ready) service.
    Call(S, Req),
    /// Pass on the upstream response.
    Respond(Response<B>),
    /// Answer with an abort response.
    Abort(AbortAction),
    /// Fail with [`FaultReset`].
    Reset,
}

pin_project! {
    /// Response future of [`crate::Fault`].
    pub struct ResponseFuture<F, S, Req, B> {
        #[pin]
        state: State<F, S, Req, B>,
        rest: Option<Box<Rest>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, Req, B> {
        Calling {
            #[pin]
            fut: F,
        },
        // Boxed: a wait is rare, and holds a service and a request; inline, it would make
        // every request's future (and every future around it) that much larger to move.
        Waiting {
            wait: Pin<Box<Wait<S, Req, B>>>,
        },
        Done,
    }
}

pin_project! {
    /// A planned delay, then what comes after it.
    struct Wait<S, Req, B> {
        #[pin]
        sleep: Option<Sleep>,
        next: Option<Next<S, Req, B>>,
    }
}

impl<F, S, Req, B> State<F, S, Req, B> {
    fn waiting(sleep: Option<Sleep>, next: Next<S, Req, B>) -> Self {
        State::Waiting {
            wait: Box::pin(Wait {
                sleep,
                next: Some(next),
            }),
        }
    }
}

impl<F, S, Req, B> ResponseFuture<F, S, Req, B> {
    pub(crate) fn passthrough(fut: F) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
            rest: None,
        }
    }

    pub(crate) fn call(fut: F, rest: Rest) -> Self {
        ResponseFuture {
            state: State::Calling { fut },
            rest: Some(Box::new(rest)),
        }
    }

    pub(crate) fn wait(delay: Duration, next: Next<S, Req, B>, rest: Rest) -> Self {
        ResponseFuture {
            state: State::waiting((!delay.is_zero()).then(|| tokio::time::sleep(delay)), next),
            rest: Some(Box::new(rest)),
        }
    }
}

/// Builds the response of an abort: HTTP status with optional `text/plain` body, or a gRPC
/// trailers-only response (HTTP 200, `application/grpc`, `grpc-status`, `grpc-message`).
pub(crate) fn abort_response<B>(action: &AbortAction) -> Response<FaultBody<B>> {
    match action {
        AbortAction::Http { status, body } => {
            let mut resp = Response::new(FaultBody::synthetic(body.clone().unwrap_or_default()));
            *resp.status_mut() = *status;
            if body.is_some() {
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
            }
            resp
        }
        AbortAction::Grpc { code, message } => {
            let mut resp = Response::new(FaultBody::synthetic(Bytes::new()));
            *resp.status_mut() = StatusCode::OK;
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(u16::from(*code)));
            if let Some(m) = message {
                h.insert("grpc-message", m.clone());
            }
            resp
        }
    }
}

/// Wraps the upstream body (throttled if planned) and records the applied faults.
fn finish<B>(resp: Response<B>, rest: Option<Box<Rest>>) -> Response<FaultBody<B>> {
    let Some(rest) = rest else {
        return resp.map(FaultBody::inner);
    };
    let Rest {
        throttle,
        applied,
        guards,
        body_guards,
        ..
    } = *rest;
    drop(guards);
    let mut resp = match throttle {
        Some(bps) => resp.map(|b| FaultBody::Throttled {
            inner: Box::pin(Throttled::with_guards(b, bps, body_guards)),
        }),
        None => resp.map(FaultBody::inner),
    };
    resp.extensions_mut().insert(applied);
    resp
}

impl<F, S, Req, B, E> Future for ResponseFuture<F, S, Req, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    S: tower::Service<Req, Future = F, Response = Response<B>, Error = E>,
    E: From<FaultReset>,
{
    type Output = Result<Response<FaultBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            match this.state.project() {
                StateProj::Calling { fut } => {
                    let resp = match ready!(fut.poll(cx)) {
                        Ok(resp) => resp,
                        Err(e) => {
                            this.rest.take();
                            self.as_mut().project().state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let delay = this.rest.as_ref().and_then(|r| r.response_delay);
                    match delay {
                        Some(d) if !d.is_zero() => {
                            self.as_mut().project().state.set(State::waiting(
                                Some(tokio::time::sleep(d)),
                                Next::Respond(resp),
                            ));
                        }
                        _ => {
                            let rest = this.rest.take();
                            self.as_mut().project().state.set(State::Done);
                            return Poll::Ready(Ok(finish(resp, rest)));
                        }
                    }
                }
                StateProj::Waiting { wait } => {
                    let wait = wait.as_mut().project();
                    if let Some(sleep) = wait.sleep.as_pin_mut() {
                        ready!(sleep.poll(cx));
                    }
                    let Some(next) = wait.next.take() else {
                        panic!("fault ResponseFuture polled after completion");
                    };
                    match next {
                        Next::Call(mut svc, req) => {
                            let fut = svc.call(req);
                            self.as_mut().project().state.set(State::Calling { fut });
                        }
                        Next::Respond(resp) => {
                            let rest = this.rest.take();
                            self.as_mut().project().state.set(State::Done);
                            return Poll::Ready(Ok(finish(resp, rest)));
                        }
                        Next::Abort(action) => {
                            let mut resp = abort_response(&action);
                            if let Some(rest) = this.rest.take() {
                                resp.extensions_mut().insert(rest.applied);
                            }
                            self.as_mut().project().state.set(State::Done);
                            return Poll::Ready(Ok(resp));
                        }
                        Next::Reset => {
                            let applied = this.rest.take().map(|r| r.applied).unwrap_or_default();
                            self.as_mut().project().state.set(State::Done);
                            return Poll::Ready(Err(FaultReset { applied }.into()));
                        }
                    }
                }
                StateProj::Done => panic!("fault ResponseFuture polled after completion"),
            }
        }
    }
}
