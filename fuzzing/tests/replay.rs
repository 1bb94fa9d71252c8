//! Every file of `fuzz/corpus/<target>/` (the seeds, and every input the fuzzers kept or
//! found) replayed through its target on stable, as a normal test: no panic, and no input
//! makes the decoders allocate more than [`PEAK_LIMIT`] at once (measured by a counting
//! allocator). One test, so that nothing else allocates while an input is measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most memory one input may hold at once beyond what was live before it (the frame limit is
/// 1 MiB; a DKG run holds a few hundred KiB).
const PEAK_LIMIT: usize = 32 << 20;

#[test]
fn every_corpus_file_replays_without_panic_and_within_the_allocation_bound() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut report = vec![];
    // Warm the fixtures up (dealt once per process) so they are not counted against an input.
    conclave_fuzzing::participant(&[]);
    for (name, target) in conclave_fuzzing::TARGETS {
        let dir = corpus.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has a corpus)", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: empty corpus");
        let mut worst = (0usize, String::new());
        for file in &files {
            let data = std::fs::read(file).expect("a corpus file");
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(|| target(&data));
            let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
            assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
            assert!(
                peak <= PEAK_LIMIT,
                "{name}: {} allocated {peak} bytes at once (limit {PEAK_LIMIT})",
                file.display()
            );
            if peak > worst.0 {
                worst = (peak, file.display().to_string());
            }
        }
        report.push(format!(
            "{name:>20}: {:>5} inputs, largest peak {:>8} bytes",
            files.len(),
            worst.0
        ));
    }
    println!("{}", report.join("\n"));
}
