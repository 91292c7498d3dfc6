//! The image itself (what e2fsck and debugfs read in it), the appended hash tree (what
//! veritysetup verifies), and the refusals, each named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Seek, SeekFrom};
use std::process::Command;

use coffer_ext4::{Ext4Error, Options};
use coffer_testkit::Need;
use common::{write_tar, Entry};

fn file(name: &str, data: &[u8]) -> Entry {
    let mut e = Entry::new(name, b'0');
    e.data = data.to_vec();
    e
}

fn image_of(tar: &[u8]) -> (tempfile::NamedTempFile, coffer_ext4::ImageInfo) {
    let mut img = tempfile::NamedTempFile::new().unwrap();
    let info = coffer_ext4::convert(tar, img.as_file_mut(), &Options::default()).unwrap();
    (img, info)
}

fn sample_layer() -> Vec<u8> {
    let mut rng = common::Rng::new(7);
    let mut link = Entry::new("usr/bin/long", b'2');
    link.link = "/".to_string() + &"deep/".repeat(20) + "target";
    let mut short = Entry::new("usr/bin/sh", b'2');
    short.link = "app".into();
    let mut tagged = file("etc/tagged", b"x\n");
    tagged
        .pax
        .push(("SCHILY.xattr.user.note".into(), b"hello".to_vec()));
    write_tar(&[
        Entry::new("usr", b'5'),
        file("usr/bin/app", &rng.bytes(3 * 4096 + 100)),
        link,
        short,
        tagged,
        file("etc/empty", b""),
    ])
}

fn main() -> std::process::ExitCode {
    let mut tests = coffer_testkit::tests![
        the_written_image_is_what_root_digest_hashes;
        e2fsck_finds_only_the_unset_inode_bitmap_padding: Need::Tool("e2fsck");
        debugfs_reads_back_files_links_and_xattrs: Need::Tool("debugfs");
        appended_hash_tree_verifies_with_veritysetup: Need::Tool("veritysetup");
        converting_with_verity_writes_what_append_writes;
        a_path_fifty_thousand_directories_deep_converts;
        empty_input_is_an_empty_layer;
        a_file_listed_twice_is_refused;
        a_whiteout_of_a_written_file_is_refused;
        an_empty_file_listed_again_is_replaced;
        a_hard_link_to_nothing_is_refused;
        a_hard_link_to_a_directory_is_refused;
        a_name_over_255_bytes_is_refused;
        an_entry_under_a_file_is_refused;
        a_directory_replaced_by_a_file_is_refused;
        an_oversized_xattr_is_refused;
        a_layer_over_the_maximum_disk_size_is_refused;
        a_tar_cut_inside_file_data_is_refused;
        a_header_with_a_bad_checksum_is_refused;
    ];
    tests.extend(garbled::tests());
    coffer_testkit::run(tests)
}

fn the_written_image_is_what_root_digest_hashes() {
    let tar = common::write_tar(&common::random_layer(11));
    let (img, info) = image_of(&tar);
    let bytes = std::fs::read(img.path()).unwrap();
    assert_eq!(bytes.len() as u64, info.size);
    assert_eq!(&bytes[1024 + 56..1024 + 58], &0xef53u16.to_le_bytes());
    assert_eq!(
        coffer_verity::root_hash(&bytes[..]).unwrap(),
        coffer_ext4::root_digest(&tar[..]).unwrap()
    );
}

fn e2fsck_finds_only_the_unset_inode_bitmap_padding() {
    for seed in [3, 5, 8] {
        let (img, _) = image_of(&write_tar(&common::random_layer(seed)));
        let out = Command::new("e2fsck")
            .args(["-fn"])
            .arg(img.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // tar2ext4 does not set the bitmap bits past the last inode, and stores times past 2310
        // (random layers have some) in a way e2fsck suspects; both are in the format.
        let lines: Vec<&str> = text.lines().collect();
        let problems: Vec<&str> = (0..lines.len())
            .filter(|&i| lines[i].ends_with("? no"))
            .map(|i| {
                if lines[i] == "Fix? no" && i > 0 {
                    lines[i - 1]
                } else {
                    lines[i]
                }
            })
            .filter(|l| !l.starts_with("Padding at end of inode bitmap is not set"))
            .filter(|l| !l.starts_with("Timestamp(s) on inode"))
            .collect();
        assert!(problems.is_empty(), "seed {seed}: e2fsck: {text}");
    }
}

fn debugfs(img: &std::path::Path, cmd: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(img)
        .output()
        .unwrap();
    out.stdout
}

fn debugfs_reads_back_files_links_and_xattrs() {
    let mut rng = common::Rng::new(7);
    let app = rng.bytes(3 * 4096 + 100);
    let (img, _) = image_of(&sample_layer());
    assert_eq!(debugfs(img.path(), "cat /usr/bin/app"), app);
    assert_eq!(debugfs(img.path(), "cat /etc/empty"), b"");
    let long = String::from_utf8(debugfs(img.path(), "stat /usr/bin/long")).unwrap();
    assert!(long.contains("Size: 107"), "{long}");
    let short = String::from_utf8(debugfs(img.path(), "stat /usr/bin/sh")).unwrap();
    assert!(short.contains("Fast link dest: \"app\""), "{short}");
    let x = String::from_utf8(debugfs(img.path(), "ea_get /etc/tagged user.note")).unwrap();
    assert!(x.contains("hello"), "{x}");
    let lpf = String::from_utf8(debugfs(img.path(), "ls -l /")).unwrap();
    assert!(lpf.contains("lost+found"), "{lpf}");
}

fn appended_hash_tree_verifies_with_veritysetup() {
    let tar = sample_layer();
    let (mut img, info) = image_of(&tar);
    let uuid = *b"0123456789abcdef";
    let v = coffer_ext4::append_dm_verity(img.as_file_mut(), uuid).unwrap();
    assert_eq!(v.root, coffer_ext4::root_digest(&tar[..]).unwrap());
    assert_eq!(v.superblock_offset, info.size);
    assert_eq!(v.data_blocks, info.size / 4096);
    let bytes = std::fs::read(img.path()).unwrap();
    assert_eq!(bytes.len() as u64, info.size + v.appended);
    let sb = &bytes[info.size as usize..];
    assert_eq!(&sb[..8], b"verity\0\0");
    assert_eq!(&sb[16..32], &uuid);
    assert_eq!(&sb[72..80], &v.data_blocks.to_le_bytes());
    // The root block comes right after the superblock's block.
    let root_block = &sb[4096..8192];
    let mut salted = vec![0u8; 32];
    salted.extend_from_slice(root_block);
    assert_eq!(openssl::sha::sha256(&salted), v.root);

    let out = Command::new("veritysetup")
        .arg("verify")
        .arg(img.path())
        .arg(img.path())
        .arg(hex::encode(v.root))
        .arg(format!("--hash-offset={}", info.size))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not block-aligned input is refused.
    img.as_file_mut().seek(SeekFrom::End(0)).unwrap();
    std::io::Write::write_all(img.as_file_mut(), b"x").unwrap();
    assert!(matches!(
        coffer_ext4::append_dm_verity(img.as_file_mut(), uuid),
        Err(Ext4Error::NotBlockAligned(_))
    ));
}

fn converting_with_verity_writes_what_append_writes() {
    let tar = write_tar(&common::random_layer(21));
    let uuid = [9u8; 16];
    let (mut img, _) = image_of(&tar);
    let appended = coffer_ext4::append_dm_verity(img.as_file_mut(), uuid).unwrap();
    let mut one_pass = tempfile::NamedTempFile::new().unwrap();
    let (_, v) = coffer_ext4::convert_with_verity(
        &tar[..],
        one_pass.as_file_mut(),
        &Options::default(),
        uuid,
    )
    .unwrap();
    assert_eq!(v, appended);
    assert_eq!(
        std::fs::read(one_pass.path()).unwrap(),
        std::fs::read(img.path()).unwrap()
    );
}

fn a_path_fifty_thousand_directories_deep_converts() {
    // Implicit parents are created from their known parent, not looked up from the root each
    // time, and directories are written without recursion: no quadratic time, no stack overflow.
    let deep = "d/".repeat(50_000) + "f";
    let t = std::time::Instant::now();
    let root = coffer_ext4::root_digest(&write_tar(&[file(&deep, b"x")])[..]).unwrap();
    assert_ne!(root, [0; 32]);
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

fn empty_input_is_an_empty_layer() {
    assert_eq!(
        coffer_ext4::root_digest(&[][..]).unwrap(),
        coffer_ext4::root_digest(&[0u8; 1024][..]).unwrap()
    );
}

fn refused(entries: &[Entry]) -> Ext4Error {
    coffer_ext4::root_digest(&write_tar(entries)[..]).unwrap_err()
}

fn a_file_listed_twice_is_refused() {
    let e = refused(&[file("a", b"one"), file("a", b"two")]);
    assert!(matches!(e, Ext4Error::Overwrite(ref p) if p == "a"), "{e}");
}

fn a_whiteout_of_a_written_file_is_refused() {
    let e = refused(&[file("d/a", b"data"), file("d/.wh.a", b"")]);
    assert!(
        matches!(e, Ext4Error::Overwrite(ref p) if p == "d/a"),
        "{e}"
    );
}

fn an_empty_file_listed_again_is_replaced() {
    let twice = write_tar(&[file("a", b""), file("a", b"two")]);
    let once = write_tar(&[file("a", b"two")]);
    assert_eq!(
        coffer_ext4::root_digest(&twice[..]).unwrap(),
        coffer_ext4::root_digest(&once[..]).unwrap()
    );
}

fn a_hard_link_to_nothing_is_refused() {
    let mut l = Entry::new("b", b'1');
    l.link = "missing".into();
    assert!(matches!(refused(&[l]), Ext4Error::FileNotFound(ref p) if p == "missing"));
}

fn a_hard_link_to_a_directory_is_refused() {
    let mut l = Entry::new("b", b'1');
    l.link = "d".into();
    assert!(matches!(
        refused(&[Entry::new("d", b'5'), l]),
        Ext4Error::LinkToDirectory { .. }
    ));
}

fn a_name_over_255_bytes_is_refused() {
    let name = "n".repeat(256);
    assert!(matches!(
        refused(&[file(&name, b"x")]),
        Ext4Error::InvalidName(_)
    ));
}

fn an_entry_under_a_file_is_refused() {
    assert!(matches!(
        refused(&[file("f", b""), file("f/g", b"x")]),
        Ext4Error::PathNotFound(_)
    ));
}

fn a_directory_replaced_by_a_file_is_refused() {
    assert!(matches!(
        refused(&[Entry::new("d", b'5'), file("d", b"x")]),
        Ext4Error::ReplaceDirectory(_)
    ));
}

fn an_oversized_xattr_is_refused() {
    let mut f = file("f", b"x");
    f.pax
        .push(("SCHILY.xattr.user.big".into(), vec![7u8; 5000]));
    assert!(matches!(refused(&[f]), Ext4Error::XattrTooBig { .. }));
}

fn a_layer_over_the_maximum_disk_size_is_refused() {
    let tar = write_tar(&[file("f", &vec![1u8; 2 << 20])]);
    let opts = Options {
        max_disk_size: 1 << 20,
        ..Options::default()
    };
    assert!(matches!(
        coffer_ext4::root_digest_with(&tar[..], &opts),
        Err(Ext4Error::DiskFull { .. })
    ));
}

fn a_tar_cut_inside_file_data_is_refused() {
    let tar = write_tar(&[file("f", &vec![1u8; 10_000])]);
    let e = coffer_ext4::root_digest(&tar[..512 + 5000]).unwrap_err();
    assert!(matches!(e, Ext4Error::Tar(_)), "{e}");
}

fn a_header_with_a_bad_checksum_is_refused() {
    let mut tar = write_tar(&[file("f", b"x")]);
    tar[0] ^= 1;
    let e = coffer_ext4::root_digest(&tar[..]).unwrap_err();
    assert!(matches!(e, Ext4Error::TarHeader { .. }), "{e}");
}

mod garbled {
    use coffer_testkit::Test;
    use proptest::prelude::*;

    pub(super) fn tests() -> Vec<Test> {
        vec![
            Test::new(
                "garbled::arbitrary_bytes_never_panic",
                arbitrary_bytes_never_panic,
            ),
            Test::new(
                "garbled::garbled_layers_never_panic",
                garbled_layers_never_panic,
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes: an error or a root, never a panic.
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = coffer_ext4::root_digest(&bytes[..]);
        }

        /// A real layer with bytes overwritten (headers included, checksums then fixed so the
        /// garbled fields get decoded): an error or a root, never a panic.
        fn garbled_layers_never_panic(
            seed in 0u64..50,
            edits in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..24),
            fix_checksums in any::<bool>(),
        ) {
            let mut tar = super::common::write_tar(&super::common::random_layer(seed));
            for (at, b) in edits {
                let i = at as usize % tar.len();
                tar[i] = b;
            }
            if fix_checksums {
                for h in tar.chunks_exact_mut(512) {
                    if &h[257..262] == b"ustar" {
                        h[148..156].fill(b' ');
                        let sum: u32 = h.iter().map(|&c| u32::from(c)).sum();
                        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                    }
                }
            }
            let _ = coffer_ext4::root_digest(&tar[..]);
        }
    }
}
