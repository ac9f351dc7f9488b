//! What the bench binaries share: an allocation-counting global allocator, environment knobs, statistics
//! and JSON output. Each bench declares `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc;`
//! itself (the attribute belongs to a binary, not to a module).

#![allow(dead_code, reason = "each bench binary uses a subset of these helpers")]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    env, fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocations (and reallocations, which may move) process-wide. Frees are
/// not counted: the question is how often the hot path asks the allocator for memory.
pub struct CountingAlloc;

#[allow(
    unsafe_code,
    reason = "a GlobalAlloc impl is unsafe by definition; it only forwards to System"
)]
// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's guarantees for `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` through this allocator; the caller guarantees `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    ALLOCATED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Allocations and bytes asked for so far, by every thread of the process.
#[derive(Debug, Clone, Copy)]
pub struct AllocCount {
    pub allocations: u64,
    pub bytes: u64,
}

impl AllocCount {
    pub fn now() -> Self {
        Self {
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            bytes: ALLOCATED_BYTES.load(Ordering::Relaxed),
        }
    }

    /// (allocations, bytes) since `earlier`, divided by `ops` (NaN when there were none).
    pub fn per_op_since(self, earlier: AllocCount, ops: u64) -> (f64, f64) {
        let ops = ops as f64;
        (
            (self.allocations - earlier.allocations) as f64 / ops,
            (self.bytes - earlier.bytes) as f64 / ops,
        )
    }
}

pub fn env_flag(name: &str) -> bool {
    env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

pub fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = env::var(name).ok()?;
    let parsed = value.trim().parse();
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")))
}

/// Quick mode: asked for, or run without `--bench` (as under `cargo test --benches`), as criterion does.
pub fn quick_mode() -> bool {
    env_flag("CHRONIK_BENCH_QUICK") || !env::args().any(|a| a == "--bench")
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives two levels below the workspace root")
}

/// Where the runs' directories go: `CHRONIK_BENCH_DIR`, else `target/bench-tmp` in the workspace.
pub fn tmp_root() -> PathBuf {
    env::var_os("CHRONIK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/bench-tmp"))
}

pub fn write_results(name: &str, json: &str) {
    let path = workspace_root().join(format!("target/bench-results/{name}.json"));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create the results directory");
    }
    fs::write(&path, json).expect("write the JSON results");
    println!();
    println!("results written to {}", path.display());
}

/// Nearest-rank percentile of sorted samples (0 when there are none).
pub fn percentile(sorted: &[u32], pct: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// JSON has no NaN or infinity (a ratio over a run with no appends): those become `null`.
pub fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".to_owned()
    }
}
