//! Times `ckvault::inspect::inspect_seekable` on archives given as arguments:
//! `cargo run --release --example inspect_time -- A.tar [B.tar ...]`.

use std::time::Instant;

use ckvault::inspect::{Limits, inspect_seekable, render_table};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limits = Limits::default();
    for path in std::env::args().skip(1) {
        let len = std::fs::metadata(&path)?.len();
        // The first run (page cache as found), then the best of ten more.
        let mut best = f64::MAX;
        let mut first = 0.0;
        let mut last = None;
        for run in 0..11 {
            let file = std::fs::File::open(&path)?;
            let t = Instant::now();
            let r = inspect_seekable(file, &limits);
            let took = t.elapsed().as_secs_f64();
            if run == 0 {
                first = took;
            } else {
                best = best.min(took);
            }
            last = Some(r);
        }
        match last {
            Some(Ok(i)) => {
                println!(
                    "{path}: {len} bytes, inspect_seekable first run {:.3} ms, best of 10 more {:.3} ms",
                    first * 1e3,
                    best * 1e3
                );
                print!("{}", render_table(&i));
            }
            Some(Err(e)) => println!("{path}: rejected ({}): {e}", e.code()),
            None => {}
        }
    }
    Ok(())
}
