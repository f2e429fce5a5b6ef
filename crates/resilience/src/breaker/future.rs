use super::error::Reject;
use super::state::{Admission, Outcome};
use super::{CircuitOpen, Overloaded};
use crate::FailureClass;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project! {
    /// Response future of [`super::CircuitBreaker`].
    pub struct ResponseFuture<S, Req, F> {
        #[pin]
        state: State<S, Req, F>,
        admission: Option<Admission>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F> {
        Rejected { reject: Option<Reject> },
        // Boxed: rare (the inner service was not ready), and a request inline would make every
        // request's future that much larger to move.
        Waiting { waiting: Box<(S, Option<Req>)> },
        Active { #[pin] fut: F },
    }
}

impl<S, Req, F> ResponseFuture<S, Req, F> {
    pub(crate) fn rejected(reject: Reject) -> Self {
        ResponseFuture {
            state: State::Rejected {
                reject: Some(reject),
            },
            admission: None,
        }
    }

    pub(crate) fn active(fut: F, admission: Admission) -> Self {
        ResponseFuture {
            state: State::Active { fut },
            admission: Some(admission),
        }
    }

    pub(crate) fn waiting(svc: S, req: Req, admission: Admission) -> Self {
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::new((svc, Some(req))),
            },
            admission: Some(admission),
        }
    }
}

impl<S, Req, F, RB, E> Future for ResponseFuture<S, Req, F>
where
    S: tower::Service<Req, Response = Response<RB>, Error = E, Future = F>,
    F: Future<Output = Result<Response<RB>, E>>,
    E: FailureClass + From<Overloaded> + From<CircuitOpen>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Rejected { reject } => {
                    return match reject.take() {
                        Some(Reject::Overloaded(o)) => Poll::Ready(Err(o.into())),
                        Some(Reject::Open(o)) => Poll::Ready(Err(o.into())),
                        None => Poll::Pending, // polled after completion
                    };
                }
                StateProj::Waiting { waiting } => {
                    let (svc, req) = &mut **waiting;
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        if let Some(a) = this.admission.as_mut() {
                            a.finish(Outcome::Ignored);
                        }
                        return Poll::Ready(Err(e));
                    }
                    if let Some(a) = this.admission.as_mut()
                        && let Err(o) = a.activate()
                    {
                        return Poll::Ready(Err(o.into()));
                    }
                    let Some(req) = req.take() else {
                        return Poll::Pending; // polled after completion
                    };
                    let fut = svc.call(req);
                    this.state.set(State::Active { fut });
                }
                StateProj::Active { fut } => {
                    let res = ready!(fut.poll(cx));
                    if let Some(mut a) = this.admission.take() {
                        let failure_on = &a.failure_on();
                        let outcome = match &res {
                            Ok(resp) if failure_on.match_response(resp).is_some() => {
                                Outcome::Failure
                            }
                            Ok(_) => Outcome::Success,
                            Err(e) => {
                                let kind = e.failure_kind();
                                if !kind.is_upstream_failure() {
                                    Outcome::Ignored
                                } else if failure_on.matches_kind(kind) {
                                    Outcome::Failure
                                } else {
                                    Outcome::Success
                                }
                            }
                        };
                        a.finish(outcome);
                    }
                    return Poll::Ready(res);
                }
            }
        }
    }
}
