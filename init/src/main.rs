//! auraed: PID 1 / daemon, certificate tooling, and (as `aer`) the client.

use auraed::{cli, cpio, daemon, pki};
use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "auraed",
    version,
    about = "Aurae node runtime (PID 1 or daemon); `aer` is the same binary"
)]
struct Auraed {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    daemon: daemon::DaemonArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the API as a daemon (the default).
    Daemon(daemon::DaemonArgs),
    /// Mint certificates.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Pack a reproducible newc cpio archive from a spec (see cpio.rs).
    Mkcpio {
        spec: PathBuf,
        out: PathBuf,
        /// Directory `file` sources are relative to.
        #[arg(long, default_value = ".")]
        base: PathBuf,
    },
    /// Runtime figures for `make bench`, run inside the appliance (see bench.rs).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchRuntime(auraed::bench::BenchArgs),
    /// `make bench`'s soak, run inside the appliance (see bench/soak.rs).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchSoak(auraed::bench::soak::SoakArgs),
    /// `make bench`'s CRI figures, run inside the appliance (see bench/cri.rs).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchCri(auraed::bench::cri::CriArgs),
    /// `make soak`: load, an hour of churn and the pass line, inside the appliance (see
    /// bench/churn/).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchChurn(auraed::bench::churn::ChurnArgs),
    /// The client, as `auraed aer ...` (same as running the binary as `aer`).
    #[command(disable_help_flag = true)]
    Aer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCmd {
    /// Create DIR with a CA, a node certificate (server.crt) and a client certificate (client.crt).
    Init {
        dir: PathBuf,
        #[arg(long, default_value = pki::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// The node's name (its SPIFFE ID is spiffe://DOMAIN/node/NAME).
        #[arg(long, default_value = "aurae")]
        node: String,
        /// Extra DNS names for the node certificate.
        #[arg(long)]
        dns: Vec<String>,
        /// Extra IP addresses for the node certificate.
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// The client's name (spiffe://DOMAIN/client/NAME).
        #[arg(long, default_value = "admin")]
        client: String,
    },
    /// Add the node's spawn CA (DIR/spawn-ca.{crt,key}) to a PKI made before Spawn existed.
    SpawnCa {
        dir: PathBuf,
        #[arg(long, default_value = pki::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value = "aurae")]
        node: String,
    },
    /// Add a client certificate DIR/NAME.{crt,key} signed by DIR/ca.key, and give its ID
    /// (spiffe://DOMAIN/client/NAME) ROLE in DIR/policy.toml.
    Client {
        dir: PathBuf,
        name: String,
        /// reader (health, info, list, status, logs, wait), operator (+ run, stop, free,
        /// freeze, thaw) or admin (everything, power included).
        #[arg(long, default_value = "reader")]
        role: String,
        #[arg(long, default_value = pki::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Sign with DIR/ISSUER.{crt,key} instead of the root CA (DIR/ca): the certificate
        /// then carries the issuer's chain. Nodes accept a client only from the root.
        #[arg(long, default_value = "ca")]
        issuer: String,
    },
    /// Issue node NAME an identity of its own in DIR/nodes/NAME: its key and server
    /// certificate (spiffe://DOMAIN/node/NAME), its own spawn CA, the root CA certificate
    /// and DIR/policy.toml. `rootfs/pack.sh` packs it as the layer pki-NAME.
    Node {
        dir: PathBuf,
        name: String,
        #[arg(long, default_value = pki::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Extra DNS names for the node certificate (NAME, auraed and localhost are always in).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses the node is reached at (127.0.0.1 is always in).
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
    /// Give a SPIFFE ID (or, with --prefix, every ID under it) a role in DIR/policy.toml,
    /// creating the file if needed. Replaces an entry for the same ID or prefix.
    Grant {
        dir: PathBuf,
        /// spiffe://DOMAIN/PATH
        id: String,
        /// reader, operator or admin.
        role: String,
        /// Match ID and every ID below it (whole path segments), not ID alone.
        #[arg(long)]
        prefix: bool,
    },
}

fn main() -> ExitCode {
    // A cell's holder is PID 1 of the cell's pid namespace, so this check comes first.
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.first().is_some_and(|a| a == auraed::roles::CELL_INIT) {
        auraed::roles::cell_init(&args);
    }
    if args.first().is_some_and(|a| {
        std::path::Path::new(a)
            .file_name()
            .is_some_and(|n| n == auraed::roles::VMM)
    }) {
        auraed::roles::vmm(&args);
    }
    if std::process::id() == 1 {
        daemon::run_pid1();
    }
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "aer") {
        return cli::main(std::env::args_os());
    }
    let a = match Auraed::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match a.command {
        None => daemon::run_daemon(a.daemon),
        Some(Cmd::Daemon(d)) => daemon::run_daemon(d),
        Some(Cmd::Aer { args }) => cli::main(std::iter::once("aer".to_owned()).chain(args)),
        Some(Cmd::Pki(p)) => report(run_pki(p)),
        Some(Cmd::Mkcpio { spec, out, base }) => report(mkcpio(&spec, &out, &base)),
        #[cfg(feature = "bench")]
        Some(Cmd::BenchRuntime(b)) => auraed::bench::main(b),
        #[cfg(feature = "bench")]
        Some(Cmd::BenchSoak(b)) => auraed::bench::soak::main(b),
        #[cfg(feature = "bench")]
        Some(Cmd::BenchCri(b)) => auraed::bench::cri::main(b),
        #[cfg(feature = "bench")]
        Some(Cmd::BenchChurn(b)) => auraed::bench::churn::main(b),
    }
}

/// Why an `auraed pki ...` or `auraed mkcpio` command failed; says which file.
#[derive(Debug, thiserror::Error)]
enum ToolError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Policy(#[from] pki::policy::PolicyError),
    #[error("{} already holds a CA; refusing to overwrite it", .0.display())]
    CaExists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Spec { path: PathBuf, message: String },
}

fn report(r: Result<(), ToolError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auraed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The node's intermediate CA for Spawn: it signs the SVIDs of the instances the node
/// spawns (and their own intermediates), so the root key never leaves the build host.
fn write_spawn_ca(dir: &std::path::Path, ca: &pki::Minted, trust_domain: &str, node: &str) -> Result<(), ToolError> {
    let m = pki::mint_intermediate(
        ca,
        &pki::spiffe_id(trust_domain, &format!("node/{node}/spawn-ca")),
        &format!("Aurae spawn CA ({node})"),
        // A year at most: a node's spawn CA is re-issued, never kept for a decade.
        std::time::Duration::from_secs(365 * 86400),
    )?;
    Ok(pki::write_pair(dir, "spawn-ca", &m)?)
}

fn run_pki(p: PkiCmd) -> Result<(), ToolError> {
    match p {
        PkiCmd::SpawnCa {
            dir,
            trust_domain,
            node,
        } => {
            let ca = pki::read_pair(&dir, "ca")?;
            write_spawn_ca(&dir, &ca, &trust_domain, &node)?;
            println!("wrote {}/spawn-ca.{{crt,key}}", dir.display());
            Ok(())
        }
        PkiCmd::Init {
            dir,
            trust_domain,
            node,
            mut dns,
            mut ip,
            client,
        } => {
            if dir.join("ca.key").exists() {
                return Err(ToolError::CaExists(dir));
            }
            let ca = pki::mint_ca(&trust_domain)?;
            dns.extend(["auraed".into(), "localhost".into(), node.clone()]);
            ip.extend([IpAddr::from([127, 0, 0, 1]), IpAddr::from([10, 0, 2, 15])]);
            let server = pki::mint_leaf(
                &ca,
                &pki::spiffe_id(&trust_domain, &format!("node/{node}")),
                &node,
                pki::LeafKind::Server { dns: &dns, ips: &ip },
                3650,
            )?;
            let cl = pki::mint_leaf(
                &ca,
                &pki::spiffe_id(&trust_domain, &format!("client/{client}")),
                &client,
                pki::LeafKind::Client,
                365,
            )?;
            pki::write_pair(&dir, "ca", &ca)?;
            write_spawn_ca(&dir, &ca, &trust_domain, &node)?;
            pki::write_pair(&dir, "server", &server)?;
            pki::write_pair(&dir, "client", &cl)?;
            let client_id = pki::spiffe_id(&trust_domain, &format!("client/{client}"));
            grant(&dir, &client_id, pki::policy::Role::Admin, false)?;
            println!(
                "wrote {0}/ca.{{crt,key}}, {0}/server.{{crt,key}} (node {node}), {0}/client.{{crt,key}} ({client}, admin in {0}/policy.toml)",
                dir.display()
            );
            Ok(())
        }
        PkiCmd::Node {
            dir,
            name,
            trust_domain,
            mut dns,
            mut ip,
        } => {
            let ca = pki::read_pair(&dir, "ca")?;
            let policy = dir.join(pki::policy::FILE_NAME);
            let policy_text = std::fs::read_to_string(&policy).map_err(|source| ToolError::Io {
                path: policy.clone(),
                source,
            })?;
            let out = dir.join("nodes").join(&name);
            dns.extend([name.clone(), "auraed".into(), "localhost".into()]);
            ip.push(IpAddr::from([127, 0, 0, 1]));
            let server = pki::mint_leaf(
                &ca,
                &pki::spiffe_id(&trust_domain, &format!("node/{name}")),
                &name,
                pki::LeafKind::Server { dns: &dns, ips: &ip },
                365,
            )?;
            pki::write_pair(&out, "server", &server)?;
            write_spawn_ca(&out, &ca, &trust_domain, &name)?;
            for (file, data) in [
                ("ca.crt", ca.cert_pem.as_str()),
                (pki::policy::FILE_NAME, policy_text.as_str()),
            ] {
                let path = out.join(file);
                pki::write_with_mode(&path, data.as_bytes(), 0o644).map_err(|source| ToolError::Io { path, source })?;
            }
            println!(
                "wrote {}/{{server,spawn-ca}}.{{crt,key}}, ca.crt, policy.toml (node {name})",
                out.display()
            );
            Ok(())
        }
        PkiCmd::Grant { dir, id, role, prefix } => {
            let role = pki::policy::Role::parse(&role)?;
            grant(&dir, &id, role, prefix)?;
            let what = if prefix { "every ID under " } else { "" };
            println!("{}/policy.toml: {what}{id} is {role}{RESTART}", dir.display());
            Ok(())
        }
        PkiCmd::Client {
            dir,
            name,
            role,
            trust_domain,
            days,
            issuer,
        } => {
            let role = pki::policy::Role::parse(&role)?;
            let ca = pki::read_pair(&dir, &issuer)?;
            let mut cl = pki::mint_leaf(
                &ca,
                &pki::spiffe_id(&trust_domain, &format!("client/{name}")),
                &name,
                pki::LeafKind::Client,
                days,
            )?;
            if issuer != "ca" {
                cl.cert_pem.push_str(&ca.cert_pem);
            }
            pki::write_pair(&dir, &name, &cl)?;
            let id = pki::spiffe_id(&trust_domain, &format!("client/{name}"));
            grant(&dir, &id, role, false)?;
            println!(
                "wrote {0}/{name}.{{crt,key}}; {id} is {role} in {0}/policy.toml{RESTART}",
                dir.display()
            );
            Ok(())
        }
    }
}

/// What a policy change needs before a node obeys it.
const RESTART: &str = " (a node reads its policy at start: repack its pki layer, e.g. `make image`, and restart it)";

/// Records `id` (or every ID under it) as `role` in `<dir>/policy.toml`, creating it.
fn grant(dir: &std::path::Path, id: &str, role: pki::policy::Role, prefix: bool) -> Result<(), ToolError> {
    use pki::policy::{Policy, FILE_NAME};
    let path = dir.join(FILE_NAME);
    let mut policy = match std::fs::read_to_string(&path) {
        Ok(text) => Policy::parse(&text, &path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Policy::default(),
        Err(source) => return Err(ToolError::Io { path, source }),
    };
    if prefix {
        policy.grant_prefix(id, role);
    } else {
        policy.grant(id, role);
    }
    // Parse what is about to be written, so a bad ID never lands in the file.
    Policy::parse(&policy.render(), &path.display().to_string())?;
    let tmp = path.with_extension("toml.tmp");
    pki::write_with_mode(&tmp, policy.render().as_bytes(), 0o644).map_err(|source| ToolError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| ToolError::Io { path, source })
}

fn mkcpio(spec: &std::path::Path, out: &std::path::Path, base: &std::path::Path) -> Result<(), ToolError> {
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| ToolError::Io { path, source }
    };
    let text = std::fs::read_to_string(spec).map_err(io(spec))?;
    let entries = cpio::parse_spec(&text, base).map_err(|e| ToolError::Spec {
        path: spec.to_owned(),
        message: e.to_string(),
    })?;
    let mut buf = Vec::new();
    cpio::write_archive(&entries, &mut buf).map_err(io(out))?;
    // An archive that carries a file only its owner may read (a private key) is itself
    // readable by root only, on the build host too; the rest are world-readable.
    let secret = entries
        .iter()
        .any(|e| matches!(e, cpio::Entry::File { mode, .. } if mode & 0o077 == 0));
    let mode = if secret { 0o600 } else { 0o644 };
    pki::write_with_mode(out, &buf, mode).map_err(io(out))
}
