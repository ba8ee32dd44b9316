//! Watching slots: per-slot broadcast of accepted states, and the NDJSON streams of
//! `GET /slots/watch/:id` and `GET /slots/history/:id`.
//!
//! The writer publishes every accepted state, in commit order, with its sequence number
//! ([`Watchers::publish`]). A watch subscribes *before* reading the current state, so
//! every state committed after that read reaches it through the channel. The stream
//! emits only sequence `last + 1`: anything older is skipped; a gap (the broadcast
//! buffer overflowed because the client reads slowly, or an event was missed) is
//! filled by reading the missing states from the database, one page at a time. A
//! connected watcher therefore sees every accepted state exactly once and in order,
//! however slowly it reads. The stream ends cleanly when the server shuts down, and
//! with an error (an aborted body) if the database cannot be read.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::Stream;
use invariant_spec::Id;
use invariant_spec::slots::SlotState;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// States read from the database per blocking call when filling a gap or paging history.
const PAGE: usize = 256;
/// Number of slots watched at once before idle channels are swept.
const SWEEP_AT: usize = 1024;

/// One accepted state as a watcher sends it.
#[derive(Debug)]
pub struct Event {
    /// Sequence number of the state in its slot (0 = registration).
    pub seq: u64,
    /// The state as one NDJSON line.
    pub line: Bytes,
}

/// The broadcast channels of watched slots.
#[derive(Debug)]
pub struct Watchers {
    capacity: usize,
    slots: Mutex<Channels>,
}

#[derive(Debug)]
struct Channels {
    by_slot: HashMap<Id, broadcast::Sender<Arc<Event>>>,
    sweep_at: usize,
}

impl Watchers {
    /// Watchers whose channels buffer `capacity` states each (at least 1).
    pub fn new(capacity: usize) -> Watchers {
        Watchers {
            capacity: capacity.max(1),
            slots: Mutex::new(Channels {
                by_slot: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Channels> {
        // The map stays consistent even if a holder panicked.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of the states accepted for slot `id` from now on.
    pub fn subscribe(&self, id: &Id) -> broadcast::Receiver<Arc<Event>> {
        let mut channels = self.lock();
        if channels.by_slot.len() >= channels.sweep_at {
            channels.by_slot.retain(|_, tx| tx.receiver_count() > 0);
            channels.sweep_at = SWEEP_AT.max(2 * channels.by_slot.len());
        }
        let capacity = self.capacity;
        channels
            .by_slot
            .entry(*id)
            .or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    /// Sends an accepted state to the watchers of its slot, if any.
    pub fn publish(&self, id: &Id, seq: u64, state: &SlotState) {
        let mut channels = self.lock();
        let Some(tx) = channels.by_slot.get(id) else {
            return;
        };
        if tx.receiver_count() == 0 {
            channels.by_slot.remove(id);
            return;
        }
        match state_line(state) {
            Ok(line) => {
                let _ = tx.send(Arc::new(Event { seq, line }));
            }
            Err(e) => tracing::error!(error = %e, slot = %id, "cannot encode slot state"),
        }
    }

    /// Number of slots with a channel (watched now or recently).
    pub fn watched(&self) -> usize {
        self.lock().by_slot.len()
    }
}

/// A state as one line of NDJSON.
pub fn state_line(state: &SlotState) -> Result<Bytes, serde_json::Error> {
    let mut line = serde_json::to_vec(state)?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}

async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(io::Error::other),
        Err(e) => Err(io::Error::other(e)),
    }
}

fn lines(states: &[(u64, SlotState)]) -> io::Result<Vec<Bytes>> {
    states
        .iter()
        .map(|(_, state)| state_line(state).map_err(io::Error::other))
        .collect()
}

/// The body of a watch: `first` (the current state, sequence `seq`), then every later
/// state of slot `id`. `receiver` must have been subscribed before `first` was read.
pub fn watch_stream(
    store: Arc<Store>,
    id: Id,
    receiver: broadcast::Receiver<Arc<Event>>,
    seq: u64,
    first: Bytes,
    shutdown: CancellationToken,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let watch = Watch {
        store,
        id,
        receiver,
        last: seq,
        pending: VecDeque::from([first]),
        behind: false,
        shutdown,
        done: false,
    };
    futures_util::stream::unfold(watch, |mut watch| async move {
        let item = watch.next().await?;
        if item.is_err() {
            watch.done = true;
        }
        Some((item, watch))
    })
}

struct Watch {
    store: Arc<Store>,
    id: Id,
    receiver: broadcast::Receiver<Arc<Event>>,
    /// Sequence of the last state queued for the client.
    last: u64,
    pending: VecDeque<Bytes>,
    /// The database may hold states after `last` that the channel will not deliver.
    behind: bool,
    shutdown: CancellationToken,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.done || self.shutdown.is_cancelled() {
                return None;
            }
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(line));
            }
            if self.behind {
                if let Err(e) = self.fill().await {
                    tracing::error!(error = %e, slot = %self.id, "watch cannot read missed states");
                    return Some(Err(e));
                }
                continue;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                received = self.receiver.recv() => match received {
                    Ok(event) if event.seq <= self.last => {}
                    Ok(event) if event.seq == self.last + 1 => {
                        self.last = event.seq;
                        return Some(Ok(event.line.clone()));
                    }
                    // A gap: the missing states (and this one) are in the database.
                    Ok(_) | Err(RecvError::Lagged(_)) => self.behind = true,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Queues the next page of states after `last` from the database.
    async fn fill(&mut self) -> io::Result<()> {
        let (store, id, last) = (Arc::clone(&self.store), self.id, self.last);
        let page = blocking(move || store.after(&id, last, PAGE)).await?;
        self.behind = page.len() == PAGE;
        self.pending.extend(lines(&page)?);
        if let Some((seq, _)) = page.last() {
            self.last = *seq;
        }
        Ok(())
    }
}

/// The body of a history answer: the states of slot `id` from sequence `upto` down to
/// the registration, newest first, read one page per blocking call. States never change
/// once written, so paging needs no snapshot.
pub fn history_stream(
    store: Arc<Store>,
    id: Id,
    upto: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(
        (store, Some(upto), VecDeque::<Bytes>::new()),
        move |(store, mut next, mut pending)| async move {
            loop {
                if let Some(line) = pending.pop_front() {
                    return Some((Ok(line), (store, next, pending)));
                }
                let upto = next?;
                let reader = Arc::clone(&store);
                let page = match blocking(move || reader.history(&id, upto, PAGE)).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::error!(error = %e, slot = %id, "history read failed");
                        return Some((Err(e), (store, None, pending)));
                    }
                };
                next = match page.last() {
                    Some((seq, _)) if page.len() == PAGE => seq.checked_sub(1),
                    _ => None,
                };
                match lines(&page) {
                    Ok(lines) => pending.extend(lines),
                    Err(e) => return Some((Err(e), (store, None, pending))),
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Op, Outcome};
    use futures_util::StreamExt;
    use invariant_spec::slots::{Previous, SignatureConfig};

    fn setup() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("slots.redb")).expect("open");
        (dir, Arc::new(store))
    }

    /// Applies `op` and publishes its state as the writer does.
    fn commit(store: &Store, watchers: &Watchers, op: Op) -> SlotState {
        let outcome = store.apply(&[op]).expect("apply").remove(0);
        let Outcome::Accepted { id, seq, state } = outcome else {
            panic!("op refused: {outcome:?}");
        };
        watchers.publish(&id, seq, &state);
        state
    }

    fn parse(line: &Bytes) -> SlotState {
        serde_json::from_slice(line).expect("state line")
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_every_state_from_the_store() {
        let (_dir, store) = setup();
        // Two buffered states per watcher, so 300 updates overflow it many times over
        // (and cross the page size when filling).
        let watchers = Watchers::new(2);
        let id = Id::random();
        let mut address = Id::random();
        let registered = commit(
            &store,
            &watchers,
            Op::Register {
                id,
                address,
                signature: SignatureConfig::None,
                owner: None,
                claim: None,
            },
        );
        let receiver = watchers.subscribe(&id);
        let first = state_line(&registered).expect("line");
        let shutdown = CancellationToken::new();
        let mut stream = Box::pin(watch_stream(
            Arc::clone(&store),
            id,
            receiver,
            0,
            first,
            shutdown.clone(),
        ));
        let mut expected = vec![registered];
        for _ in 0..300 {
            let next = Id::random();
            expected.push(commit(
                &store,
                &watchers,
                Op::Update {
                    id,
                    base: 0,
                    previous: Previous::Address(address),
                    address: next,
                    signature: None,
                },
            ));
            address = next;
        }
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let line = stream.next().await.expect("stream open").expect("line");
            seen.push(parse(&line));
        }
        assert_eq!(seen, expected);

        // Live events after catching up, then a clean end on shutdown.
        let next = Id::random();
        let live = commit(
            &store,
            &watchers,
            Op::Update {
                id,
                base: 0,
                previous: Previous::Address(address),
                address: next,
                signature: None,
            },
        );
        let line = stream.next().await.expect("open").expect("line");
        assert_eq!(parse(&line), live);
        shutdown.cancel();
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn history_pages_cover_every_state_newest_first() {
        let (_dir, store) = setup();
        let watchers = Watchers::new(4);
        let id = Id::random();
        let mut address = Id::random();
        let mut expected = vec![commit(
            &store,
            &watchers,
            Op::Register {
                id,
                address,
                signature: SignatureConfig::None,
                owner: None,
                claim: None,
            },
        )];
        // Exactly two pages plus one state.
        for _ in 0..(2 * PAGE) {
            let next = Id::random();
            expected.push(commit(
                &store,
                &watchers,
                Op::Update {
                    id,
                    base: 0,
                    previous: Previous::Address(address),
                    address: next,
                    signature: None,
                },
            ));
            address = next;
        }
        expected.reverse();
        let lines: Vec<Bytes> = history_stream(Arc::clone(&store), id, (2 * PAGE) as u64)
            .map(|line| line.expect("line"))
            .collect()
            .await;
        let states: Vec<SlotState> = lines.iter().map(parse).collect();
        assert_eq!(states, expected);
    }

    #[test]
    fn idle_channels_are_swept() {
        let watchers = Watchers::new(1);
        for _ in 0..SWEEP_AT {
            drop(watchers.subscribe(&Id::random()));
        }
        assert_eq!(watchers.watched(), SWEEP_AT);
        let kept = Id::random();
        let _receiver = watchers.subscribe(&kept);
        assert_eq!(watchers.watched(), 1);
        // Publishing to a slot nobody watches any more drops its channel.
        let gone = Id::random();
        drop(watchers.subscribe(&gone));
        let state = SlotState {
            address: gone,
            previous: Previous::Root,
            time: None,
            signature: None,
            proof: None,
        };
        watchers.publish(&gone, 0, &state);
        assert_eq!(watchers.watched(), 1);
    }
}
