//! The `direct_io` mount option, on by default: files not yet complete
//! bypass the page cache, yet read right, stay lazy, and can still be
//! memory-mapped (as executables and libraries in an image layer are). With
//! `direct_io=0` they go through the page cache instead.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use tests::fuse::DffsMount;
use tests::{Cluster, sha256_hex};

const MIB: usize = 1 << 20;

/// Maps the whole file with `flags` and hashes the mapping.
fn sha256_of_mapping(path: &std::path::Path, len: usize, flags: i32) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: a fresh read-only mapping of an open file, unmapped below
    // and never handed out.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            flags,
            file.as_raw_fd(),
            0,
        );
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let digest = sha256_hex(std::slice::from_raw_parts(at as *const u8, len));
        libc::munmap(at, len);
        Ok(digest)
    }
}

#[test]
fn by_default_incomplete_files_bypass_the_page_cache_and_still_read_and_map_right() {
    let cluster = Cluster::start(true, 1);
    let size = 12 * MIB + 4321;
    let (origin, digest) = cluster.serve_file("a.bin", size, &[]);
    let mapped_digest = tests::write_random_file(&cluster.origin_root().join("b.bin"), size);
    let peer = &cluster.peers[0];
    let mnt = DffsMount::start(peer, &cluster.dir.path().join("mnt"), &[]);

    // The same 4 MiB read twice on one handle: without the page cache,
    // both reads reach dffs, and exactly those bytes (no kernel read-ahead).
    let id = peer.dffs_add(&origin.url("a.bin"));
    let expected = std::fs::read(cluster.origin_root().join("a.bin")).unwrap();
    let file = std::fs::File::open(mnt.path(&id)).unwrap();
    let before = mnt.metric("dffs_fs_read_bytes_total", "");
    for _ in 0..2 {
        let mut buf = vec![0u8; 4 * MIB];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf == expected[..4 * MIB], "wrong bytes through the mount");
    }
    let read = mnt.metric("dffs_fs_read_bytes_total", "") - before;
    assert_eq!(
        read,
        (8 * MIB) as f64,
        "bytes dffs served for two 4 MiB reads"
    );
    drop(file);

    // A cold sequential copy.
    let copy = cluster.dir.path().join("copy");
    std::fs::copy(mnt.path(&id), &copy).unwrap();
    assert_eq!(tests::sha256_file(&copy), digest);

    // A private mapping of a file nobody has fetched yet.
    let id = peer.dffs_add(&origin.url("b.bin"));
    let mapped = sha256_of_mapping(&mnt.path(&id), size, libc::MAP_PRIVATE)
        .expect("a private mapping of a direct_io file");
    assert_eq!(mapped, mapped_digest);
    let served = origin.bytes_served();
    assert!(
        served as f64 <= 2.1 * size as f64,
        "origin served {served} bytes for two files of {size}"
    );
}

#[test]
fn with_direct_io_off_incomplete_files_are_read_through_the_page_cache() {
    let cluster = Cluster::start(true, 1);
    let size = 12 * MIB + 4321;
    let (origin, digest) = cluster.serve_file("a.bin", size, &[]);
    let peer = &cluster.peers[0];
    let mnt = DffsMount::start(
        peer,
        &cluster.dir.path().join("mnt"),
        &["-o", "direct_io=0"],
    );
    let id = peer.dffs_add(&origin.url("a.bin"));
    let expected = std::fs::read(cluster.origin_root().join("a.bin")).unwrap();

    // The same last 4 MiB read twice on one handle (the kernel's read-ahead
    // has nothing beyond them to add): the second read is answered from the
    // page cache and never reaches dffs.
    let file = std::fs::File::open(mnt.path(&id)).unwrap();
    let tail = (size - 4 * MIB) as u64;
    let mut first = vec![0u8; 4 * MIB];
    file.read_exact_at(&mut first, tail).unwrap();
    let after_first = mnt.metric("dffs_fs_read_bytes_total", "");
    let mut second = vec![0u8; 4 * MIB];
    file.read_exact_at(&mut second, tail).unwrap();
    let after_second = mnt.metric("dffs_fs_read_bytes_total", "");
    assert!(
        first == expected[tail as usize..] && second == first,
        "wrong bytes through the mount"
    );
    assert_eq!(
        after_second, after_first,
        "the repeated read reached dffs despite the page cache"
    );
    drop(file);

    let copy = cluster.dir.path().join("copy");
    std::fs::copy(mnt.path(&id), &copy).unwrap();
    assert_eq!(tests::sha256_file(&copy), digest);
}
