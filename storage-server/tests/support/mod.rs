//! What several storage test suites share: starting an in-process storage server on
//! a free loopback port.

use std::path::Path;

use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use storage_server::StorageConfig;

/// Starts a storage server on `dir` with `config`, `configure` applied to its options.
pub async fn launch(
    dir: &Path,
    config: StorageConfig,
    configure: impl FnOnce(&mut ServerOptions),
) -> Server {
    let mut options = ServerOptions::ephemeral(Role::Storage, dir);
    configure(&mut options);
    let ctx = ServerContext::prepare(options).expect("prepare storage context");
    storage_server::start(&ctx, config)
        .await
        .expect("start storage server")
}
