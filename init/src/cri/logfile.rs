//! A container's log file in the CRI's format, which kubelet (`kubectl logs`) and
//! `crictl logs` read themselves: one line per piece of output,
//! `RFC3339Nano-timestamp stream tag text`, the tag `F` for a piece that ends its line and
//! `P` for one the next piece continues (lines are split at 16 KiB, as the container's
//! log buffer splits them). The output is followed from the container's instance from its
//! first line and appended here as it comes; a file kubelet rotated away (renamed, then
//! `ReopenContainerLog`) is made anew at the next write.

use crate::pb;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// `2016-10-06T00:17:09.669794202Z`: UTC, the fraction without trailing zeros (and
/// without a dot when it is zero), as Go's `time.RFC3339Nano` writes it.
pub fn rfc3339_nano(unix_nanos: i64) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One entry as the CRI's log line, newline included.
pub fn line(e: &pb::LogEntry) -> Vec<u8> {
    let stream = if e.stream == pb::LogStream::Stderr as i32 {
        "stderr"
    } else {
        "stdout"
    };
    let tag = if e.partial { "P" } else { "F" };
    let mut out = format!("{} {stream} {tag} ", rfc3339_nano(e.timestamp_unix_nanos)).into_bytes();
    out.extend_from_slice(&e.line);
    out.push(b'\n');
    out
}

/// Appends `bytes` to `path`, making it (0640) when kubelet rotated it away.
fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(bytes)
}

/// Most bytes written at once: entries that arrived together go in one write.
const BATCH: usize = 256 << 10;

/// Appends the followed output to `path` until it ends. `reopen` changes when kubelet
/// asks for the file to be reopened: the file is made at once (the next write would
/// make it anyway).
pub async fn follow(mut entries: tonic::Streaming<pb::LogEntry>, path: PathBuf, mut reopen: watch::Receiver<u64>) {
    use futures_util::FutureExt;
    let write = |bytes: Vec<u8>| {
        let path = path.clone();
        async move {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || append(&p, &bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("CRI log {}: {e}", path.display()),
                Err(e) => tracing::warn!("CRI log {}: {e}", path.display()),
            }
        }
    };
    write(Vec::new()).await;
    loop {
        let first = tokio::select! {
            m = entries.message() => m,
            r = reopen.changed() => {
                if r.is_ok() {
                    write(Vec::new()).await;
                }
                continue;
            }
        };
        let mut batch = match first {
            Ok(Some(e)) => line(&e),
            Ok(None) => return,
            Err(s) => {
                tracing::info!("CRI log {}: the output ended: {}", path.display(), s.message());
                return;
            }
        };
        // What has arrived already goes in the same write.
        let mut ended = false;
        while batch.len() < BATCH {
            match entries.message().now_or_never() {
                Some(Ok(Some(e))) => batch.extend_from_slice(&line(&e)),
                Some(Ok(None)) | Some(Err(_)) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        write(batch).await;
        if ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_nano_as_go_writes_them() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
        // The example in the CRI's own documentation.
        assert_eq!(
            rfc3339_nano(1_475_713_029_669_794_202),
            "2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(rfc3339_nano(1_475_713_029_500_000_000), "2016-10-06T00:17:09.5Z");
        assert_eq!(rfc3339_nano(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc3339_nano(1_796_601_599_000_000_000), "2026-12-06T23:59:59Z");
        assert_eq!(rfc3339_nano(-1_000_000_000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn lines_carry_stream_and_tag() {
        let e = |stream: pb::LogStream, text: &str, partial: bool| pb::LogEntry {
            timestamp_unix_nanos: 1_475_713_029_669_794_202,
            stream: stream as i32,
            line: text.as_bytes().to_vec(),
            dropped_before: 0,
            partial,
        };
        assert_eq!(
            line(&e(pb::LogStream::Stdout, "hello", false)),
            b"2016-10-06T00:17:09.669794202Z stdout F hello\n"
        );
        assert_eq!(
            line(&e(pb::LogStream::Stderr, "part", true)),
            b"2016-10-06T00:17:09.669794202Z stderr P part\n"
        );
        assert_eq!(
            line(&e(pb::LogStream::Stdout, "", false)),
            b"2016-10-06T00:17:09.669794202Z stdout F \n"
        );
    }

    #[test]
    fn a_rotated_file_is_made_anew_and_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app/0.log");
        append(&path, b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("app/0.log.1")).unwrap();
        append(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert_eq!(std::fs::read(dir.path().join("app/0.log.1")).unwrap(), b"one\n");
        let link = dir.path().join("app/1.log");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(append(&link, b"x\n").is_err(), "O_NOFOLLOW");
    }
}
