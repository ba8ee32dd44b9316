//! A find server that implements only the `core` profile of `spec/find.md`: has-reports
//! (`ids` or `items`), `HAS` and `CLOSER` lines, notify, and forwarding of new records
//! to known find servers nearer the block, resolved through a broker. Lowercase ids
//! only, no `gone` reports. Its defective variant forgets every holder of a block but
//! the latest to report it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use invariant_spec::Id;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{Answer, fake_id, id_routes, json_id, json_object, plain, refuse, serve, strict_id};

#[derive(Default)]
struct Records {
    /// Holders of each block, most recent report first.
    holders: HashMap<Id, Vec<Id>>,
    /// Find servers learnt from notify.
    peers: Vec<Id>,
}

#[derive(Clone)]
struct Find {
    records: Arc<Mutex<Records>>,
    broker: String,
    http: reqwest::Client,
    /// The defect switch: true keeps only the latest holder of each block.
    latest_holder_only: bool,
}

impl Find {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The url of find server `peer`, from the broker's location answer.
    async fn resolve(&self, peer: &Id) -> Option<String> {
        let url = format!("{}/broker/location/{peer}", self.broker);
        let answer: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        let first = answer
            .get("urls")
            .and_then(Value::as_array)
            .and_then(|urls| urls.first())
            .or_else(|| answer.get("url"))?;
        Some(first.as_str()?.trim_end_matches('/').to_string())
    }

    /// Sends `blocks` held by `container` to find server `peer`.
    async fn forward(self, peer: Id, container: Id, blocks: Vec<Id>) {
        let Some(url) = self.resolve(&peer).await else {
            return;
        };
        let body = json!({"container": container, "ids": blocks});
        // Forwarding is best effort.
        let _ = self
            .http
            .put(format!("{url}/find/has/"))
            .json(&body)
            .send()
            .await;
    }
}

async fn lookup(State(find): State<Find>, Path(block): Path<String>) -> Answer {
    let block = strict_id(&block).ok_or(refuse(StatusCode::BAD_REQUEST, "malformed id"))?;
    let me = fake_id();
    let records = find.lock();
    let mut closer: Vec<Id> = records
        .peers
        .iter()
        .filter(|p| block.distance(p) < block.distance(&me))
        .copied()
        .collect();
    block.sort_by_distance(&mut closer);
    let has = records.holders.get(&block).into_iter().flatten();
    let lines = has
        .map(|c| format!("HAS {c}\n"))
        .chain(closer.iter().map(|f| format!("CLOSER {f}\n")))
        .collect();
    Ok(plain(lines))
}

async fn has(State(find): State<Find>, body: Bytes) -> Answer {
    let report = json_object(&body)?;
    let container = json_id(&report, "container")
        .ok_or(refuse(StatusCode::BAD_REQUEST, "container must be an id"))?;
    let list = report.get("ids").or_else(|| report.get("items"));
    let blocks: Option<Vec<Id>> = list.and_then(Value::as_array).and_then(|ids| {
        ids.iter()
            .map(|id| id.as_str().and_then(strict_id))
            .collect()
    });
    let blocks = blocks.ok_or(refuse(StatusCode::BAD_REQUEST, "ids must be a list of ids"))?;
    let me = fake_id();
    let mut outgoing: HashMap<Id, Vec<Id>> = HashMap::new();
    {
        let mut records = find.lock();
        for block in &blocks {
            let holders = records.holders.entry(*block).or_default();
            holders.retain(|c| *c != container);
            if find.latest_holder_only {
                holders.clear();
            }
            holders.insert(0, container);
            for peer in &records.peers {
                if block.distance(peer) < block.distance(&me) {
                    outgoing.entry(*peer).or_default().push(*block);
                }
            }
        }
    }
    for (peer, blocks) in outgoing {
        tokio::spawn(find.clone().forward(peer, container, blocks));
    }
    Ok(plain(String::new()))
}

async fn notify(State(find): State<Find>, body: Bytes) -> Answer {
    let request = json_object(&body)?;
    let peer =
        json_id(&request, "find").ok_or(refuse(StatusCode::BAD_REQUEST, "find must be an id"))?;
    let mut records = find.lock();
    if peer != fake_id() && !records.peers.contains(&peer) {
        records.peers.push(peer);
    }
    Ok(plain(String::new()))
}

async fn start(broker: &str, latest_holder_only: bool) -> String {
    let find = Find {
        records: Arc::default(),
        broker: broker.trim_end_matches('/').to_string(),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client"),
        latest_holder_only,
    };
    let app = id_routes()
        .route("/find/has", put(has).post(has))
        .route("/find/has/", put(has).post(has))
        .route("/find/notify", put(notify).post(notify))
        .route("/find/notify/", put(notify).post(notify))
        .route("/find/{block}", get(lookup))
        .route("/find/{block}/", get(lookup))
        .with_state(find);
    serve(app, Arc::new(Notify::new())).await
}

/// A find server that does exactly what the `core` profile asks, resolving find
/// servers through the broker at `broker`.
pub async fn core(broker: &str) -> String {
    start(broker, false).await
}

/// The core find server, except that a has-report replaces the block's earlier holders
/// instead of adding to them.
pub async fn forgetting_holders(broker: &str) -> String {
    start(broker, true).await
}
