//! `mt-tools` end to end on the real samples in ../shared/data (CI has them beside the checkout;
//! a missing file fails the test).

use std::process::Command;

fn shared(name: &str) -> String {
    let p = format!("{}/../../shared/data/{name}", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&p).exists(),
        "{p} is missing: CI must lay ../shared beside the checkout"
    );
    p
}

#[test]
fn inspect_and_convert_real_data() {
    let exe = env!("CARGO_BIN_EXE_mt-tools");
    let (stocks, sp500) = (shared("stocks.csv.gz"), shared("sp500.csv.gz"));
    let out = Command::new(exe)
        .args(["inspect", &stocks, &sp500, "--benchmark", "sp500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for sym in ["AAPL", "IBM", "MSFT", "GOOG", "FB", "sp500"] {
        assert!(text.contains(sym), "{sym} missing from:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("real.parquet");
    let out = Command::new(exe)
        .args([
            "convert",
            &stocks,
            &sp500,
            "--benchmark",
            "sp500",
            "--out",
            pq.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the converted file loads back through the same tool
    let out = Command::new(exe)
        .args(["inspect", pq.to_str().unwrap(), "--benchmark", "sp500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        text.lines().next()
    );
}

#[test]
fn missing_benchmark_is_a_clear_error() {
    let exe = env!("CARGO_BIN_EXE_mt-tools");
    let out = Command::new(exe)
        .args(["inspect", &shared("stocks.csv.gz"), "--benchmark", "SPY"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error:") && err.contains("stocks.csv.gz") && err.contains("SPY"),
        "{err}"
    );
}
