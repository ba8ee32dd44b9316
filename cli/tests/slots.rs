//! `invariant slot` against a real slots server run in-process on `127.0.0.1:0` and
//! found through a broker double: unsigned slots (`slot create --unsigned`) are
//! created without a key file, moved without a signature, and read back through
//! `get`, `history` and `watch`; with token checks on, only their registrant may move
//! them.

mod common;

use common::{invariant, ok, text};

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::slots::SignatureConfig;
use invariant_spec::{Id, SlotsClient};
use invariant_test_support::{FakeBroker, TestAuth};
use slots_server::SlotsConfig;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// A slots server registered with a broker double, in auth mode when `auth` is given.
struct Network {
    _dir: tempfile::TempDir,
    broker: FakeBroker,
    server: Server,
}

impl Network {
    async fn start(auth: Option<&TestAuth>) -> Network {
        let dir = tempfile::tempdir().expect("temp data dir");
        let mut options = ServerOptions::ephemeral(Role::Slots, dir.path());
        options.auth.root = auth.map(TestAuth::public);
        let ctx = ServerContext::prepare(options).expect("prepare slots server");
        let server = slots_server::start(&ctx, SlotsConfig::default())
            .await
            .expect("start slots server");
        let broker = FakeBroker::start().await;
        broker.register(server.id(), "slots", server.url());
        Network {
            _dir: dir,
            broker,
            server,
        }
    }

    /// `invariant --broker <broker> --config-dir <config_dir> [--token T] args…`.
    fn command(&self, config_dir: &Path, token: Option<&str>, args: &[&str]) -> Command {
        let mut command = invariant(self.broker.url(), config_dir);
        command.kill_on_drop(true);
        if let Some(token) = token {
            command.arg("--token").arg(token);
        }
        command.args(args);
        command
    }

    async fn run(&self, config_dir: &Path, token: Option<&str>, args: &[&str]) -> Output {
        self.command(config_dir, token, args)
            .output()
            .await
            .expect("run invariant")
    }

    fn client(&self) -> SlotsClient {
        SlotsClient::new(self.server.url()).expect("slots client")
    }
}

/// The next line the watcher prints.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("watch printed in time")
        .expect("read watch output")
        .expect("watch still running")
}

#[tokio::test]
async fn unsigned_slots_are_created_moved_and_watched_without_a_key() {
    let net = Network::start(None).await;
    let config = tempfile::tempdir().expect("config dir");
    let first = Id::of_content(b"first");
    let second = Id::of_content(b"second");

    let created = net
        .run(
            config.path(),
            None,
            &["slot", "create", "--unsigned", &first.to_string()],
        )
        .await;
    let slot = Id::parse(&ok(&created)).expect("create prints the slot id");
    assert!(
        !config.path().join("slots").exists(),
        "an unsigned slot keeps no key file"
    );
    let slot_config = net
        .client()
        .config(&slot)
        .await
        .expect("config")
        .expect("the slot exists");
    assert_eq!(slot_config.signature, SignatureConfig::None);

    // A watcher sees the registration state at once, then the update.
    let mut watch = net
        .command(config.path(), None, &["slot", "watch", &slot.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("piped stdout")).lines();
    let current: serde_json::Value =
        serde_json::from_str(&next_line(&mut lines).await).expect("JSON state");
    assert_eq!(current["address"], first.to_string());
    assert_eq!(current["previous"], "root");

    let set = net
        .run(
            config.path(),
            None,
            &["slot", "set", &slot.to_string(), &second.to_string()],
        )
        .await;
    assert_eq!(ok(&set), second.to_string());
    let moved: serde_json::Value =
        serde_json::from_str(&next_line(&mut lines).await).expect("JSON state");
    assert_eq!(moved["address"], second.to_string());
    assert_eq!(moved["previous"], first.to_string());
    assert!(
        moved.get("signature").is_none(),
        "an unsigned update carries no signature: {moved}"
    );
    watch.kill().await.expect("stop watch");

    let got = net
        .run(config.path(), None, &["slot", "get", &slot.to_string()])
        .await;
    let state: serde_json::Value = serde_json::from_str(&ok(&got)).expect("JSON state");
    assert_eq!(state["address"], second.to_string());
    let history = net
        .run(config.path(), None, &["slot", "history", &slot.to_string()])
        .await;
    let history = ok(&history);
    let states: Vec<&str> = history.lines().collect();
    assert_eq!(states.len(), 2, "{history}");
    assert!(states[0].contains(&second.to_string()) && states[1].contains("\"root\""));
}

#[tokio::test]
async fn with_token_checks_only_the_registrant_moves_an_unsigned_slot() {
    let auth = TestAuth::new();
    let net = Network::start(Some(&auth)).await;
    let config = tempfile::tempdir().expect("config dir");
    let alice = auth.token("alice", "slots:write");
    let bob = auth.token("bob", "slots:write");
    let first = Id::of_content(b"first");
    let second = Id::of_content(b"second");

    let created = net
        .run(
            config.path(),
            Some(&alice),
            &["slot", "create", "--unsigned", &first.to_string()],
        )
        .await;
    let slot = ok(&created);

    let refused = net
        .run(
            config.path(),
            Some(&bob),
            &["slot", "set", &slot, &second.to_string()],
        )
        .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("403"),
        "{}",
        text(&refused.stderr)
    );
    let slot_id = Id::parse(&slot).expect("slot id");
    let state = net
        .client()
        .get(&slot_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(state.address, first, "a refused update changes nothing");

    let moved = net
        .run(
            config.path(),
            Some(&alice),
            &["slot", "set", &slot, &second.to_string()],
        )
        .await;
    assert_eq!(ok(&moved), second.to_string());
    let state = net
        .client()
        .get(&slot_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(state.address, second);
}
