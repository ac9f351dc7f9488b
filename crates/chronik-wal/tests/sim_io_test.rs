//! The simulated file system itself (`io::sim::SimIo`), checked against its model: what was synced
//! survives every power cut; unsynced writes and directory entries are sometimes lost, sometimes kept and
//! sometimes torn (a tear keeps a prefix); an atomic write leaves the old or the new file; handles from
//! before a power cut cannot touch the state after it; `crash_after` stops the machine at the chosen
//! operation; the directory lock is exclusive; injected faults fail syncs and writes.
#![allow(clippy::unwrap_used)]

use std::{io, path::Path};

use chronik_wal::io::{
    read_file,
    sim::{SimFaults, SimIo},
    write_file_atomic, OpenMode, WalIo,
};

fn read_all(io: &SimIo, path: &str) -> Vec<u8> {
    read_file(io, Path::new(path), 1 << 20).unwrap()
}

#[test]
fn synced_data_and_entries_survive_every_crash() {
    for seed in 0..200 {
        let io = SimIo::new(seed);
        io.create_dir_all_durable(Path::new("/d")).unwrap();
        let f = io.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        let after = io.crash(seed);
        let got = read_all(&after, "/d/f");
        assert!(got.len() >= 5 && got.len() <= 11, "seed {seed}: {got:?}");
        assert_eq!(&got[..5], b"hello", "seed {seed}");
    }
}

#[test]
fn unsynced_state_is_sometimes_lost_and_sometimes_torn() {
    let (mut lost_entry, mut lost_data, mut torn, mut whole) = (0, 0, 0, 0);
    for seed in 0..400 {
        let io = SimIo::new(seed);
        io.create_dir_all_durable(Path::new("/d")).unwrap();
        let f = io.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(&[7u8; 2000], 0).unwrap();
        let after = io.crash(seed);
        if !after.exists(Path::new("/d/f")).unwrap() {
            lost_entry += 1;
            continue;
        }
        let got = read_all(&after, "/d/f");
        match got.iter().filter(|&&b| b == 7).count() {
            0 => lost_data += 1,
            2000 => whole += 1,
            _ => torn += 1,
        }
        let sevens = got.iter().take_while(|&&b| b == 7).count();
        assert!(
            got[sevens..].iter().all(|&b| b == 0),
            "seed {seed}: a tear leaves a prefix"
        );
    }
    assert!(lost_entry > 0 && lost_data > 0 && torn > 0 && whole > 0);
}

#[test]
fn atomic_write_leaves_old_or_new() {
    for seed in 0..300 {
        let io = SimIo::new(seed);
        io.create_dir_all_durable(Path::new("/d")).unwrap();
        write_file_atomic(&io, Path::new("/d/c"), b"old").unwrap();
        io.crash_after(seed % 6);
        let _ = write_file_atomic(&io, Path::new("/d/c"), b"new contents");
        assert_eq!(io.is_powered_off(), seed % 6 < 5, "seed {seed}");
        let after = io.crash(seed);
        let got = read_all(&after, "/d/c");
        assert!(got == b"old" || got == b"new contents", "seed {seed}: {got:?}");
    }
}

#[test]
fn old_handles_cannot_touch_the_rebooted_state() {
    let io = SimIo::new(1);
    io.create_dir_all_durable(Path::new("/d")).unwrap();
    let f = io.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap();
    f.write_all_at(b"abc", 0).unwrap();
    f.sync_data().unwrap();
    io.sync_dir(Path::new("/d")).unwrap();
    let after = io.crash(1);
    assert!(f.write_all_at(b"zzz", 0).is_err());
    assert!(f.sync_data().is_err());
    assert!(io.remove_file(Path::new("/d/f")).is_err());
    assert_eq!(read_all(&after, "/d/f"), b"abc");
}

#[test]
fn crash_after_fails_the_next_operation_and_every_later_one() {
    let io = SimIo::new(0);
    io.create_dir_all_durable(Path::new("/d")).unwrap();
    io.crash_after(1);
    let f = io.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap();
    assert!(f.write_all_at(b"x", 0).is_err());
    assert!(io.is_powered_off());
    assert!(f.read_at(&mut [0u8; 1], 0).is_err());
}

#[test]
fn lock_is_exclusive_until_dropped() {
    let io = SimIo::new(0);
    io.create_dir_all(Path::new("/w")).unwrap();
    let guard = io.lock_dir(Path::new("/w")).unwrap();
    assert_eq!(
        io.lock_dir(Path::new("/w")).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    drop(guard);
    assert!(io.lock_dir(Path::new("/w")).is_ok());
}

#[test]
fn injected_faults_fail_syncs_and_writes() {
    let io = SimIo::new(3);
    io.create_dir_all_durable(Path::new("/d")).unwrap();
    io.set_faults(SimFaults {
        sync_eio_per_mille: 1000,
        write_enospc_per_mille: 1000,
    });
    let f = io.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap();
    let e = f.write_all_at(&[1u8; 100], 0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    assert!(f.size().unwrap() < 100);
    assert!(f.sync_data().is_err());
    assert!(io.sync_dir(Path::new("/d")).is_err());
}

#[test]
fn pages_of_an_earlier_unsynced_write_land_independently() {
    // A three-page write followed by another: some of its pages may land without the others.
    let mut middle_only = 0;
    for seed in 0..2000 {
        let io = SimIo::new(seed);
        io.create_dir_all_durable(Path::new("/d")).unwrap();
        let f = io.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap();
        f.sync_data().unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(&[7u8; 3 * 4096], 0).unwrap();
        f.write_all_at(&[9u8; 10], 3 * 4096).unwrap();
        let after = io.crash(seed);
        let got = read_all(&after, "/d/f");
        let page = |n: usize| got.get(n * 4096..(n + 1) * 4096);
        // A tear keeps a prefix, so only independent pages can leave the second page without the first.
        let full = |n: usize| page(n).is_some_and(|p| p.iter().all(|&b| b == 7));
        if full(1) && !full(0) {
            middle_only += 1;
        }
    }
    assert!(middle_only > 0, "a later page landed without the first");
}
