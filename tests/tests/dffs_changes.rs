//! peerd's copy of a complete task can change under a mount: a dfget
//! output on the cache's filesystem is a hard link to it, and its owner may
//! edit it. Readers that opened the task before keep what they have; new
//! opens must still get the task's real bytes, and the edit must survive.

use std::io::{Read, Write};
use tests::Cluster;
use tests::fuse::DffsMount;

const MIB: usize = 1 << 20;

fn read_all(file: &mut std::fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .expect("read through the mount");
    bytes
}

#[test]
fn a_copy_edited_under_an_open_passthrough_file_still_opens_with_the_right_bytes() {
    let cluster = Cluster::start(true, 1);
    let size = 4 * MIB + 123;
    let (origin, digest) = cluster.serve_file("a.bin", size, &[]);
    let expected = std::fs::read(cluster.origin_root().join("a.bin")).unwrap();
    let peer = &cluster.peers[0];
    let out = peer.dfget_verified(&origin.url("a.bin"), "a.out", &digest);
    let id = peer.dffs_add(&origin.url("a.bin"));
    let mnt = DffsMount::start(peer, &cluster.dir.path().join("mnt"), &[]);

    let mut first = std::fs::File::open(mnt.path(&id)).unwrap();
    assert!(
        read_all(&mut first) == expected,
        "wrong bytes before the edit"
    );
    assert_eq!(
        mnt.metric("dffs_fs_opens_total", "mode=\"passthrough\""),
        1.0,
        "a complete task should open for passthrough (this kernel has it)"
    );

    // The owner of the dfget output edits it, and so peerd's copy.
    let edit = b"edited by its owner";
    let mut output = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    output.write_all(edit).unwrap();
    drop(output);

    // A new open while the first is still open: the kernel would bind it
    // to the edited file, or refuse it (EIO) as it did before.
    let mut second = std::fs::File::open(mnt.path(&id))
        .unwrap_or_else(|e| panic!("a new open after the edit failed: {e}"));
    assert!(
        read_all(&mut second) == expected,
        "a new open after the edit got other bytes than the origin's"
    );
    drop(first);

    let kept = std::fs::read(&out).unwrap();
    assert_eq!(&kept[..edit.len()], edit, "the owner's edit was undone");
}
