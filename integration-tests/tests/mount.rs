//! `invariant mount` through FUSE against real servers (broker, storage, slots, names
//! and two files servers on loopback): an uploaded tree mounted read-only (by link and
//! by name) reads like its source; a slot mounted read-write takes a `cp -r`, a git
//! commit and every other kind of change, and a second files server then shows the
//! same tree; two writable mounts of one slot (on two servers, then on one) race and
//! exactly one sync wins; and under `invariant up`'s token checks the command moves
//! signed and unsigned slots itself.
//!
//! These tests need `/dev/fuse` and `fusermount3`: without them they skip loudly, and
//! fail when `CI` is set.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::up::{CLIENT_ENV, Up, UpMode};
use integration_tests::{ServerProcess, bin_path};

/// Whether this machine can mount FUSE file systems; reports the skip otherwise.
fn fuse_ready() -> bool {
    let on_path = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    if !Path::new("/dev/fuse").exists() {
        invariant_test_support::missing_tool(
            "/dev/fuse",
            "the fuse kernel module, or a container given the device",
        );
        return false;
    }
    if !on_path("fusermount3") {
        invariant_test_support::missing_tool("fusermount3", "apt-get install fuse3");
        return false;
    }
    true
}

/// Broker, storage, slots, names and two files servers (no periodic syncs: only the
/// mounts' own).
struct Net {
    dir: PathBuf,
    broker: ServerProcess,
    _storage: ServerProcess,
    _slots: ServerProcess,
    _names: ServerProcess,
    files: [ServerProcess; 2],
}

impl Net {
    fn start(dir: &Path) -> anyhow::Result<Net> {
        let broker = ServerProcess::start("broker-server", &dir.join("broker"), &[])?;
        let with_broker = ["--broker", broker.url()];
        let storage = ServerProcess::start("storage-server", &dir.join("storage"), &with_broker)?;
        let slots = ServerProcess::start("slots-server", &dir.join("slots"), &with_broker)?;
        let names = ServerProcess::start("names-server", &dir.join("names"), &with_broker)?;
        let files_args = ["--broker", broker.url(), "--sync-interval", "0"];
        let files = [
            ServerProcess::start("files-server", &dir.join("files-1"), &files_args)?,
            ServerProcess::start("files-server", &dir.join("files-2"), &files_args)?,
        ];
        let net = Net {
            dir: dir.to_path_buf(),
            broker,
            _storage: storage,
            _slots: slots,
            _names: names,
            files,
        };
        net.wait_registered()?;
        Ok(net)
    }

    fn command(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(bin_path("invariant")?);
        for var in CLIENT_ENV {
            command.env_remove(var);
        }
        command
            .env("INVARIANT_CONFIG_DIR", self.dir.join("config"))
            .env("INVARIANT_BROKER", self.broker.url())
            .stdin(Stdio::null());
        Ok(command)
    }

    fn invariant(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command()?.args(args).output()?)
    }

    /// `invariant <args>`, which must succeed; its stdout's last line.
    fn last_line(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.invariant(args)?;
        ensure!(
            out.status.success(),
            "invariant {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .last()
            .context("no output")?
            .to_string())
    }

    fn wait_registered(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.invariant(&["status"])?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let count = |kind: &str| text.lines().filter(|l| l.starts_with(kind)).count();
            let ready = [("storage", 1), ("slots", 1), ("names", 1), ("files", 2)];
            if ready.iter().all(|(kind, n)| count(kind) == *n) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "servers did not register:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Uploads `dir` (plain blocks); returns the root link's JSON.
    fn upload(&self, dir: &Path, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["upload", path_str(dir)?];
        args.extend_from_slice(extra);
        self.last_line(&args)
    }

    /// An unsigned slot holding the tree of an empty folder.
    fn empty_slot(&self) -> anyhow::Result<String> {
        let empty = self.dir.join(format!("empty-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&empty)?;
        let link: serde_json::Value = serde_json::from_str(&self.upload(&empty, &[])?)?;
        let address = link["address"].as_str().context("link without address")?;
        self.last_line(&["slot", "create", "--unsigned", address])
    }

    /// Starts `invariant mount <target> <dir> <extra…>` and waits for the mount.
    fn mount(&self, target: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<Mounted> {
        spawn_mount(self.command()?, target, dir, extra)
    }
}

/// Starts `<command> mount <target> <dir> <extra…>` and waits for the mount.
fn spawn_mount(
    mut command: Command,
    target: &str,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Mounted> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let log = dir.with_extension("log");
    let out = dir.with_extension("out");
    let child = command
        .args(["mount", target, path_str(&dir)?])
        .args(extra)
        .stdout(File::create(&out)?)
        .stderr(File::create(&log)?)
        .spawn()?;
    let mut mounted = Mounted {
        child: Some(child),
        dir,
        log,
        out,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounted.is_mounted()? {
        if let Some(child) = mounted.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            mounted.child = None;
            bail!("mount exited with {status}: {}", mounted.log());
        }
        ensure!(
            Instant::now() < deadline,
            "not mounted in time: {}",
            mounted.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(mounted)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("path is not UTF-8")
}

/// A running `invariant mount`.
struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    out: PathBuf,
}

impl Mounted {
    fn is_mounted(&self) -> anyhow::Result<bool> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let wanted = self.dir.to_string_lossy().to_string();
        Ok(mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(wanted.as_str())))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (bounded wait); the folder is unmounted then.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mount did not stop in time: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        ensure!(
            !self.is_mounted()?,
            "still mounted after the command exited"
        );
        Ok(status)
    }

    /// What the command printed on stdout.
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Never leave a dead mount behind.
        if self.is_mounted().unwrap_or(false) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .status();
        }
    }
}

/// A tree: relative path → (kind `f`/`d`/`l`, size, executable, bytes or target).
type Snapshot = BTreeMap<PathBuf, (char, u64, bool, Vec<u8>)>;

fn snapshot(root: &Path, skip: &[&str]) -> anyhow::Result<Snapshot> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let relative = path.strip_prefix(root)?.to_path_buf();
            if skip.iter().any(|s| relative.starts_with(s)) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            let executable = meta.permissions().mode() & 0o100 != 0;
            let value = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                ('l', 0, false, target.to_string_lossy().as_bytes().to_vec())
            } else if meta.is_dir() {
                pending.push(path.clone());
                ('d', 0, false, Vec::new())
            } else {
                ('f', meta.len(), executable, std::fs::read(&path)?)
            };
            out.insert(relative, value);
        }
    }
    Ok(out)
}

/// Nested folders, an empty file, a multi-block file, an executable and a symlink.
fn make_source(dir: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::create_dir_all(dir.join("docs/deep"))?;
    std::fs::create_dir_all(dir.join("empty-dir"))?;
    std::fs::write(dir.join("readme.txt"), b"hello mount\n")?;
    std::fs::write(dir.join("docs/empty"), b"")?;
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("docs/deep/big.bin"), &big)?;
    std::fs::write(dir.join("run.sh"), b"#!/bin/sh\necho hi\n")?;
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("docs/deep/big.bin", dir.join("link"))?;
    Ok(big)
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output()?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// `git` with no system or user configuration.
fn git(dir: &Path, home: &Path, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("git")
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .args(args))
}

#[test]
fn a_tree_mounted_read_only_reads_like_its_source() -> anyhow::Result<()> {
    if !fuse_ready() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let net = Net::start(dir.path())?;
    let source = dir.path().join("source");
    let big = make_source(&source)?;
    let link = net.upload(&source, &["--encrypt", "--compress", "brotli"])?;
    let link_file = dir.path().join("link.json");
    std::fs::write(&link_file, &link)?;

    let mnt = dir.path().join("mnt");
    let mut mounted = net.mount(&format!("@{}", link_file.display()), &mnt, &[])?;
    let mnt = mounted.dir.clone();
    run(Command::new("diff").arg("-r").arg(&source).arg(&mnt))?;
    assert_eq!(snapshot(&mnt, &[])?, snapshot(&source, &[])?);
    assert_eq!(
        std::fs::read_link(mnt.join("link"))?,
        Path::new("docs/deep/big.bin")
    );
    // A read in the middle of the multi-block file, across a block boundary.
    let mut buf = vec![0; 300_000];
    let file = File::open(mnt.join("docs/deep/big.bin"))?;
    file.read_exact_at(&mut buf, 2_000_000)?;
    assert_eq!(buf, big[2_000_000..2_300_000]);
    drop(file);
    // Nothing can be changed.
    let refused = std::fs::write(mnt.join("new.txt"), b"x").expect_err("read-only");
    assert_eq!(refused.raw_os_error(), Some(30), "EROFS: {refused}");

    let status = mounted.stop()?;
    assert!(status.success(), "mount failed: {}", mounted.log());

    // The same tree by name (a name holds an address: a plain upload).
    let plain = net.upload(&source, &[])?;
    let value: serde_json::Value = serde_json::from_str(&plain)?;
    let address = value["address"].as_str().context("link without address")?;
    net.last_line(&["name", "register", "mounted-tree", address])?;
    let mut by_name = net.mount("mounted-tree", &dir.path().join("by-name"), &[])?;
    assert_eq!(
        std::fs::read(by_name.dir.join("readme.txt"))?,
        b"hello mount\n"
    );
    let status = by_name.stop()?;
    assert!(status.success(), "mount failed: {}", by_name.log());

    // A plain link mounted read-write: the new tree's link is printed at the end.
    let mut writable = net.mount(&plain, &dir.path().join("writable"), &["--read-write"])?;
    let mut file = File::create(writable.dir.join("added.txt"))?;
    file.write_all(b"added\n")?;
    file.sync_all()?;
    drop(file);
    let status = writable.stop()?;
    assert!(status.success(), "mount failed: {}", writable.log());
    let changed = writable.stdout().trim().to_string();
    assert_ne!(changed, plain.trim(), "a new tree");
    let mut check = net.mount(&changed, &dir.path().join("changed"), &[])?;
    assert_eq!(std::fs::read(check.dir.join("added.txt"))?, b"added\n");
    assert_eq!(
        std::fs::read(check.dir.join("readme.txt"))?,
        b"hello mount\n"
    );
    check.stop()?;
    Ok(())
}

#[test]
fn a_slot_mounted_read_write_keeps_a_git_repository() -> anyhow::Result<()> {
    if !fuse_ready() {
        return Ok(());
    }
    if Command::new("git").arg("--version").output().is_err() {
        invariant_test_support::missing_tool("git", "apt-get install git");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let net = Net::start(dir.path())?;
    let source = dir.path().join("source");
    make_source(&source)?;
    let slot = net.empty_slot()?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;

    let files_1 = net.files[0].url().to_string();
    let mut first = net.mount(
        &slot,
        &dir.path().join("mnt-1"),
        &["--read-write", "--files", &files_1],
    )?;
    let project = first.dir.join("project");
    run(Command::new("cp").arg("-r").arg(&source).arg(&project))?;
    git(&project, &home, &["init", "-q"])?;
    git(&project, &home, &["add", "-A"])?;
    git(&project, &home, &["commit", "-q", "-m", "first commit"])?;
    let head = git(&project, &home, &["rev-parse", "HEAD"])?;
    let status = first.stop()?;
    assert!(status.success(), "mount failed: {}", first.log());
    assert!(
        first.stdout().contains("\"address\""),
        "a writable mount prints its tree's link: {}",
        first.stdout()
    );

    // The same slot through the other files server.
    let files_2 = net.files[1].url().to_string();
    let mut second = net.mount(
        &slot,
        &dir.path().join("mnt-2"),
        &["--read-write", "--files", &files_2],
    )?;
    let project = second.dir.join("project");
    assert_eq!(snapshot(&project, &[".git"])?, snapshot(&source, &[])?);
    run(Command::new("diff")
        .arg("-r")
        .arg(&source)
        .arg(&project)
        .args(["-x", ".git"]))?;
    assert_eq!(git(&project, &home, &["rev-parse", "HEAD"])?, head);
    assert!(git(&project, &home, &["log", "--format=%s"])?.contains("first commit"));
    git(&project, &home, &["fsck", "--strict"])?;
    assert_eq!(git(&project, &home, &["status", "--porcelain"])?, "");
    let status = second.stop()?;
    assert!(status.success(), "mount failed: {}", second.log());
    Ok(())
}

#[test]
fn two_writers_of_one_slot_one_sync_wins_the_other_reports_the_conflict() -> anyhow::Result<()> {
    if !fuse_ready() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let net = Net::start(dir.path())?;
    let urls = [
        net.files[0].url().to_string(),
        net.files[1].url().to_string(),
    ];
    race(&net, &dir.path().join("two-servers"), &urls)?;
    // Both mounts on one files server: each sync is its own mount's.
    let one = [urls[0].clone(), urls[0].clone()];
    race(&net, &dir.path().join("one-server"), &one)
}

/// Mounts one new slot through `urls` (one mount each), writes and fsyncs a file in
/// both at once, and checks that exactly one sync wins.
fn race(net: &Net, dir: &Path, urls: &[String; 2]) -> anyhow::Result<()> {
    let slot = net.empty_slot()?;
    let mut mounts = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let mnt = dir.join(format!("mnt-{i}"));
        mounts.push(net.mount(&slot, &mnt, &["--read-write", "--files", url])?);
    }
    // Both trees were read from the same slot value: whichever syncs first wins.
    let paths: Vec<PathBuf> = mounts
        .iter()
        .enumerate()
        .map(|(i, m)| m.dir.join(format!("writer-{i}.txt")))
        .collect();
    let results: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
        let writers: Vec<_> = paths
            .iter()
            .map(|path| {
                scope.spawn(move || {
                    let mut file = File::create(path)?;
                    file.write_all(b"written by one of two mounts\n")?;
                    file.sync_all()
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("panic")))
            })
            .collect()
    });
    let won: Vec<usize> = (0..2).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one sync wins: {results:?}\nmount 0 said:\n{}\nmount 1 said:\n{}",
        mounts[0].log(),
        mounts[1].log()
    );
    let (winner, loser) = (won[0], 1 - won[0]);
    let lost = results[loser].as_ref().expect_err("the loser failed");
    assert_eq!(lost.raw_os_error(), Some(5), "EIO: {lost}");
    assert!(
        mounts[loser].log().contains("conflict"),
        "the loser says why: {}",
        mounts[loser].log()
    );
    // The loser's tree was reloaded from the slot: it shows the winner's file.
    let winner_name = format!("writer-{winner}.txt");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mounts[loser].dir.join(&winner_name).exists() {
        ensure!(
            Instant::now() < deadline,
            "the loser's mount was not reloaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for mount in &mut mounts {
        let status = mount.stop()?;
        assert!(status.success(), "mount failed: {}", mount.log());
    }

    // The slot holds the winner's file only.
    let mut check = net.mount(&slot, &dir.join("check"), &[])?;
    assert!(check.dir.join(&winner_name).is_file());
    assert!(!check.dir.join(format!("writer-{loser}.txt")).exists());
    check.stop()?;
    Ok(())
}

#[test]
fn mounting_an_unknown_name_fails_clearly() -> anyhow::Result<()> {
    if !fuse_ready() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let net = Net::start(dir.path())?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let out = net.invariant(&["mount", "no-such-tree", path_str(&mnt)?])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("names") || stderr.contains("no-such-tree"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn every_kind_of_change_in_a_writable_mount_reaches_the_slot() -> anyhow::Result<()> {
    if !fuse_ready() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let net = Net::start(dir.path())?;
    let slot = net.empty_slot()?;
    let files_1 = net.files[0].url().to_string();
    let mut first = net.mount(
        &slot,
        &dir.path().join("mnt-1"),
        &["--read-write", "--files", &files_1],
    )?;
    let root = first.dir.clone();
    std::fs::create_dir(root.join("folder"))?;
    std::fs::create_dir(root.join("gone"))?;
    std::fs::write(root.join("a.txt"), b"0123456789")?;
    std::fs::rename(root.join("a.txt"), root.join("folder/b.txt"))?;
    // Write at an offset past the end: the gap reads as zeros.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("folder/b.txt"))?;
    file.write_all_at(b"xy", 12)?;
    file.sync_all()?;
    drop(file);
    std::fs::write(root.join("cut.bin"), vec![7u8; 100_000])?;
    File::options()
        .write(true)
        .open(root.join("cut.bin"))?
        .set_len(1_000)?;
    std::fs::write(root.join("tool"), b"#!/bin/sh\n")?;
    std::fs::set_permissions(root.join("tool"), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("folder/b.txt", root.join("link"))?;
    std::fs::write(root.join("old"), b"old")?;
    std::fs::write(root.join("new"), b"new")?;
    std::fs::rename(root.join("new"), root.join("old"))?;
    std::fs::write(root.join("removed"), b"x")?;
    std::fs::remove_file(root.join("removed"))?;
    std::fs::remove_dir(root.join("gone"))?;
    let refused = std::fs::remove_dir(root.join("folder")).expect_err("not empty");
    assert_eq!(refused.raw_os_error(), Some(39), "ENOTEMPTY: {refused}");
    let status = first.stop()?;
    assert!(status.success(), "mount failed: {}", first.log());

    let files_2 = net.files[1].url().to_string();
    let mut second = net.mount(&slot, &dir.path().join("mnt-2"), &["--files", &files_2])?;
    let root = second.dir.clone();
    let names: Vec<String> = {
        let mut names: Vec<String> = std::fs::read_dir(&root)?
            .map(|e| Ok(e?.file_name().to_string_lossy().to_string()))
            .collect::<anyhow::Result<_>>()?;
        names.sort();
        names
    };
    assert_eq!(names, ["cut.bin", "folder", "link", "old", "tool"]);
    assert_eq!(
        std::fs::read(root.join("folder/b.txt"))?,
        b"0123456789\0\0xy"
    );
    assert_eq!(std::fs::read(root.join("cut.bin"))?, vec![7u8; 1_000]);
    assert_eq!(std::fs::read(root.join("old"))?, b"new");
    assert_eq!(
        std::fs::read_link(root.join("link"))?,
        Path::new("folder/b.txt")
    );
    assert_eq!(std::fs::read(root.join("link"))?, b"0123456789\0\0xy");
    let mode = std::fs::metadata(root.join("tool"))?.permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "executable: {mode:o}");
    let mode = std::fs::metadata(root.join("old"))?.permissions().mode();
    assert_eq!(mode & 0o111, 0, "not executable: {mode:o}");
    let status = second.stop()?;
    assert!(status.success(), "mount failed: {}", second.log());
    Ok(())
}

#[test]
fn under_token_checks_the_command_moves_signed_and_unsigned_slots() -> anyhow::Result<()> {
    if !fuse_ready() {
        return Ok(());
    }
    // `invariant up` checks tokens: the files server may not move the operator's
    // slots, so the command moves them itself (with the ed25519 key of a signed slot).
    let dir = tempfile::tempdir()?;
    let mut net = Up::start(dir.path(), UpMode::default())?;
    net.wait_registered(3, &["files", "slots"])?;
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let upload = net.invariant(&["upload", path_str(&empty)?])?;
    ensure!(upload.status.success(), "upload failed");
    let link: serde_json::Value = serde_json::from_str(
        String::from_utf8(upload.stdout)?
            .lines()
            .last()
            .context("no link")?,
    )?;
    let address = link["address"].as_str().context("no address")?;
    for kind in [&["--unsigned"][..], &[][..]] {
        let mut args = vec!["slot", "create", address];
        args.extend_from_slice(kind);
        let created = net.invariant(&args)?;
        ensure!(created.status.success(), "slot create {kind:?} failed");
        let slot = String::from_utf8(created.stdout)?.trim().to_string();

        let mnt = dir.path().join(format!("mnt-{}", kind.len()));
        let mut mounted = spawn_mount(net.cli()?, &slot, &mnt, &["--read-write"])?;
        let mut file = File::create(mounted.dir.join("kept.txt"))?;
        file.write_all(b"kept\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::create_dir(mounted.dir.join("folder"))?;
        let status = mounted.stop()?;
        assert!(status.success(), "mount {kind:?} failed: {}", mounted.log());

        let check = dir.path().join(format!("check-{}", kind.len()));
        let mut again = spawn_mount(net.cli()?, &slot, &check, &[])?;
        assert_eq!(std::fs::read(again.dir.join("kept.txt"))?, b"kept\n");
        assert!(again.dir.join("folder").is_dir(), "the unmount synced");
        again.stop()?;
    }
    net.stop()?;
    Ok(())
}
