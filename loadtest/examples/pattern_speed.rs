//! Measures the pattern fill and check speed (must stay well above the relay's rate).
use std::time::Instant;
use streamhost_loadtest::pattern;

fn main() {
    let mut buf = vec![0u8; 1 << 20];
    let rounds = 2048u64;
    let t = Instant::now();
    for r in 0..rounds {
        pattern::fill(7, r << 20, &mut buf);
    }
    let fill = t.elapsed();
    let t = Instant::now();
    for r in 0..rounds {
        pattern::fill(7, r << 20, &mut buf);
        pattern::check(7, r << 20, &buf).expect("pattern");
    }
    let both = t.elapsed() - fill;
    let gib = rounds as f64 / 1024.0;
    println!(
        "fill {:.1} GiB/s, check {:.1} GiB/s",
        gib / fill.as_secs_f64(),
        gib / both.as_secs_f64()
    );
}
