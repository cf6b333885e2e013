//! `aer image pull|ls|status|rm`: the node's OCI images.

use super::print::{image_json, print_image};
use super::{CliError, Target};
use crate::pb;
use clap::Subcommand;
use std::io::{IsTerminal, Write};

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCmd {
    /// Pull an image into the node's store: aer image pull REGISTRY/NAME:TAG
    Pull {
        reference: String,
        /// Registry user (the node's registries file is used otherwise).
        #[arg(long)]
        username: Option<String>,
        /// Read the registry password from stdin (never from the command line).
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
    /// The node's images.
    Ls,
    /// An image's digest, size, layers and config.
    Status { reference: String },
    /// Forget an image; blobs and layers no other image uses are freed.
    Rm { reference: String },
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    // A node's answer is not trusted to be ASCII: never cut inside a character.
    hex.get(..12).unwrap_or(hex)
}

/// A registry password: the first line of stdin.
pub(crate) fn password_from_stdin() -> Result<String, CliError> {
    let mut p = String::new();
    std::io::stdin()
        .read_line(&mut p)
        .map_err(|e| CliError::Usage(format!("reading the registry password from stdin: {e}")))?;
    Ok(p.trim_end_matches(['\n', '\r']).to_owned())
}

pub(crate) async fn image(cmd: &ImageCmd, target: &Target, as_json: bool) -> Result<(), CliError> {
    match cmd {
        ImageCmd::Pull {
            reference,
            username,
            password_stdin,
        } => {
            let credentials = match (username, password_stdin) {
                (Some(u), true) => Some(pb::RegistryCredentials {
                    username: u.clone(),
                    password: password_from_stdin()?,
                }),
                (Some(_), false) => {
                    return Err(CliError::Usage(
                        "--username needs --password-stdin (a password on the command line would show in ps)".into(),
                    ))
                }
                (None, _) => None,
            };
            pull(target, reference, credentials, as_json).await
        }
        ImageCmd::Ls => {
            let mut c = pb::images_client::ImagesClient::new(target.connect().await?);
            let l = c
                .list(pb::ListImagesRequest {})
                .await
                .map_err(CliError::Remote)?
                .into_inner();
            if as_json {
                let v: Vec<_> = l.images.iter().map(image_json).collect();
                println!("{}", serde_json::Value::Array(v));
                return Ok(());
            }
            if let Some(s) = &l.store {
                println!("store {}: {} of {} used", s.path, mib(s.used_bytes), mib(s.limit_bytes));
            }
            println!("{:<50} {:<14} {:>10} {:>6}", "REFERENCE", "DIGEST", "SIZE", "LAYERS");
            for i in &l.images {
                println!(
                    "{:<50} {:<14} {:>10} {:>6}",
                    i.reference,
                    short(&i.digest),
                    mib(i.size_bytes),
                    i.layers.len()
                );
            }
            Ok(())
        }
        ImageCmd::Status { reference } => {
            let mut c = pb::images_client::ImagesClient::new(target.connect().await?);
            let s = c
                .status(pb::ImageRef {
                    reference: reference.clone(),
                })
                .await
                .map_err(CliError::Remote)?
                .into_inner();
            print_image(&s, as_json);
            Ok(())
        }
        ImageCmd::Rm { reference } => {
            let mut c = pb::images_client::ImagesClient::new(target.connect().await?);
            let r = c
                .remove(pb::ImageRef {
                    reference: reference.clone(),
                })
                .await
                .map_err(CliError::Remote)?
                .into_inner();
            if as_json {
                println!(
                    "{}",
                    serde_json::json!({ "removed": reference, "freed_bytes": r.freed_bytes })
                );
            } else {
                println!("removed {reference} (freed {})", mib(r.freed_bytes));
            }
            Ok(())
        }
    }
}

/// Streams the pull: a progress line that redraws itself on a terminal, plain lines
/// otherwise; the image's status at the end.
async fn pull(
    target: &Target,
    reference: &str,
    credentials: Option<pb::RegistryCredentials>,
    as_json: bool,
) -> Result<(), CliError> {
    use pb::pull_progress::Event;
    // A pull takes as long as the registry and the layers need.
    let mut c = pb::images_client::ImagesClient::new(target.connect_unbounded().await?);
    let mut stream = c
        .pull(pb::PullRequest {
            reference: reference.to_owned(),
            credentials,
        })
        .await
        .map_err(CliError::Remote)?
        .into_inner();
    let tty = std::io::stderr().is_terminal() && !as_json;
    let mut err = std::io::stderr();
    let mut layers: Vec<String> = Vec::new();
    while let Some(m) = stream.message().await.map_err(|s| {
        if tty {
            let _ = writeln!(err);
        }
        CliError::Remote(s)
    })? {
        match m.event {
            Some(Event::Resolved(r)) => {
                layers = r.layers.iter().map(|l| l.digest.clone()).collect();
                if !as_json {
                    let _ = writeln!(
                        err,
                        "{reference}: {} ({} layers, {})",
                        short(&r.digest),
                        r.layers.len(),
                        mib(r.total_bytes)
                    );
                }
            }
            Some(Event::Layer(l)) => {
                let n = layers.iter().position(|d| *d == l.digest).map_or(0, |i| i + 1);
                let what = if l.cached {
                    "already on the node".to_owned()
                } else {
                    format!("{} / {}", mib(l.done_bytes), mib(l.total_bytes))
                };
                let line = format!("layer {n}/{} {}: {what}", layers.len(), short(&l.digest));
                if tty {
                    let _ = write!(err, "\r\x1b[K{line}");
                    if l.done_bytes == l.total_bytes {
                        let _ = writeln!(err);
                    }
                } else if !as_json && (l.cached || l.done_bytes == l.total_bytes) {
                    let _ = writeln!(err, "{line}");
                }
            }
            Some(Event::Unpacking(d)) if !as_json => {
                let _ = writeln!(err, "unpacking {}", short(&d));
            }
            Some(Event::Unpacking(_)) => {}
            Some(Event::Done(s)) => {
                print_image(&s, as_json);
                return Ok(());
            }
            None => {}
        }
    }
    Err(CliError::Remote(tonic::Status::unknown(
        "the node ended the pull without saying how it went",
    )))
}
