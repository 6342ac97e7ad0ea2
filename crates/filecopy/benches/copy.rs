//! Filecopy throughput, pack → pipe → unpack in one process (no qrexec
//! transport yet): one 1 GiB file and 10,000 small files. Prints figures.
//!
//!     cargo bench -p bulkhead-filecopy --bench copy

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use bulkhead_filecopy::{pack, unpack, Limits};

fn run(label: &str, src: &Path, bytes: u64) {
    let dst = tempfile::tempdir_in(src.parent().unwrap()).unwrap();
    let (r, mut w) = std::io::pipe().unwrap();
    let t = Instant::now();
    let srcp = src.to_path_buf();
    let sender = std::thread::spawn(move || {
        let mut bw = std::io::BufWriter::with_capacity(1 << 20, &mut w);
        let crc = pack(&[srcp.as_path()], &mut bw).unwrap();
        bw.flush().unwrap();
        crc
    });
    let stats = unpack(
        std::io::BufReader::with_capacity(1 << 20, r),
        dst.path(),
        Limits::default(),
    )
    .unwrap();
    let crc = sender.join().unwrap();
    let el = t.elapsed();
    assert_eq!(crc, stats.crc32);
    println!(
        "{label:<34} {:>8.1} MB/s  {:>8.0} files/s  ({} files, {:.2?}, includes syncfs)",
        bytes as f64 / el.as_secs_f64() / 1e6,
        stats.files as f64 / el.as_secs_f64(),
        stats.files,
        el
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let work =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let big = work.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(fs::File::create(&big).unwrap());
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..1024 {
            f.write_all(&block).unwrap();
        }
    }
    run("one 1 GiB file", &big, 1 << 30);
    let small = work.path().join("small");
    fs::create_dir(&small).unwrap();
    for d in 0..100 {
        let dir = small.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for i in 0..100 {
            fs::write(dir.join(format!("f{i}")), vec![b'x'; 1000 + i]).unwrap();
        }
    }
    run("10,000 small files (~1 KB)", &small, 10_000 * 1050);
}
