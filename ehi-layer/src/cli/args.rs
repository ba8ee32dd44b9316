//! The command line of `ehi` (clap): the global options and every subcommand with its
//! arguments and help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ehi",
    version,
    about = "Your health records, encrypted, in the invariant network"
)]
pub(crate) struct Cli {
    /// The keystore file.
    #[arg(long, global = true, env = "EHI_KEYSTORE")]
    pub(crate) keystore: Option<PathBuf>,
    /// Broker of the invariant network.
    #[arg(
        long,
        global = true,
        env = "INVARIANT_BROKER",
        default_value = "http://127.0.0.1:3000"
    )]
    pub(crate) broker: String,
    /// Print a compact table instead of FHIR JSON.
    #[arg(long, global = true)]
    pub(crate) table: bool,
    /// Capability token for the invariant network (not an `ehi serve` token). Without
    /// it or `--token-file`: the operator token `invariant up` left for this broker,
    /// else `<invariant config dir>/token`.
    #[arg(
        long = "token",
        id = "network_token",
        global = true,
        env = "INVARIANT_TOKEN",
        hide_env_values = true
    )]
    pub(crate) network_token: Option<String>,
    /// File holding the capability token for the invariant network.
    #[arg(long, global = true, env = "INVARIANT_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust besides the system roots.
    #[arg(long, global = true, env = "INVARIANT_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Accept any server certificate. Unsafe: anyone on the path can read and change
    /// the traffic. Prints a warning every run.
    #[arg(long, global = true)]
    pub(crate) insecure_skip_verify: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AppCommand {
    /// Create an app keystore (`--app-keystore`, default `<config>/ehi/apps/<name>.json`)
    /// and print the app's public card (JSON) on stdout.
    New {
        /// The app's name.
        name: String,
        /// Where to write the app keystore.
        #[arg(long)]
        app_keystore: Option<PathBuf>,
    },
    /// Print the card of an existing app keystore.
    Card {
        /// The app keystore file.
        app_keystore: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check every signature and the hash chain end to end; names the first bad entry.
    Verify,
}

#[derive(Subcommand, Debug)]
pub(crate) enum EmergencyCommand {
    /// Set the break-glass policy: the holder (an app or organisation, by its card) may
    /// read the emergency scopes without you. Prints the ticket to hand to the holder.
    Set {
        /// The holder's card (JSON file from `ehi app new`).
        card: PathBuf,
        /// Scopes (default allergies,medications,clinical,immunizations; Condition
        /// lives in clinical, so the whole clinical scope is included).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Show the policy and every logged use.
    Show,
    /// Acknowledge the pending emergency accesses (copies them into the audit log).
    Ack,
    /// Remove the policy (revokes the holder's grant, rotating those scopes' keys).
    Clear,
    /// For the holder: use the emergency access (logged, flagged ETREAT/BTG) and print
    /// what it gives as a FHIR Bundle. Needs the holder's app keystore, not the patient.
    Open {
        /// The emergency ticket (JSON from `ehi emergency set`).
        ticket: PathBuf,
        /// The holder's app keystore.
        #[arg(long)]
        app_keystore: PathBuf,
        /// Why (recorded in the log the patient sees).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeystoreCommand {
    /// Write a recovery kit: a second copy of the keystore's keys sealed under a
    /// recovery code that is printed once (on stdout). Keep the kit and the code apart;
    /// together they restore the keystore with `ehi keystore recover`.
    Backup {
        /// Where to write the kit (must not exist).
        kit: PathBuf,
    },
    /// On a new device (or after losing the keystore or its passphrase): restore the
    /// keystore from a recovery kit. Asks for the recovery code (or reads
    /// `EHI_RECOVERY_CODE`) and for a new passphrase (or `EHI_PASSPHRASE`).
    Recover {
        /// The kit written by `ehi keystore backup`.
        kit: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum DeviceCommand {
    /// Print a one-time invite code, then wait (until it expires) for the new device.
    Invite {
        /// Lifetime of the code (`90s`, `10m`; at most 1h).
        #[arg(long, default_value = "10m")]
        expires: String,
    },
    /// On the new device: join the vault with an invite code; writes this device's
    /// keystore (`--keystore`, default location) with a new passphrase.
    Join {
        /// The code printed by `ehi device invite`.
        code: String,
    },
    /// The vault's devices.
    List,
    /// Remove a device: rotates the root key and every scope key; the removed device
    /// cannot open anything written afterwards.
    Remove {
        /// The device id (from `ehi device list`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RequestsCommand {
    /// Print the inbox card (JSON) to give to apps, creating the inbox on first use.
    Card {
        /// Also register this name for the card on the names server (apps then find
        /// the inbox by name; the card becomes public under it).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create a keystore and an empty vault. Losing the keystore or its passphrase
    /// loses the vault: write a recovery kit (`--recovery-kit`, or later with `ehi
    /// keystore backup`).
    Init {
        /// Also write a recovery kit to this file (the code to open it is printed once).
        #[arg(long)]
        recovery_kit: Option<PathBuf>,
    },
    /// The keystore's recovery kit: `ehi keystore backup|recover`.
    Keystore {
        #[command(subcommand)]
        command: KeystoreCommand,
    },
    /// Import FHIR Bundles (transaction, batch, collection, searchset, document,
    /// history), resources, or Bulk Data NDJSON files, atomically.
    ///
    /// Every resource is checked against the FHIR R4 structure (known type and
    /// elements, datatypes, required elements); an invalid one refuses the whole import.
    /// A vault keeps one patient's records: records of another Patient are refused.
    Import {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Store resources that break the R4 structure rules, with a warning for each.
        #[arg(long)]
        lenient: bool,
        /// Accept records of other Patients (a guardian's or household vault); the
        /// decision is recorded in the audit log.
        #[arg(long)]
        allow_other_patients: bool,
    },
    /// FHIR search: `ehi search Observation code=http://loinc.org|8302-2 date=ge2020`.
    ///
    /// The same search as `ehi serve` answers (`_summary`, `_elements`, `_include`,
    /// `_revinclude`, `_sort`, `_total`, ...); every match is printed unless `_count` asks
    /// for one page. Unknown parameters are an error unless `--lenient`.
    Search {
        /// The resource type.
        resource_type: String,
        /// Search parameters (`name=value`, joined with `&`).
        params: Vec<String>,
        /// Ignore unknown search parameters (FHIR's `handling=lenient`); the Bundle
        /// reports them in an OperationOutcome entry.
        #[arg(long)]
        lenient: bool,
    },
    /// Show a resource: `Type/id` or `Type/id/_history/n`.
    Show {
        /// The reference.
        reference: String,
    },
    /// Every version of a resource, newest first.
    History {
        /// `Type/id`.
        reference: String,
    },
    /// Everything in the compartment of a Patient.
    Patient {
        /// The Patient id.
        id: String,
    },
    /// The International Patient Summary: a FHIR document Bundle (IPS sections, each
    /// with a narrative) signed with the patient's key (a detached Ed25519 JWS over the
    /// RFC 8785 canonical Bundle), printed or written to `--out`.
    ///
    /// With `--verify FILE`, checks a summary's signature against this vault's key
    /// instead.
    Summary {
        /// The Patient id (default: the vault's only Patient).
        #[arg(long)]
        patient: Option<String>,
        /// Write the Bundle to this file instead of stdout.
        #[arg(long, conflicts_with = "verify")]
        out: Option<PathBuf>,
        /// Verify the signature of a summary file with this vault's key.
        #[arg(long, value_name = "FILE")]
        verify: Option<PathBuf>,
    },
    /// Export everything: `<dir>/bundle.json` and `<dir>/ndjson/<Type>.ndjson`, into a
    /// new or empty directory (`--force` for any).
    Export {
        /// The directory.
        dir: PathBuf,
        /// Include every version (the Bundle becomes a history Bundle).
        #[arg(long)]
        history: bool,
        /// Write into a directory that is not empty (files of the same names are
        /// replaced).
        #[arg(long)]
        force: bool,
    },
    /// Remove the vault: tombstone its slots, unpin its blocks, destroy the keystore.
    Delete {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// The vault's counts and ids.
    Status,
    /// App identities (for app developers): `ehi app new <name>`.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Grant scopes to an app: `ehi grant card.json --scopes medications,allergies
    /// --access read --expires 30d --purpose TREAT`. Prints the ticket for the app.
    Grant {
        /// The app's card (JSON file from `ehi app new`).
        card: PathBuf,
        /// Scopes, comma-separated (demographics, clinical, medications,
        /// immunizations, allergies, documents, financial, sensitive).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// `read` or `contribute`.
        #[arg(long, default_value = "read")]
        access: String,
        /// Lifetime (`30d`, `12h`, `2w`).
        #[arg(long, default_value = "30d")]
        expires: String,
        /// HL7 v3 PurposeOfUse code (TREAT, ETREAT, HPAYMT, HOPERAT, PATRQT, ...).
        #[arg(long, default_value = "TREAT")]
        purpose: String,
    },
    /// List the grants (scopes, purpose, expiry, SMART scopes).
    Grants,
    /// The audit log as FHIR AuditEvents (`--type grant`, `--app <name>`, `--since
    /// 2026-01-01`), or `ehi audit verify` to check signatures and the hash chain.
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only entries of this type (import, grant, revoke, export, remove, read, search).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only entries mentioning this app name.
        #[arg(long)]
        app: Option<String>,
        /// Only entries recorded at or after this UTC date or instant (`2026-01-01`,
        /// `2026-01-01T08:30:00Z`).
        #[arg(long, value_parser = audit_bound)]
        since: Option<String>,
        /// Only entries recorded before this UTC date or instant.
        #[arg(long, value_parser = audit_bound)]
        until: Option<String>,
    },
    /// Revoke a grant: rotate the keys of its scopes, re-seal for the other grantees.
    Revoke {
        /// The grant id (from `ehi grants`).
        grant: String,
        /// Also re-encrypt every stored version of those scopes and unpin the old blobs.
        #[arg(long)]
        reencrypt: bool,
    },
    /// Consent requests from apps waiting for a decision (`ehi requests card` prints
    /// the inbox card apps send requests to).
    Requests {
        #[command(subcommand)]
        command: Option<RequestsCommand>,
    },
    /// Approve a consent request: grant what it asks, keep a FHIR Consent, tell the app.
    Approve {
        /// The request id (from `ehi requests`).
        id: String,
    },
    /// Deny a consent request: keep a FHIR Consent (rejected), tell the app.
    Deny {
        /// The request id (from `ehi requests`).
        id: String,
        /// A note for the app.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Contributions from apps waiting for review (nothing enters the vault before
    /// `ehi accept`).
    Inbox,
    /// Accept a contribution: import its resources with a FHIR Provenance naming the app.
    Accept {
        /// The contribution id (from `ehi inbox`).
        id: String,
    },
    /// Reject a contribution: nothing is imported.
    Reject {
        /// The contribution id (from `ehi inbox`).
        id: String,
    },
    /// Serve the vault as a FHIR R4 REST API on this device (prints
    /// `listening on http://<addr>` on stdout and the patient's token on stderr).
    Serve {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// How long the printed patient token stays valid (`12h`, `30m`, `7d`).
        #[arg(long, default_value = "12h")]
        token_expires: String,
        /// Pre-authorize an OAuth client for a grant: `<client_id>=<grant id>`
        /// (repeatable). `/authorize` approves it at once (PKCE S256 required), so treat
        /// the client id as a secret.
        #[arg(long = "client", value_name = "CLIENT_ID=GRANT")]
        clients: Vec<String>,
        /// Exit (status 0, after a line on stderr) once the vault is removed
        /// (`ehi delete` on any device); without it the server keeps answering every
        /// request with 410 Gone.
        #[arg(long)]
        exit_on_removal: bool,
    },
    /// Mint a bearer token for `ehi serve`: one bound to a grant (`ehi token <grant>`:
    /// the grant's scopes, refused once the grant is revoked or expired), the patient's
    /// own (`--patient`) or an app's with SMART v2 scopes (`--scopes
    /// "patient/Observation.rs patient/*.r"`). Prints the token on stdout and its id
    /// (`jti`) on stderr. `ehi token revoke <jti|token>` revokes one token.
    #[command(args_conflicts_with_subcommands = true)]
    Token {
        #[command(subcommand)]
        action: Option<TokenAction>,
        /// The grant id (from `ehi grants`).
        #[arg(conflicts_with_all = ["patient", "scopes"])]
        grant: Option<String>,
        /// The patient's own token (everything allowed).
        #[arg(long, conflicts_with = "scopes")]
        patient: bool,
        /// SMART scopes, space-separated (with a grant: narrow the grant's scopes).
        #[arg(long)]
        scopes: Option<String>,
        /// Lifetime (`90s`, `30m`, `1h`, `7d`).
        #[arg(long, default_value = "1h")]
        expires: String,
    },
    /// Break-glass emergency access: `ehi emergency set|show|ack|clear|open`.
    Emergency {
        #[command(subcommand)]
        command: EmergencyCommand,
    },
    /// This patient's devices: `ehi device invite|join|list|remove`.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Keep this device in sync: follow the vault slot and print each change (Ctrl-C
    /// stops).
    Watch,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenAction {
    /// Revoke one token before it expires: its id is added to the revocation file
    /// beside the keystore (`<keystore>.revoked-tokens`), which `ehi serve` watches.
    Revoke {
        /// The token's id (`jti`, printed by `ehi token`) or the token itself.
        token: String,
    },
}

/// `--since`/`--until`: a UTC date or instant, refused as a usage error otherwise.
fn audit_bound(text: &str) -> Result<String, ehi_layer::time::InvalidBound> {
    ehi_layer::time::parse_bound(text)
}
