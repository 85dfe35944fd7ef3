//! A criguard that nobody scrapes must not grow: the recorder keeps each histogram sample until
//! it is folded into its buckets, and criguard folds them by itself, scrape or no scrape.
//!
//! Its own test binary: it counts every byte the process holds (a global allocator) and installs
//! the process-wide recorder.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criguard::telemetry::metrics::{self, REQUEST_DURATION, UPKEEP_INTERVAL};

struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

#[test]
fn recorded_call_durations_are_folded_without_a_scrape() {
    let _handle = metrics::install().expect("the recorder installs");
    let duration =
        ::metrics::histogram!(REQUEST_DURATION, "service" => "runtime", "method" => "Version");
    duration.record(0.001);
    let before = held();

    // What criguard records for 200 000 calls: 4 s at a busy node's rate.
    for _ in 0..200_000 {
        duration.record(0.001);
    }
    let grown = held() - before;
    assert!(
        grown > 1_000_000,
        "the samples should be held until folded: {grown} bytes"
    );

    // Calls go on at a trickle (the recorder frees folded samples as later calls pass by).
    let deadline = Instant::now() + UPKEEP_INTERVAL * 5;
    loop {
        let left = held() - before;
        if left < 64 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} bytes of samples still held after {:?} without a scrape",
            UPKEEP_INTERVAL * 5
        );
        duration.record(0.001);
        std::thread::sleep(Duration::from_millis(1));
    }
}
