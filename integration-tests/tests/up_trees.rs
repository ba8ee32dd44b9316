//! File trees through `invariant up`: upload a directory to one storage server, pin the
//! tree, stop that server, and download the tree intact from the replicas the
//! distributor made — with token checks (the default) and over HTTPS with `--tls`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::up::{Up, UpMode};
use invariant_spec::DistributorClient;
use invariant_spec::http::Endpoint;

/// The pid of the server process whose command line names `data_dir`.
fn pid_of_server(data_dir: &Path) -> anyhow::Result<u32> {
    let wanted = data_dir.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.iter().any(|a| a == "--data-dir") && args.contains(&wanted) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no process serves {wanted}")
}

/// A tree's content: relative path → (kind `f`/`d`/`l`, mode, bytes or link target).
type Snapshot = BTreeMap<PathBuf, (char, u32, Vec<u8>)>;

/// Every file, directory and symlink under `root`.
fn snapshot(root: &Path) -> anyhow::Result<Snapshot> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let relative = path.strip_prefix(root)?.to_path_buf();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                out.insert(
                    relative,
                    ('l', 0, target.to_string_lossy().as_bytes().to_vec()),
                );
            } else if meta.is_dir() {
                out.insert(relative, ('d', mode, Vec::new()));
                pending.push(path);
            } else {
                out.insert(relative, ('f', mode, std::fs::read(&path)?));
            }
        }
    }
    Ok(out)
}

/// Upload, pin, wait for 3 copies, kill the server that got the upload, download the
/// tree identical from the others.
fn tree_flow(net: &Up, dir: &Path) -> anyhow::Result<()> {
    let urls = net.urls();

    // A tree with nested dirs, an empty file, a multi-block file, modes and a symlink.
    let source = dir.join("source");
    std::fs::create_dir_all(source.join("docs/deep"))?;
    std::fs::write(source.join("readme.txt"), b"hello tree\n")?;
    std::fs::write(source.join("docs/empty"), b"")?;
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(source.join("docs/deep/big.bin"), &big)?;
    std::fs::set_permissions(
        source.join("readme.txt"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::os::unix::fs::symlink("docs/deep/big.bin", source.join("link"))?;

    // Wait for the three storage servers and the distributor to register.
    net.wait_registered(3, &["distribute"])?;

    let upload = net.invariant(&[
        "upload",
        source.to_str().expect("utf-8"),
        "--compress",
        "brotli",
        "--encrypt",
        "--pin",
    ])?;
    let stderr = String::from_utf8_lossy(&upload.stderr).to_string();
    assert!(upload.status.success(), "upload failed: {stderr}");
    let link = String::from_utf8(upload.stdout)?
        .lines()
        .last()
        .expect("link line")
        .to_string();
    assert!(link.contains("\"address\""), "link: {link}");
    // Which server received the upload?
    let first_url = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("uploading to storage ")
                .and_then(|r| r.split(" at ").nth(1))
        })
        .expect("upload names its storage server")
        .trim()
        .to_string();
    let first_name = urls
        .iter()
        .find(|(_, url)| **url == first_url)
        .map(|(name, _)| name.clone())
        .expect("upload server is one of up's");

    // Wait until the distributor has copied every blob to the two other servers:
    // the download must then work without the first one.
    let link_file = dir.join("link.json");
    std::fs::write(&link_file, &link)?;
    let link_arg = format!("@{}", link_file.display());
    let pid = pid_of_server(&net.data_dir().join(&first_name))?;
    let distributor = DistributorClient::from_endpoint(Endpoint::with_client(
        net.url("distributor")?,
        net.client_security()?.http_client()?,
    )?);
    let runtime = tokio::runtime::Runtime::new()?;
    let copies_ready = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let status = distributor.status().await?;
            if status.pinned > 0
                && status.storages_active == 3
                && status.under_replicated == 0
                && status.copies_in_flight == 0
            {
                return anyhow::Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(false)
    })?;
    assert!(
        copies_ready,
        "the distributor did not replicate the tree in time"
    );
    // Every pinned blob is on 3 servers: stop the one that received the upload.
    let deadline = Instant::now() + Duration::from_secs(60);
    let target = dir.join("restored");
    Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()?;
    let restored = loop {
        let _ = std::fs::remove_dir_all(&target);
        let download = net.invariant(&["download", &link_arg, target.to_str().expect("utf-8")])?;
        if download.status.success() {
            break true;
        }
        if Instant::now() > deadline {
            eprintln!("{}", String::from_utf8_lossy(&download.stderr));
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(restored, "download after losing the first server failed");
    assert_eq!(
        snapshot(&target)?,
        snapshot(&source)?,
        "tree differs after round trip"
    );
    Ok(())
}

#[test]
fn uploaded_tree_survives_the_loss_of_its_first_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut net = Up::start(dir.path(), UpMode::default())?;
    tree_flow(&net, dir.path())?;
    net.stop()?;
    Ok(())
}

#[test]
fn uploaded_tree_survives_the_loss_of_its_first_server_over_https() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut net = Up::start(
        dir.path(),
        UpMode {
            tls: true,
            open: false,
        },
    )?;
    assert!(net.urls().values().all(|url| url.starts_with("https://")));
    tree_flow(&net, dir.path())?;
    net.stop()?;
    Ok(())
}
