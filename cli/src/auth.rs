//! `invariant auth`: the network's root key and its capability tokens.
//!
//! - `init` writes the root key pair: `root.key` (the private key, mode 0600, created
//!   with that mode so it is never readable by others, and never replaced without
//!   `--force`) and `root.pub` (what servers take with `--auth-root-key`). Default
//!   folder: the config dir.
//! - `issue` signs a token with the root key (`--root-key`, default
//!   `<config dir>/root.key`).
//! - `attenuate` narrows a token offline; `inspect` explains one. Both take the root
//!   public key from `--root-pub` (default `<config dir>/root.pub`); `inspect` works
//!   without it but then says the signatures were not checked.
//!
//! The token format is [`invariant_spec::auth`]'s.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Subcommand;
use invariant_spec::auth::{
    Grant, RootKey, RootPublicKey, VerifiedToken, attenuate, parse_duration, parse_rights,
};

/// File name of the private root key.
pub const ROOT_KEY_FILE: &str = "root.key";
/// File name of the public root key.
pub const ROOT_PUB_FILE: &str = "root.pub";

/// `invariant auth ...`.
#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Create the network's root key pair: `root.key` (private, 0600) and `root.pub`
    /// (give it to every server with `--auth-root-key`).
    Init {
        /// Folder for the two files (default: the config dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing root key (every token it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a token signed by the root key; prints it.
    Issue {
        /// Who holds it (recorded as the owner of what it creates).
        #[arg(long)]
        subject: String,
        /// Rights, comma-separated: `storage:write,slots:*,*:read`, or `*` (operator).
        #[arg(long)]
        allow: String,
        /// Lifetime (`90s`, `30m`, `12h`, `7d`, `1y`), or `never`.
        #[arg(long)]
        expires: String,
        /// Bytes the subject may add to one storage server (`500M`, `10G`: binary
        /// units K, M, G, T).
        #[arg(long)]
        quota: Option<String>,
        /// The private root key file (default `<config dir>/root.key`).
        #[arg(long)]
        root_key: Option<PathBuf>,
    },
    /// Narrow a token (no key needed): keep only the rights in `--allow` and/or expire
    /// earlier. Prints the new token.
    Attenuate {
        /// The token, or `-` to read it from stdin.
        token: String,
        /// Rights to keep, comma-separated.
        #[arg(long, required_unless_present = "expires")]
        allow: Option<String>,
        /// Expire after this long at the latest (`1h`, `7d`).
        #[arg(long)]
        expires: Option<String>,
        /// The root public key file (default `<config dir>/root.pub`).
        #[arg(long)]
        root_pub: Option<PathBuf>,
    },
    /// Explain a token: whether it verifies, its subject, rights, quota, expiry and
    /// every block.
    Inspect {
        /// The token, or `-` to read it from stdin.
        token: String,
        /// The root public key file (default `<config dir>/root.pub` if present).
        #[arg(long)]
        root_pub: Option<PathBuf>,
    },
}

/// Runs an `auth` subcommand.
pub fn run(command: AuthCommand, config_dir: &Path) -> anyhow::Result<()> {
    match command {
        AuthCommand::Init { dir, force } => {
            let dir = dir.unwrap_or_else(|| config_dir.to_path_buf());
            let (key, public) = init(&dir, force)?;
            let key = std::path::absolute(&key).unwrap_or(key);
            let public = std::path::absolute(&public).unwrap_or(public);
            println!("root private key: {} (keep it secret)", key.display());
            println!("root public key:  {}", public.display());
            println!("start every server with:");
            println!("  --auth-root-key {}", public.display());
        }
        AuthCommand::Issue {
            subject,
            allow,
            expires,
            quota,
            root_key,
        } => {
            let path = root_key.unwrap_or_else(|| config_dir.join(ROOT_KEY_FILE));
            let root = read_root_key(&path)?;
            let expires = match expires.trim() {
                "never" => None,
                text => Some(SystemTime::now() + parse_duration(text).map_err(anyhow::Error::msg)?),
            };
            let grant = Grant {
                subject,
                rights: parse_rights(&allow)?,
                expires,
                quota: quota.as_deref().map(parse_size).transpose()?,
            };
            if grant.rights.is_empty() {
                bail!("--allow names no right");
            }
            println!("{}", root.issue(&grant)?);
        }
        AuthCommand::Attenuate {
            token,
            allow,
            expires,
            root_pub,
        } => {
            let token = read_token_arg(&token)?;
            let path = root_pub.unwrap_or_else(|| config_dir.join(ROOT_PUB_FILE));
            let root = read_root_pub(&path).with_context(
                || "attenuating needs the network's root public key (--root-pub FILE)",
            )?;
            let rights = allow.as_deref().map(parse_rights).transpose()?;
            let expires = expires
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .map(|d| SystemTime::now() + d);
            println!("{}", attenuate(&token, root, rights.as_deref(), expires)?);
        }
        AuthCommand::Inspect { token, root_pub } => {
            let token = read_token_arg(&token)?;
            let root = match root_pub {
                Some(path) => Some(read_root_pub(&path)?),
                None => {
                    let default = config_dir.join(ROOT_PUB_FILE);
                    if default.is_file() {
                        Some(read_root_pub(&default)?)
                    } else {
                        None
                    }
                }
            };
            let report = inspect(&token, root, SystemTime::now())?;
            print!("{}", report.text);
            if !report.verified && root.is_some() {
                bail!("the token does not verify against this root key");
            }
        }
    }
    Ok(())
}

/// Creates `dir/root.key` (0600) and `dir/root.pub`; an existing key is kept unless
/// `force`. Returns both paths.
pub fn init(dir: &Path, force: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join(ROOT_KEY_FILE);
    let pub_path = dir.join(ROOT_PUB_FILE);
    if key_path.exists() && !force {
        bail!(
            "{} already exists: pass --force to replace it (every token it issued then stops working)",
            key_path.display()
        );
    }
    let root = RootKey::generate();
    write_private(&key_path, &format!("{}\n", root.private_text()), force)?;
    write_public(&pub_path, &format!("{}\n", root.public_text()))?;
    Ok((key_path, pub_path))
}

/// Reads a private root key file.
pub fn read_root_key(path: &Path) -> anyhow::Result<RootKey> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "reading the root key {} (create one with `invariant auth init`)",
            path.display()
        )
    })?;
    RootKey::from_private_text(&text).with_context(|| format!("root key {}", path.display()))
}

/// Reads a root public key file.
pub fn read_root_pub(path: &Path) -> anyhow::Result<RootPublicKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the root public key {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("root public key {}", path.display()))
}

/// Writes `text` to a file only its owner can read (0600 from creation on). An
/// existing file is refused unless `replace`, in which case the new content is
/// written beside it and renamed over it.
pub fn write_private(path: &Path, text: &str, replace: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let target = if replace {
        let name = path
            .file_name()
            .with_context(|| format!("{} has no file name", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", rand::random::<u32>()));
        path.with_file_name(tmp_name)
    } else {
        path.to_path_buf()
    };
    let written = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if replace {
            fs::rename(&target, path)?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        if replace {
            let _ = fs::remove_file(&target);
        }
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Writes a public file (mode 0644), replacing any previous one.
pub fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// The token text from an argument: itself, or stdin for `-`.
fn read_token_arg(arg: &str) -> anyhow::Result<String> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the token from stdin")?;
        text
    } else {
        arg.to_string()
    };
    let token = text.trim();
    if token.is_empty() {
        bail!("no token given");
    }
    Ok(token.to_string())
}

/// A byte count: digits, optionally followed by `K`, `M`, `G` or `T` (binary units,
/// optionally spelled `KiB` ...) or `B`.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("invalid size {text:?}: expected e.g. 1048576, 500M, 10G"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => bail!("invalid size unit {unit:?} in {text:?}: use K, M, G or T (binary units)"),
    };
    n.checked_mul(1u64 << shift)
        .with_context(|| format!("size {text:?} is too large"))
}

/// What `inspect` found.
#[derive(Debug)]
pub struct Inspection {
    /// The signatures chain to the given root.
    pub verified: bool,
    /// The explanation, line by line.
    pub text: String,
}

/// Explains `token`: checked against `root` when given, else only decoded.
pub fn inspect(
    token: &str,
    root: Option<RootPublicKey>,
    now: SystemTime,
) -> anyhow::Result<Inspection> {
    let mut out = String::new();
    let mut verified = false;
    let blocks = match root {
        Some(root) => match VerifiedToken::verify(token, root) {
            Ok(token) => {
                verified = true;
                out.push_str(&format!("signature: valid (root {root})\n"));
                let facts = token.facts()?;
                out.push_str(&format!("subject:   {}\n", facts.subject));
                let rights: Vec<String> = facts.rights.iter().map(ToString::to_string).collect();
                out.push_str(&format!("rights:    {}\n", rights.join(", ")));
                match facts.quota {
                    Some(q) => out.push_str(&format!("quota:     {} bytes\n", q)),
                    None => out.push_str("quota:     none\n"),
                }
                token.describe()
            }
            Err(e) => {
                out.push_str(&format!("signature: NOT valid for root {root}: {e}\n"));
                unverified_blocks(token)?
            }
        },
        None => {
            out.push_str(
                "signature: NOT checked (no root public key: pass --root-pub FILE); \
                 nothing below is proven\n",
            );
            unverified_blocks(token)?
        }
    };
    out.push_str(&format!("expires:   {}\n", describe_expiry(&blocks, now)));
    if blocks.len() > 1 {
        out.push_str(&format!(
            "narrowed:  {} attenuation block(s) (their checks apply too)\n",
            blocks.len() - 1
        ));
    }
    for (i, block) in blocks.iter().enumerate() {
        let label = if i == 0 { " (authority)" } else { "" };
        out.push_str(&format!("block {i}{label}:\n"));
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("  {}\n", line.trim()));
        }
    }
    Ok(Inspection {
        verified,
        text: out,
    })
}

/// The datalog of each block, without checking any signature.
fn unverified_blocks(token: &str) -> anyhow::Result<Vec<String>> {
    let biscuit = biscuit_auth::UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|e| anyhow::anyhow!("not a token: {e}"))?;
    Ok((0..biscuit.block_count())
        .map(|i| {
            biscuit
                .print_block_source(i)
                .unwrap_or_else(|e| format!("<unreadable block: {e}>"))
        })
        .collect())
}

/// The earliest `time($t), $t <= <date>` check of any block.
fn describe_expiry(blocks: &[String], now: SystemTime) -> String {
    let format = time::format_description::well_known::Rfc3339;
    let mut earliest: Option<time::OffsetDateTime> = None;
    for block in blocks {
        for (_, rest) in block
            .match_indices("$t <= ")
            .map(|(i, _)| block.split_at(i + 6))
        {
            let date: String = rest
                .chars()
                .take_while(|c| !matches!(c, ',' | ';' | ' ' | ')' | '\n'))
                .collect();
            if let Ok(at) = time::OffsetDateTime::parse(&date, &format) {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
    }
    let Some(at) = earliest else {
        return "never".into();
    };
    let text = at.format(&format).unwrap_or_else(|_| at.to_string());
    let now = time::OffsetDateTime::from(now);
    if at < now {
        format!("{text} (EXPIRED {} ago)", human(now - at))
    } else {
        format!("{text} (in {})", human(at - now))
    }
}

fn human(d: time::Duration) -> String {
    let secs = Duration::try_from(d).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use invariant_spec::auth::Right;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, public) = init(dir.path(), false).expect("init");
        assert_eq!(mode(&key), 0o600);
        let root = read_root_key(&key).expect("read key");
        assert_eq!(read_root_pub(&public).expect("read pub"), root.public());
        let before = fs::read(&key).expect("read");
        let err = init(dir.path(), false).expect_err("second init");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(&key).expect("read"), before, "key kept");
        init(dir.path(), true).expect("forced");
        assert_ne!(fs::read(&key).expect("read"), before, "key replaced");
        assert_eq!(mode(&key), 0o600);
        let replaced = read_root_key(&key).expect("read key");
        assert_eq!(read_root_pub(&public).expect("pub"), replaced.public());
        // no temporary file is left behind
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 2);
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("1048576").expect("plain"), 1 << 20);
        assert_eq!(parse_size("2K").expect("k"), 2048);
        assert_eq!(parse_size("500M").expect("m"), 500 << 20);
        assert_eq!(parse_size("10g").expect("g"), 10 << 30);
        assert_eq!(parse_size("1TiB").expect("t"), 1 << 40);
        for bad in ["", "M", "1X", "1.5G", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inspect_explains_a_verified_token() {
        let root = RootKey::generate();
        let now = SystemTime::now();
        let token = root
            .issue(&Grant {
                subject: "alice".into(),
                rights: parse_rights("storage:write,slots:*").expect("rights"),
                expires: Some(now + Duration::from_secs(7 * 86_400)),
                quota: Some(1 << 30),
            })
            .expect("issue");
        let report = inspect(&token, Some(root.public()), now).expect("inspect");
        assert!(report.verified);
        let text = report.text;
        assert!(text.contains("signature: valid"), "{text}");
        assert!(text.contains("subject:   alice"), "{text}");
        assert!(text.contains("rights:    slots:*, storage:write"), "{text}");
        assert!(text.contains("quota:     1073741824 bytes"), "{text}");
        assert!(text.contains("(in 6d 23h)"), "{text}");
        assert!(text.contains("block 0 (authority):"), "{text}");
        assert!(text.contains("right(\"storage:write\")"), "{text}");

        let narrowed = attenuate(
            &token,
            root.public(),
            Some(&[Right::new("storage", "write").expect("right")]),
            Some(now + Duration::from_secs(3600)),
        )
        .expect("attenuate");
        let text = inspect(&narrowed, Some(root.public()), now)
            .expect("inspect")
            .text;
        assert!(text.contains("narrowed:  1 attenuation block"), "{text}");
        assert!(text.contains("block 1:"), "{text}");
        assert!(
            text.contains("(in 59m") || text.contains("(in 1h"),
            "{text}"
        );

        let later = now + Duration::from_secs(8 * 86_400);
        let text = inspect(&token, Some(root.public()), later)
            .expect("inspect")
            .text;
        assert!(text.contains("EXPIRED"), "{text}");
    }

    #[test]
    fn inspect_without_or_with_another_root_says_so() {
        let root = RootKey::generate();
        let token = root
            .issue(&Grant {
                subject: "bob".into(),
                rights: vec![Right::all()],
                expires: None,
                quota: None,
            })
            .expect("issue");
        let report = inspect(&token, None, SystemTime::now()).expect("inspect");
        assert!(!report.verified);
        assert!(report.text.contains("NOT checked"), "{}", report.text);
        assert!(report.text.contains("subject(\"bob\")"), "{}", report.text);
        assert!(report.text.contains("expires:   never"), "{}", report.text);

        let other = RootKey::generate();
        let report = inspect(&token, Some(other.public()), SystemTime::now()).expect("inspect");
        assert!(!report.verified);
        assert!(report.text.contains("NOT valid"), "{}", report.text);
        assert!(inspect("garbage", None, SystemTime::now()).is_err());
    }
}
