//! The io_uring backend on real files: split and partial writes land whole at odd offsets, reads stop at
//! the end of the file, a linked write + fdatasync lands and says which step failed, and the kernel's
//! errors come back as the errno it gave. Where the kernel refuses io_uring these tests are skipped, unless
//! `CHRONIK_TEST_IO_BACKEND=io_uring` demands the backend, in which case they fail.
#![allow(clippy::unwrap_used)]

use std::{fs, os::fd::OwnedFd};

use super::*;

fn backend() -> Option<UringIo> {
    match UringIo::probe() {
        Ok(io) => Some(io),
        Err(e) if std::env::var("CHRONIK_TEST_IO_BACKEND").as_deref() == Ok("io_uring") => {
            panic!("CHRONIK_TEST_IO_BACKEND=io_uring but {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// A file in `dir` holding `len` zero bytes, opened for the backend with entries of at most `max_rw_len`.
fn file(dir: &Path, len: u64, max_rw_len: usize) -> (UringFile, std::path::PathBuf) {
    let path = dir.join("f");
    fs::write(&path, vec![0u8; len as usize]).unwrap();
    let file = open_file(&path, OpenMode::ReadWrite).unwrap();
    (UringFile { file, max_rw_len }, path)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn split_writes_and_reads_land_whole_at_odd_offsets() {
    let Some(_io) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Entries of 7 bytes: every call makes many partial steps, as short writes would.
    let (f, path) = file(dir.path(), 0, 7);
    let data = pattern(1000);
    f.write_all_at(&data, 4093).unwrap();
    let on_disk = fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), 4093 + 1000);
    assert!(on_disk[..4093].iter().all(|&b| b == 0), "a hole stays zero");
    assert_eq!(&on_disk[4093..], &data[..]);

    let mut one = [0u8; 64];
    assert_eq!(
        f.read_at(&mut one, 4093).unwrap(),
        7,
        "one entry reads at most 7 bytes"
    );
    let mut back = vec![0u8; 1000];
    f.read_exact_at(&mut back, 4093).unwrap();
    assert_eq!(back, data);
}

#[test]
fn reads_stop_at_the_end_of_the_file() {
    let Some(_io) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = file(dir.path(), 0, MAX_RW_LEN);
    f.write_all_at(b"0123456789", 0).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        f.read_at(&mut buf, 4).unwrap(),
        6,
        "a read straddling the end is short"
    );
    assert_eq!(&buf[..6], b"456789");
    assert_eq!(f.read_at(&mut buf, 10).unwrap(), 0, "at the end");
    assert_eq!(f.read_at(&mut buf, 1 << 20).unwrap(), 0, "far past the end");
    let e = f.read_exact_at(&mut buf, 2).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(f.size().unwrap(), 10);
}

#[test]
fn linked_write_and_sync_lands_and_times_the_write() {
    let Some(_io) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (f, path) = file(dir.path(), 5, MAX_RW_LEN);
    let data = pattern(4099);
    let started = Instant::now();
    let wrote = f.write_all_and_sync_at(&data, 3).unwrap();
    assert!(wrote <= started.elapsed(), "the write step is part of the call");
    let on_disk = fs::read(&path).unwrap();
    assert_eq!(&on_disk[..3], &[0, 0, 0]);
    assert_eq!(&on_disk[3..], &data[..]);

    // An oversized buffer: the head is written alone, the last piece is linked to the sync.
    let (f, path) = file(dir.path(), 0, 10);
    f.write_all_and_sync_at(&data[..95], 1).unwrap();
    assert_eq!(&fs::read(&path).unwrap()[1..], &data[..95]);
}

#[test]
fn a_failed_write_is_reported_as_the_write_not_the_cancelled_sync() {
    let Some(io) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    fs::write(&path, b"x").unwrap();
    let f = io.open(&path, OpenMode::ReadOnly).unwrap();
    let e = f.write_all_at(b"abc", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    match f.write_all_and_sync_at(b"abc", 0) {
        Err(WriteSyncError::Write(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}"),
        other => panic!("expected the write to fail, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), b"x");
}

#[test]
fn a_failed_sync_after_a_good_write_is_reported_as_the_sync() {
    let Some(_io) = backend() else { return };
    // A pipe takes the write but cannot be synced (EINVAL): the chain's second step fails.
    let (mut reader, writer) = io::pipe().unwrap();
    let f = UringFile::new(File::from(OwnedFd::from(writer)));
    match f.write_all_and_sync_at(b"abc", 0) {
        Err(WriteSyncError::Sync(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
        other => panic!("expected the sync to fail, got {other:?}"),
    }
    let e = f.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    let mut got = [0u8; 3];
    io::Read::read_exact(&mut reader, &mut got).unwrap();
    assert_eq!(&got, b"abc", "the write ran before the sync failed");
}

#[test]
fn threads_sync_their_own_files_concurrently() {
    let Some(io) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(io);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (io, path) = (Arc::clone(&io), dir.path().join(format!("t{t}")));
            thread::spawn(move || {
                let f = io.open(&path, OpenMode::CreateNew).unwrap();
                for i in 0..50u64 {
                    f.write_all_and_sync_at(&[t as u8; 100], i * 100).unwrap();
                }
                path
            })
        })
        .collect();
    for (t, handle) in threads.into_iter().enumerate() {
        let path = handle.join().unwrap();
        assert_eq!(fs::read(path).unwrap(), vec![t as u8; 5000]);
    }
}

#[test]
fn positions_that_io_uring_would_read_as_the_file_position_are_refused() {
    let Some(_io) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = file(dir.path(), 0, MAX_RW_LEN);
    let e = f.write_all_at(b"a", u64::MAX).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn chain_outcomes_tell_the_failed_step() {
    let canceled = -libc::ECANCELED;
    assert!(matches!(chain_outcome(10, 0, 10), ChainOutcome::Done));
    assert!(matches!(chain_outcome(4, canceled, 10), ChainOutcome::Partial(4)));
    assert!(matches!(
        chain_outcome(-libc::EINTR, canceled, 10),
        ChainOutcome::Retry
    ));
    assert!(matches!(
        chain_outcome(-libc::ENOSPC, canceled, 10),
        ChainOutcome::WriteFailed(e) if e.raw_os_error() == Some(libc::ENOSPC)
    ));
    assert!(matches!(
        chain_outcome(0, canceled, 10),
        ChainOutcome::WriteFailed(e) if e.kind() == io::ErrorKind::WriteZero
    ));
    assert!(matches!(
        chain_outcome(10, -libc::EIO, 10),
        ChainOutcome::SyncFailed(e) if e.raw_os_error() == Some(libc::EIO)
    ));
    assert!(
        matches!(chain_outcome(10, canceled, 10), ChainOutcome::SyncFailed(_)),
        "a cancelled sync after a full write leaves durability unknown"
    );
    assert!(matches!(
        chain_outcome(4, -libc::EIO, 10),
        ChainOutcome::SyncFailed(_)
    ));
}
