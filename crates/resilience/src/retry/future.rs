use super::layer::Shared;
use super::retry_after::parse_retry_after;
use super::service::{X_MESH_ATTEMPT, attempt_value};
use super::{ReplayBody, RetryReason, RetryStats};
use crate::FailureClass;
use crate::breaker::RetryPermit;
use crate::timeout::{self, Elapsed};
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};
use tokio::time::Sleep;

pin_project! {
    /// Response future of [`super::Retry`].
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        kind: Kind<F, S, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, S, B> {
        // Not retriable: one attempt, no retry state at all.
        Once { #[pin] fut: timeout::ResponseFuture<'static, F> },
        Retrying { #[pin] state: State<F>, ctx: Ctx<S, B> },
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Attempt { #[pin] fut: timeout::ResponseFuture<'static, F> },
        Backoff { #[pin] sleep: Sleep },
        Ready,
    }
}

/// What a retriable request keeps between attempts (head, body template, a service clone).
pub(crate) struct Ctx<S, B> {
    pub(crate) svc: S,
    pub(crate) parts: http::request::Parts,
    pub(crate) body: ReplayBody<B>,
    /// Number of the attempt in flight (1-based).
    pub(crate) attempt: u32,
    pub(crate) shared: Arc<Shared>,
    /// Non-idempotent request under `NonIdempotent::Unprocessed`.
    pub(crate) unprocessed_only: bool,
    /// The breaker's `max_retries` permit for the retry in flight.
    pub(crate) permit: Option<RetryPermit>,
}

fn per_try<F>(fut: F, d: Option<Duration>) -> timeout::ResponseFuture<'static, F> {
    timeout::ResponseFuture::new(fut, d)
}

impl<F, S, B> ResponseFuture<F, S, B> {
    pub(crate) fn once(fut: F, per_try_timeout: Option<Duration>) -> Self {
        ResponseFuture {
            kind: Kind::Once {
                fut: per_try(fut, per_try_timeout),
            },
        }
    }

    pub(crate) fn retrying(fut: F, ctx: Ctx<S, B>) -> Self {
        let d = ctx.shared.config.per_try_timeout;
        ResponseFuture {
            kind: Kind::Retrying {
                state: State::Attempt {
                    fut: per_try(fut, d),
                },
                ctx,
            },
        }
    }
}

impl<S, B: Body + Unpin> Ctx<S, B> {
    /// After attempt `self.attempt` finished with `res`: `Some(delay)` to retry, `None` to return it.
    fn decide<RB, E: FailureClass>(&mut self, res: &Result<Response<RB>, E>) -> Option<Duration> {
        self.permit = None;
        let shared = &*self.shared;
        let config = &shared.config;
        let stats = &shared.stats;
        let matched = match res {
            Ok(resp) if !self.unprocessed_only => config.conditions.match_response(resp).map(|f| {
                let after = config.retry_after_cap.and_then(|cap| {
                    let v = resp.headers().get(http::header::RETRY_AFTER)?;
                    Some(parse_retry_after(v.as_bytes(), SystemTime::now())?.min(cap))
                });
                (RetryReason::from_response(f), after)
            }),
            Ok(_) => None,
            Err(e) => {
                let kind = e.failure_kind();
                (config.conditions.matches_kind(kind)
                    && (!self.unprocessed_only || kind.never_processed()))
                .then_some((RetryReason::from_kind(kind), None))
            }
        };
        let Some((reason, retry_after)) = matched else {
            if self.attempt > 1 && res.is_ok() {
                RetryStats::bump(&stats.succeeded_after_retry);
            }
            return None;
        };
        if self.attempt >= config.max_attempts {
            RetryStats::bump(&stats.attempts_exhausted);
            return None;
        }
        if !self.body.can_replay() {
            RetryStats::bump(&stats.body_too_large);
            return None;
        }
        let permit = match &shared.gate {
            Some(gate) => match gate.try_acquire() {
                Some(p) => Some(p),
                None => {
                    RetryStats::bump(&stats.retry_overflow);
                    return None;
                }
            },
            None => None,
        };
        if let Some(budget) = &shared.budget
            && !budget.try_withdraw()
        {
            RetryStats::bump(&stats.budget_exhausted);
            return None;
        }
        self.permit = permit;
        self.attempt += 1;
        RetryStats::bump(&stats.retries_by_reason[reason as usize]);
        let delay = retry_after
            .unwrap_or_else(|| config.backoff.delay(self.attempt - 1, fastrand::u64(..)));
        tracing::debug!(
            attempt = self.attempt,
            reason = reason.as_str(),
            delay_ms = delay.as_millis() as u64,
            "retrying request"
        );
        Some(delay)
    }

    fn next_request(&self) -> Request<ReplayBody<B>> {
        let mut parts = self.parts.clone();
        parts
            .headers
            .insert(X_MESH_ATTEMPT, attempt_value(self.attempt));
        Request::from_parts(parts, self.body.replay())
    }
}

impl<F, S, B, RB, E> Future for ResponseFuture<F, S, B>
where
    F: Future<Output = Result<Response<RB>, E>>,
    S: tower::Service<Request<ReplayBody<B>>, Response = Response<RB>, Error = E, Future = F>,
    E: FailureClass + From<Elapsed>,
    B: Body + Unpin,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut state, ctx) = match self.project().kind.project() {
            KindProj::Once { fut } => return fut.poll(cx),
            KindProj::Retrying { state, ctx } => (state, ctx),
        };
        loop {
            match state.as_mut().project() {
                StateProj::Attempt { fut } => {
                    let res = ready!(fut.poll(cx));
                    match ctx.decide(&res) {
                        None => return Poll::Ready(res),
                        Some(delay) => {
                            drop(res);
                            if delay.is_zero() {
                                state.set(State::Ready);
                            } else {
                                state.set(State::Backoff {
                                    sleep: tokio::time::sleep(delay),
                                });
                            }
                        }
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    state.set(State::Ready);
                }
                StateProj::Ready => {
                    ready!(ctx.svc.poll_ready(cx))?;
                    let fut = ctx.svc.call(ctx.next_request());
                    state.set(State::Attempt {
                        fut: per_try(fut, ctx.shared.config.per_try_timeout),
                    });
                }
            }
        }
    }
}
