//! Group commit: one thread owns every write to the database.
//!
//! Handlers send [`Op`]s (signatures already verified) through a bounded channel. The
//! writer thread takes every op waiting (up to the batch limit), applies them in arrival
//! order in one write transaction ([`Store::apply`]: each op sees the effects of the ones
//! before it, so compare-and-swap stays exact), commits durably once, publishes the
//! accepted states to watchers in commit order, then answers each request. One fsync
//! thus serves a whole batch, and all updates of a slot are serialised: concurrent CAS
//! attempts from the same `previous` have exactly one winner.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Op, Outcome, Store};
use crate::watch::Watchers;

/// Ops that may wait for the writer before senders are slowed down.
const QUEUE: usize = 4096;

/// Why an op got no outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The batch's transaction failed; nothing in it was committed. Details are logged.
    #[error("the database write failed")]
    Failed,
    /// The writer thread has stopped.
    #[error("the writer has stopped")]
    Stopped,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// Handle to the writer thread; cheap to clone. The thread ends when every handle is
/// dropped (after finishing the ops already sent).
#[derive(Clone, Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread over `store`, committing at most `max_batch` ops per
    /// transaction and publishing accepted states to `watchers`.
    pub fn spawn(
        store: Arc<Store>,
        watchers: Arc<Watchers>,
        max_batch: usize,
    ) -> std::io::Result<Writer> {
        let (jobs, receiver) = mpsc::channel(QUEUE);
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name("slots-writer".into())
            .spawn(move || run(&store, &watchers, receiver, max_batch))?;
        Ok(Writer { jobs })
    }

    /// Sends `op` to the writer and waits until its batch is durably committed (or
    /// failed).
    pub async fn submit(&self, op: Op) -> Result<Outcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { op, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

fn run(store: &Store, watchers: &Watchers, mut receiver: mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = store.apply(batch.iter().map(|job| &job.op));
        metrics::histogram!("slots_commit_batch_size").record(batch.len() as f64);
        match result {
            Ok(outcomes) => {
                for outcome in &outcomes {
                    if let Outcome::Accepted { id, seq, state }
                    | Outcome::Claimed { id, seq, state } = outcome
                    {
                        watchers.publish(id, *seq, state);
                    }
                }
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    metrics::counter!("slots_ops_total", "outcome" => outcome_label(&outcome))
                        .increment(1);
                    // The requester may have gone; its op is committed either way.
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "slot batch not committed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(WriteError::Failed));
                }
            }
        }
    }
    tracing::debug!("slots writer stopped");
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Accepted { .. } => "accepted",
        Outcome::Claimed { .. } => "claimed",
        Outcome::Taken => "taken",
        Outcome::Unsupported => "unsupported",
        Outcome::Unknown => "unknown",
        Outcome::Stale { .. } => "stale",
        Outcome::Reregistered => "reregistered",
    }
}
