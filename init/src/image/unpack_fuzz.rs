//! The unpacker fuzzed the way Firecracker fuzzes its devices: generated hostile tar
//! streams (huge and endless extension headers, bombs, chained symlinks that dig deep,
//! link cycles, whiteout names, garbage, truncation at any byte), raw or compressed. Each
//! must end without a panic, with a clear answer, and a refused layer leaves the store as
//! it was (only the blob, nothing in tmp/).

use super::store::Store;
use super::unpack::Compression;
use super::Digest;
use proptest::prelude::*;

const BLOCK: usize = 512;

/// A PAX record giving the next entry a size of ~1 TB.
const PAX_BOMB: &[u8] = b"21 size=999999999999\n";

use super::unpack::testing::{compress, raw_header as header};

#[derive(Debug, Clone)]
enum Piece {
    /// An entry: name, type byte, declared size, link target, bytes of data actually
    /// present (at most the declared size, and a few KiB), whether the checksum is right.
    Entry(Vec<u8>, u8, u64, Vec<u8>, usize, bool),
    /// Blocks of garbage.
    Garbage(Vec<u8>),
    /// The end-of-archive blocks.
    End,
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        Just(b"a".to_vec()),
        Just(b"d".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b".wh.a".to_vec()),
        Just(b".wh...".to_vec()),
        Just(b".wh..".to_vec()),
        Just(b".wh..wh..opq".to_vec()),
        Just(b"s".to_vec()),
        Just(b"".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..12),
    ];
    proptest::collection::vec(part, 1..8).prop_map(|ps| ps.join(&b'/'))
}

fn link() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"/".to_vec()),
        Just(b".".to_vec()),
        Just(b"s".to_vec()),
        Just(b"s/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d".to_vec()),
        Just(b"../../../etc".to_vec()),
        Just(b"a".to_vec()),
        name(),
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    let kind = prop_oneof![
        Just(b'0'),
        Just(b'5'),
        Just(b'2'),
        Just(b'1'),
        Just(b'x'),
        Just(b'g'),
        Just(b'L'),
        Just(b'K'),
        Just(b'S'),
        Just(b'3'),
        Just(b'6'),
        Just(b'7'),
        any::<u8>(),
    ];
    let size = prop_oneof![
        0u64..3000,
        Just(4u64 << 30),
        Just(16u64 << 30),
        Just(u64::MAX >> 1),
        any::<u64>()
    ];
    prop_oneof![
        8 => (name(), kind, size, link(), 0usize..3000, prop::bool::weighted(0.95))
            .prop_map(|(n, k, s, l, have, sum)| Piece::Entry(n, k, s, l, have, sum)),
        1 => proptest::collection::vec(any::<u8>(), 1..1500).prop_map(Piece::Garbage),
        1 => Just(Piece::End),
    ]
}

fn stream(pieces: &[Piece], cut: Option<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Entry(n, k, size, l, have, sum) => {
                out.extend_from_slice(&header(n, *k, *size, l, *sum));
                let have = (*have as u64).min(*size) as usize;
                // PAX records for x headers, so some carry a size override.
                let data: Vec<u8> = if *k == b'x' {
                    PAX_BOMB.iter().copied().cycle().take(have).collect()
                } else {
                    (0..have).map(|i| (i % 251) as u8).collect()
                };
                out.extend_from_slice(&data);
                out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
            }
            Piece::Garbage(g) => out.extend_from_slice(g),
            Piece::End => out.extend_from_slice(&[0u8; BLOCK * 2]),
        }
    }
    if let Some(c) = cut {
        out.truncate(c % (out.len() + 1));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Any stream: no panic; a refused layer leaves only its blob; an accepted one is a
    /// layer directory. Either way the unpack ends (the guard bounds what it reads: a
    /// declared 16 GiB is refused at its header, not read).
    #[test]
    fn hostile_tar_streams_end_cleanly_and_leave_the_store_as_it_was(
        pieces in proptest::collection::vec(piece(), 1..24),
        cut in proptest::option::weighted(0.3, any::<usize>()),
        c in prop_oneof![Just(Compression::None), Just(Compression::Gzip), Just(Compression::Zstd)],
        budget in prop_oneof![Just(1u64 << 30), 64u64 * 1024..1 << 20],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("images"), 1 << 31).unwrap();
        let tar = stream(&pieces, cut);
        let blob = compress(&tar, c);
        let d = Digest::of(&blob);
        store.put_blob(&d, blob.len() as u64, &mut &blob[..]).unwrap();
        let store = Store::open(store.root(), store.used() + budget).unwrap();
        let before = store.used();
        let diff = Digest::of(&tar);
        match store.unpack(&[], &d, c, &diff) {
            Ok(layer) => {
                prop_assert!(layer.dir.is_dir());
                prop_assert_eq!(store.used(), super::store::measure(store.root()), "the count is a walk's");
                prop_assert!(store.used() <= store.limit());
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "tmp/ is empty: {}", e);
                prop_assert_eq!(store.used(), before, "the store is as it was: {}", e);
                prop_assert_eq!(store.used(), super::store::measure(store.root()), "the count is a walk's: {}", e);
            }
        }
    }
}

/// The shapes the fuzzer finds by chance, each made on purpose: an endless PAX header, a
/// bomb behind a PAX size, a link cycle, whiteouts of `.` and `..`, a cut mid-header.
#[test]
fn the_known_hostile_shapes_are_refused_or_harmless() {
    let cases: Vec<(&str, Vec<Piece>, Option<usize>)> = vec![
        (
            "endless pax",
            vec![Piece::Entry(b"p".to_vec(), b'x', u64::MAX >> 1, vec![], 3000, true)],
            None,
        ),
        (
            "pax bomb",
            vec![
                Piece::Entry(b"p".to_vec(), b'x', 21, vec![], 21, true),
                Piece::Entry(b"f".to_vec(), b'0', 1, vec![], 1, true),
            ],
            None,
        ),
        (
            "link cycle",
            vec![
                Piece::Entry(b"s".to_vec(), b'2', 0, b"t".to_vec(), 0, true),
                Piece::Entry(b"t".to_vec(), b'2', 0, b"s".to_vec(), 0, true),
                Piece::Entry(b"s/x".to_vec(), b'0', 1, vec![], 1, true),
            ],
            None,
        ),
        (
            "whiteouts of . and ..",
            vec![
                Piece::Entry(b".wh..".to_vec(), b'0', 0, vec![], 0, true),
                Piece::Entry(b"a/.wh...".to_vec(), b'0', 0, vec![], 0, true),
            ],
            None,
        ),
        (
            "cut mid-header",
            vec![Piece::Entry(b"f".to_vec(), b'0', 5, vec![], 5, true)],
            Some(300),
        ),
    ];
    for (what, pieces, cut) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("images"), 1 << 30).unwrap();
        let tar = stream(&pieces, cut);
        let d = Digest::of(&tar);
        store.put_blob(&d, tar.len() as u64, &mut &tar[..]).unwrap();
        let before = store.used();
        let r = store.unpack(&[], &d, Compression::None, &d_diff(&tar));
        if let Err(e) = &r {
            assert_eq!(store.used(), before, "{what}: {e}");
            assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "{what}");
        }
        if what.contains("pax") || what == "cut mid-header" {
            assert!(r.is_err(), "{what} is refused");
        }
    }
}

fn d_diff(tar: &[u8]) -> Digest {
    Digest::of(tar)
}
