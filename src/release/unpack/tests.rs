//! The unpacker against crafted bundles: every bound holds, nothing escapes.

use super::*;
use crate::fsutil::Hasher;
use proptest::prelude::*;

/// One tar entry as a test writes it: the header's claims and the body actually sent.
#[derive(Debug, Clone)]
struct Raw {
    path: String,
    kind: tar::EntryType,
    header_size: u64,
    body: Vec<u8>,
    link: Option<String>,
    pax_size: Option<u64>,
}

fn file(path: &str, body: &[u8]) -> Raw {
    Raw {
        path: path.into(),
        kind: tar::EntryType::Regular,
        header_size: body.len() as u64,
        body: body.to_vec(),
        link: None,
        pax_size: None,
    }
}

fn node(path: &str, body: &[u8]) -> Node {
    let mut h = Hasher::new();
    h.update(body);
    let (sha256, size) = h.finish();
    Node::File {
        path: path.into(),
        size,
        sha256,
        mode: 0o644,
    }
}

/// The tar stream, written header by header so that a test can lie in any field.
fn tar_stream(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if let Some(size) = e.pax_size {
            let record = format!("size={size}\n");
            let line = format!(
                "{} {record}",
                record.len() + 3 + size.to_string().len() - size.to_string().len()
            );
            push_raw(
                &mut out,
                "PaxHeader",
                tar::EntryType::XHeader,
                line.as_bytes(),
                None,
                line.len() as u64,
            );
        }
        push_raw(
            &mut out,
            &e.path,
            e.kind,
            &e.body,
            e.link.as_deref(),
            e.header_size,
        );
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn push_raw(
    out: &mut Vec<u8>,
    path: &str,
    kind: tar::EntryType,
    body: &[u8],
    link: Option<&str>,
    claimed: u64,
) {
    let mut header = tar::Header::new_gnu();
    {
        let name = &mut header.as_old_mut().name;
        let n = path.len().min(name.len());
        name[..n].copy_from_slice(&path.as_bytes()[..n]);
    }
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(claimed);
    if let Some(link) = link {
        let _ = header.set_link_name(link);
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    let pad = (BLOCK - body.len() % BLOCK) % BLOCK;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn bundle(entries: &[Raw]) -> Vec<u8> {
    zstd::encode_all(&tar_stream(entries)[..], 3).unwrap()
}

fn manifest(nodes: Vec<Node>) -> HashMap<String, Node> {
    nodes
        .into_iter()
        .map(|n| (n.path().to_string(), n))
        .collect()
}

/// Unpacks into `<tmp>/partial`; returns the result and the temporary directory to inspect.
fn run(entries: &[Raw], nodes: Vec<Node>) -> (Result<(), ReleaseError>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("partial");
    fs::create_dir(&dest).unwrap();
    let result = unpack(
        &bundle(entries)[..],
        &manifest(nodes),
        &dest,
        "20261126T130455Z-3fa9c1",
    );
    (result, tmp)
}

fn disk_bytes(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .filter_map(|p| fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&p));
            }
        }
    }
    out
}

#[test]
fn a_bundle_that_matches_its_manifest_unpacks() {
    let (result, tmp) = run(
        &[file("index.php", b"<?php")],
        vec![node("index.php", b"<?php")],
    );
    result.unwrap();
    assert_eq!(
        fs::read(tmp.path().join("partial/index.php")).unwrap(),
        b"<?php"
    );
}

#[test]
fn a_pax_size_larger_than_the_manifest_writes_nothing_beyond_it() {
    // The finding: header size 1, PAX size 8 MiB; the tar crate believes the PAX record.
    let mut liar = file("a.bin", &vec![0u8; 8 << 20]);
    liar.header_size = 1;
    liar.pax_size = Some(8 << 20);
    let (result, tmp) = run(&[liar], vec![node("a.bin", b"x")]);
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("more than the 1 bytes the manifest promises"),
        "{err}"
    );
    assert!(
        disk_bytes(tmp.path()) <= 2,
        "{} bytes written",
        disk_bytes(tmp.path())
    );
}

#[test]
fn a_huge_long_name_record_is_refused_before_it_is_read() {
    // A GNU long-name record claiming 1 GiB: refused from its header, never buffered.
    let mut stream = Vec::new();
    push_raw(
        &mut stream,
        "././@LongLink",
        tar::EntryType::GNULongName,
        &[],
        None,
        1 << 30,
    );
    let compressed = zstd::encode_all(&stream[..], 3).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack(
        &compressed[..],
        &HashMap::new(),
        tmp.path(),
        "20261126T130455Z-3fa9c1",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("an extension record of 1073741824 bytes"),
        "{err}"
    );
}

#[test]
fn a_repeated_member_says_so() {
    let (result, _tmp) = run(
        &[file("a.php", b""), file("a.php", b"")],
        vec![node("a.php", b"")],
    );
    let err = result.unwrap_err().to_string();
    assert!(err.contains("repeats the entry 'a.php'"), "{err}");
    assert!(!err.contains("cannot"), "{err}");
}

#[test]
fn a_pax_global_header_is_skipped() {
    let global = Raw {
        path: "pax_global_header".into(),
        kind: tar::EntryType::XGlobalHeader,
        header_size: 52,
        body: b"52 comment=0123456789abcdef0123456789abcdef01234567\n".to_vec(),
        link: None,
        pax_size: None,
    };
    let (result, _tmp) = run(&[global, file("a.php", b"1")], vec![node("a.php", b"1")]);
    result.unwrap();
}

#[test]
fn a_file_whose_size_differs_is_refused_by_size() {
    let (result, tmp) = run(&[file("a.php", b"12345")], vec![node("a.php", b"1")]);
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("another size") || err.contains("more than"),
        "{err}"
    );
    assert!(disk_bytes(tmp.path()) <= 2);
}

/// `n` files named by `name` with bodies by `body`: their entries, and the manifest's nodes for them.
fn files(
    n: usize,
    name: impl Fn(usize) -> String,
    body: impl Fn(usize) -> Vec<u8>,
) -> (Vec<Raw>, Vec<Node>) {
    (0..n)
        .map(|i| (file(&name(i), &body(i)), node(&name(i), &body(i))))
        .unzip()
}

#[test]
fn a_file_whose_bytes_differ_is_refused_whether_handed_on_or_written_where_read() {
    let large = (HANDED_MAX + 1) as usize;
    for (size, handed) in [(5, true), (HANDED_MAX as usize, true), (large, false)] {
        let promised = vec![b'a'; size];
        let mut sent = promised.clone();
        sent[size - 1] = b'b';
        // Many good files around it: the bad one is not the last thing the writer sees.
        let (mut entries, mut nodes) = files(
            40,
            |i| format!("f{i}.php"),
            |i| format!("<?php {i}").into_bytes(),
        );
        entries.insert(3, file("bad.php", &sent));
        nodes.push(node("bad.php", &promised));
        let (result, tmp) = run(&entries, nodes);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ReleaseError::Corrupt { path, .. } if path == "bad.php"),
            "{size} (handed on: {handed}): {err}"
        );
        // Handed on, it is checked before it is written (written on the spot, the caller removes
        // the partial tree).
        if handed {
            assert!(!tmp.path().join("partial/bad.php").exists(), "{size}");
        }
    }
}

#[test]
fn many_small_files_and_a_large_one_unpack_through_both_paths() {
    let large = vec![7u8; (HANDED_MAX as usize) * 2 + 3];
    let (mut entries, mut nodes) = files(
        HANDED_AT_ONCE * 4,
        |i| format!("d/f{i}.php"),
        |i| format!("<?php {i}").repeat(i).into_bytes(),
    );
    entries.insert(10, file("d/large.bin", &large));
    nodes.push(node("d/large.bin", &large));
    let (result, tmp) = run(&entries, nodes);
    result.unwrap();
    let partial = tmp.path().join("partial/d");
    for i in 0..(HANDED_AT_ONCE * 4) {
        let path = partial.join(format!("f{i}.php"));
        assert_eq!(
            fs::read(&path).unwrap(),
            format!("<?php {i}").repeat(i).as_bytes()
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
    assert_eq!(fs::read(partial.join("large.bin")).unwrap(), large);
}

#[test]
fn a_refusal_after_files_were_handed_on_returns_with_the_writer_stopped() {
    // Files handed on, then an entry the manifest does not list: the refusal is the error, and
    // nothing is written after unpack returns (the writer is joined first).
    let (mut entries, nodes) = files(
        HANDED_AT_ONCE * 2,
        |i| format!("f{i}.php"),
        |_| b"<?php".to_vec(),
    );
    // Empty: within the bytes the manifest promises, so the name is what refuses it.
    entries.push(file("evil.php", b""));
    let (result, tmp) = run(&entries, nodes);
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("'evil.php', which the manifest does not list"),
        "{err}"
    );
    let after = walk(tmp.path()).len();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(walk(tmp.path()).len(), after);
    assert!(!tmp.path().join("partial/evil.php").exists());
}

#[test]
fn devices_and_hard_links_are_refused() {
    for kind in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
        tar::EntryType::Link,
    ] {
        let entry = Raw {
            path: "dev".into(),
            kind,
            header_size: 0,
            body: Vec::new(),
            link: Some("a.php".into()),
            pax_size: None,
        };
        let (result, tmp) = run(&[entry], vec![node("dev", b"")]);
        assert!(result.is_err(), "{kind:?}");
        assert!(!tmp.path().join("partial/dev").exists(), "{kind:?}");
    }
}

#[test]
fn header_sizes_in_octal_and_base_256() {
    let mut h = [0u8; BLOCK];
    h[124..135].copy_from_slice(b"00000000017");
    assert_eq!(header_size(&h).unwrap(), 15);
    let mut big = [0u8; BLOCK];
    big[124] = 0x80;
    big[135] = 1;
    big[134] = 2;
    assert_eq!(header_size(&big).unwrap(), 513);
    assert_eq!(pax_size(b"20 size=1073741824\n"), Some(1 << 30));
    assert_eq!(pax_size(b"20 path=x\n"), None);
}

fn arb_entry() -> impl Strategy<Value = Raw> {
    let name = prop::sample::select(vec![
        "a", "b", "d/a", "d", "..", "../x", "/etc/x", ".", "d/../a", "ä.php", "l",
    ]);
    let kind = prop::sample::select(vec![
        tar::EntryType::Regular,
        tar::EntryType::Directory,
        tar::EntryType::Symlink,
        tar::EntryType::Link,
        tar::EntryType::Char,
        tar::EntryType::Fifo,
        tar::EntryType::GNULongName,
        tar::EntryType::XHeader,
    ]);
    let link = prop::option::of(prop::sample::select(vec![
        "a",
        "../../etc",
        "/etc",
        "l/..",
        "d",
    ]));
    (
        name,
        kind,
        prop::collection::vec(any::<u8>(), 0..64),
        0u64..80,
        link,
        prop::option::of(0u64..200),
    )
        .prop_map(|(path, kind, body, header_size, link, pax_size)| Raw {
            path: path.to_string(),
            kind,
            header_size,
            body,
            link: link.map(str::to_string),
            pax_size,
        })
}

fn arb_manifest_node() -> impl Strategy<Value = Node> {
    let name = prop::sample::select(vec!["a", "b", "d/a", "d", "ä.php", "l"]);
    (name, prop::collection::vec(any::<u8>(), 0..64), 0u8..3).prop_map(|(path, body, kind)| {
        match kind {
            0 => node(path, &body),
            1 => Node::Dir {
                path: path.into(),
                mode: 0o755,
            },
            _ => Node::Symlink {
                path: path.into(),
                target: "a".into(),
            },
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the stream and the manifest: nothing appears outside the staging directory, no
    /// more bytes are written than the manifest promises (+1 per file, the overrun detector),
    /// and a stream that unpacks leaves exactly the manifest's tree.
    #[test]
    fn hostile_streams_stay_inside_and_bounded(
        entries in prop::collection::vec(arb_entry(), 0..8),
        nodes in prop::collection::vec(arb_manifest_node(), 0..6),
    ) {
        let mut unique: HashMap<String, Node> = HashMap::new();
        for n in nodes {
            unique.entry(n.path().to_string()).or_insert(n);
        }
        // Parents of listed paths are directories, as check_nodes demands of a real manifest.
        if unique.contains_key("d/a") {
            unique.insert("d".into(), Node::Dir { path: "d".into(), mode: 0o755 });
        }
        let nodes: Vec<Node> = unique.into_values().collect();
        let promised: u64 = nodes.iter().map(|n| match n { Node::File { size, .. } => *size + 1, _ => 0 }).sum();
        let (result, tmp) = run(&entries, nodes.clone());
        let inside = tmp.path().join("partial");
        for p in walk(tmp.path()) {
            prop_assert!(p.starts_with(&inside), "{} outside the staging dir", p.display());
        }
        prop_assert!(disk_bytes(tmp.path()) <= promised);
        if result.is_ok() {
            let mut found: Vec<String> = walk(&inside)
                .iter()
                .map(|p| p.strip_prefix(&inside).unwrap().display().to_string())
                .collect();
            found.sort();
            let mut listed: Vec<String> = nodes.iter().map(|n| n.path().to_string()).collect();
            listed.sort();
            prop_assert_eq!(found, listed);
            for n in &nodes {
                if let Node::File { path, sha256, .. } = n {
                    let (got, _) = crate::fsutil::hash_file(&inside.join(path)).unwrap();
                    prop_assert_eq!(&got, sha256);
                }
            }
        }
    }
}
