//! What a request passes before it is served. Its message must arrive within a deadline (a
//! stream whose body does not is ended with an error, so a half-sent request cannot hold
//! anything for long); its connection counts it as in flight (an idle connection may be
//! given up, a busy one never); and it takes a slot only once its message has arrived, with
//! one client process held to a share of the slots, so no client can starve the others.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::BoxBody;
use tonic::codegen::http;
use tonic::Status;

use crate::conn::ConnInfo;
use crate::metrics;

/// The tower layer: read deadline and in-flight count.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLayer {
    /// How long a request's message may take to arrive, from its headers.
    pub read_timeout: Duration,
}

impl<S> tower::Layer<S> for IntakeLayer {
    type Service = Intake<S>;

    fn layer(&self, inner: S) -> Intake<S> {
        Intake {
            inner,
            read_timeout: self.read_timeout,
        }
    }
}

/// The service [`IntakeLayer`] makes.
#[derive(Debug, Clone)]
pub struct Intake<S> {
    inner: S,
    read_timeout: Duration,
}

impl<S> tower::Service<http::Request<BoxBody>> for Intake<S>
where
    S: tower::Service<http::Request<BoxBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let busy = req
            .extensions()
            .get::<ConnInfo>()
            .map(|i| InFlight::new(i.state.clone()));
        let req = req.map(|body| {
            BoxBody::new(Deadline {
                inner: body,
                sleep: Box::pin(tokio::time::sleep(self.read_timeout)),
                done: false,
                expired: false,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(busy);
            r
        })
    }
}

/// Counts a request in flight on its connection while alive.
pub(crate) struct InFlight(Arc<crate::conn::ConnState>);

impl InFlight {
    pub(crate) fn new(state: Arc<crate::conn::ConnState>) -> InFlight {
        state.begin();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A request body that fails once its deadline passes before its end (and ends after
/// that error).
struct Deadline {
    inner: BoxBody,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The inner body ended in time: no deadline any more.
    done: bool,
    /// The deadline passed first.
    expired: bool,
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        if this.done {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.expired = true;
                    metrics::slow_request();
                    Poll::Ready(Some(Err(Status::deadline_exceeded(
                        "the request's message did not arrive in time",
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request slots: a bound on requests served at once, a share of it per client process,
/// and how long a request waits for one before it is told to try again.
pub struct Slots {
    all: Arc<Semaphore>,
    share: usize,
    wait: Duration,
    per_client: Mutex<HashMap<i32, usize>>,
}

impl Slots {
    /// `max` slots; one client process may hold half of them (at least one).
    pub fn new(max: usize, wait: Duration) -> Arc<Slots> {
        let max = max.max(1);
        Arc::new(Slots {
            all: Arc::new(Semaphore::new(max)),
            share: (max / 2).max(1),
            wait,
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a request of process `pid` (0: unknown) whose message has arrived.
    pub async fn take(self: &Arc<Self>, pid: i32) -> Result<Slot, Status> {
        {
            let mut held = lock(&self.per_client);
            let n = held.entry(pid).or_default();
            if *n >= self.share {
                metrics::slot_refused("client-share");
                return Err(Status::resource_exhausted(
                    "this client has too many requests in progress",
                ));
            }
            *n += 1;
        }
        let counted = Counted {
            slots: self.clone(),
            pid,
        };
        let permit = tokio::time::timeout(self.wait, self.all.clone().acquire_owned()).await;
        match permit {
            Ok(Ok(permit)) => Ok(Slot {
                _permit: permit,
                _counted: counted,
            }),
            _ => {
                metrics::slot_refused("busy");
                Err(Status::unavailable("trestled is busy: try again"))
            }
        }
    }
}

/// A held slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _counted: Counted,
}

struct Counted {
    slots: Arc<Slots>,
    pid: i32,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut held = lock(&self.slots.per_client);
        if let Some(n) = held.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.pid);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_client_takes_at_most_half_the_slots_and_others_still_get_theirs() {
        let slots = Slots::new(4, Duration::from_millis(100));
        let a1 = slots.take(1).await.unwrap();
        let _a2 = slots.take(1).await.unwrap();
        let refused = slots.take(1).await.err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let _b1 = slots.take(2).await.unwrap();
        let _b2 = slots.take(2).await.unwrap();
        // Every slot taken: a third client waits, then hears "busy".
        let busy = slots.take(3).await.err().unwrap();
        assert_eq!(busy.code(), tonic::Code::Unavailable);
        drop(a1);
        assert!(slots.take(3).await.is_ok());
        assert!(slots.take(1).await.is_ok(), "its share came back");
    }
}
