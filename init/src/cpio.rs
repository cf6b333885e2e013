//! A reproducible `newc` cpio writer driven by a gen_init_cpio-style spec:
//!
//! ```text
//! dir   PATH MODE UID GID
//! file  PATH SOURCE MODE UID GID
//! nod   PATH MODE UID GID c|b MAJOR MINOR
//! slink PATH TARGET MODE UID GID
//! ```
//! Every mtime is 0 and inode numbers are assigned in spec order, so the same spec and the
//! same source files always give the same bytes. Needs no root (device nodes are records).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("spec line {line}: {msg}")]
    Spec { line: usize, msg: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Node {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        block: bool,
        major: u32,
        minor: u32,
    },
    Symlink {
        path: String,
        target: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// Parses a spec; `file` sources are read relative to `base`.
pub fn parse_spec(spec: &str, base: &Path) -> Result<Vec<Entry>, CpioError> {
    let mut out = Vec::new();
    for (i, raw) in spec.lines().enumerate() {
        let line = i + 1;
        let t: Vec<&str> = raw.split_whitespace().collect();
        if t.is_empty() || t[0].starts_with('#') {
            continue;
        }
        let err = |msg: &str| CpioError::Spec {
            line,
            msg: msg.to_owned(),
        };
        let num =
            |s: &str, radix: u32| u32::from_str_radix(s, radix).map_err(|_| err(&format!("'{s}' is not a number")));
        let path = |s: &str| -> Result<String, CpioError> {
            let p = s.trim_start_matches('/');
            if p.is_empty() || p.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(err(&format!("bad path '{s}'")));
            }
            Ok(p.to_owned())
        };
        let e = match (t[0], t.len()) {
            ("dir", 5) => Entry::Dir {
                path: path(t[1])?,
                mode: num(t[2], 8)?,
                uid: num(t[3], 10)?,
                gid: num(t[4], 10)?,
            },
            ("file", 6) => {
                let src = base.join(t[2]);
                let data = std::fs::read(&src).map_err(|source| CpioError::Io {
                    path: src.clone(),
                    source,
                })?;
                Entry::File {
                    path: path(t[1])?,
                    data,
                    mode: num(t[3], 8)?,
                    uid: num(t[4], 10)?,
                    gid: num(t[5], 10)?,
                }
            }
            ("nod", 8) => Entry::Node {
                path: path(t[1])?,
                mode: num(t[2], 8)?,
                uid: num(t[3], 10)?,
                gid: num(t[4], 10)?,
                block: match t[5] {
                    "b" => true,
                    "c" => false,
                    _ => return Err(err("device type must be c or b")),
                },
                major: num(t[6], 10)?,
                minor: num(t[7], 10)?,
            },
            ("slink", 6) => Entry::Symlink {
                path: path(t[1])?,
                target: t[2].to_owned(),
                mode: num(t[3], 8)?,
                uid: num(t[4], 10)?,
                gid: num(t[5], 10)?,
            },
            _ => {
                return Err(err(&format!(
                    "cannot read '{raw}' (see the spec format in spawn/cpio.rs)"
                )))
            }
        };
        out.push(e);
    }
    Ok(out)
}

/// The fields of one newc header that vary between records.
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: usize,
    rdev: (u32, u32),
}

fn header(w: &mut impl Write, h: Header, name: &str) -> io::Result<usize> {
    let namesize = name.len() + 1;
    let text = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
        ino = h.ino,
        mode = h.mode,
        uid = h.uid,
        gid = h.gid,
        nlink = if h.mode & S_IFDIR != 0 { 2 } else { 1 },
        mtime = 0,
        size = h.size,
        dmaj = 0,
        dmin = 0,
        rmaj = h.rdev.0,
        rmin = h.rdev.1,
        check = 0
    );
    w.write_all(text.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let n = 110 + namesize;
    Ok(pad(w, n)? + n)
}

fn pad(w: &mut impl Write, n: usize) -> io::Result<usize> {
    let p = (4 - n % 4) % 4;
    w.write_all(&[0u8; 3][..p])?;
    Ok(p)
}

/// Writes the archive, ending with the TRAILER!!! record.
pub fn write_archive(entries: &[Entry], w: &mut impl Write) -> io::Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let ino = 721 + i as u32;
        // Each record: header, then its payload (file data or link target), padded to 4.
        let (path, mode, uid, gid, rdev, payload): (&str, u32, u32, u32, (u32, u32), &[u8]) = match e {
            Entry::Dir { path, mode, uid, gid } => (path, S_IFDIR | mode, *uid, *gid, (0, 0), &[]),
            Entry::File {
                path,
                data,
                mode,
                uid,
                gid,
            } => (path, S_IFREG | mode, *uid, *gid, (0, 0), data),
            Entry::Node {
                path,
                mode,
                uid,
                gid,
                block,
                major,
                minor,
            } => {
                let ty = if *block { S_IFBLK } else { S_IFCHR };
                (path, ty | mode, *uid, *gid, (*major, *minor), &[])
            }
            Entry::Symlink {
                path,
                target,
                mode,
                uid,
                gid,
            } => (path, S_IFLNK | mode, *uid, *gid, (0, 0), target.as_bytes()),
        };
        header(
            w,
            Header {
                ino,
                mode,
                uid,
                gid,
                size: payload.len(),
                rdev,
            },
            path,
        )?;
        w.write_all(payload)?;
        pad(w, payload.len())?;
    }
    header(
        w,
        Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            rdev: (0, 0),
        },
        "TRAILER!!!",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_spec_same_bytes_and_valid_newc() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("hello"), b"hi!\n").unwrap();
        let spec = "# comment\ndir /dev 0755 0 0\nnod /dev/console 0600 0 0 c 5 1\nfile /init hello 0755 0 0\nslink /bin/sh /init 0777 0 0\n";
        let e = parse_spec(spec, d.path()).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_archive(&e, &mut a).unwrap();
        write_archive(&e, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("dev/console") && text.contains("TRAILER!!!") && text.contains("hi!\n"));
        // The console node: mode 020600, rdev 5:1.
        let at = text.find("dev/console").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "00002180");
        assert_eq!(&text[at + 78..at + 94], "0000000500000001");
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = parse_spec("dir /a 0755 0 0\ndir /../x 0755 0 0\n", Path::new(".")).unwrap_err();
        assert!(e.to_string().starts_with("spec line 2"), "{e}");
        assert!(parse_spec("nod /x 0600 0 0 q 1 1", Path::new(".")).is_err());
    }
}
