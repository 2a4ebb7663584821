//! `mt-tools` end to end: `inspect` / `convert` on the real samples in ../shared/data (CI has them
//! beside the checkout; a missing file fails the test), `reward-signals` on the synthetic runs of
//! tests/data/reward-signals.

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

// --- reward-signals: the synthetic runs of tests/data/reward-signals (see its README.md) ---

const PNG_SIGNATURE: &[u8] = &[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// A copy of the synthetic run `case` in a temporary directory (the analyzer writes its PNG into
/// the run directory by default).
fn synthetic_run(case: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reward-signals")
        .join(case);
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(case);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    (tmp, dst)
}

fn reward_signals(run: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mt-tools"))
        .arg("reward-signals")
        .arg(run)
        .args(extra)
        .output()
        .unwrap()
}

fn assert_png(path: &std::path::Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(PNG_SIGNATURE),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{} is suspiciously small",
        path.display()
    );
}

/// Each case's exit code, and the alarm line it must print (None: "no alarm").
#[test]
fn reward_signals_flags_planted_problems_and_passes_a_clean_run() {
    let cases: [(&str, i32, Option<&str>); 4] = [
        ("clean", 0, None),
        ("dominance", 1, Some("ALARM dominance sharpe")),
        ("collapse", 1, Some("ALARM collapse timing")),
        ("zero-weight", 0, None),
    ];
    for (case, code, alarm) in cases {
        let (_tmp, run) = synthetic_run(case);
        let out = reward_signals(&run, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{case}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        match alarm {
            Some(a) => {
                assert!(stdout.contains(a), "{case}: `{a}` missing:\n{stdout}");
                assert_eq!(stdout.matches("ALARM ").count(), 1, "{case}:\n{stdout}");
            }
            None => assert!(stdout.contains("no alarm"), "{case}:\n{stdout}"),
        }
        // the table: a header and one row per term
        assert!(stdout.contains("mean share"), "{stdout}");
        for term in marl_trade::reward::COMPONENT_NAMES {
            assert!(
                stdout.lines().any(|l| l.starts_with(term)),
                "{term}:\n{stdout}"
            );
        }
        assert_png(&run.join("reward-signals.png"));
    }
}

#[test]
fn reward_signals_options_json_and_png() {
    let (tmp, run) = synthetic_run("dominance");
    let png = tmp.path().join("chart.png");
    let json = tmp.path().join("report.json");
    // sharpe's share is about 0.8: under a 0.9 threshold the run is clean
    let out = reward_signals(
        &run,
        &[
            "--dominance",
            "0.9",
            "--window",
            "5",
            "--png",
            png.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_png(&png);
    assert!(!run.join("reward-signals.png").exists());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["thresholds"]["dominance"], 0.9);
    assert_eq!(report["window_points"], 5);
    assert_eq!(report["alarms"].as_array().unwrap().len(), 0);
    assert_eq!(report["terms"].as_array().unwrap().len(), 7);
    assert_eq!(report["iterations"].as_array().unwrap().len(), 10);
    assert_eq!(report["turnover"].as_array().unwrap().len(), 20);
    // the same with the default threshold: the alarm is in the JSON too
    let out = reward_signals(&run, &["--json", json.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let alarms = report["alarms"].as_array().unwrap();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0]["kind"], "dominance");
    assert_eq!(alarms[0]["term"], "sharpe");
}

#[test]
fn reward_signals_errors_exit_2_and_name_the_problem() {
    let err = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    // a malformed line: the file and the line
    let (_tmp, run) = synthetic_run("malformed");
    let out = reward_signals(&run, &[]);
    assert_eq!(out.status.code(), Some(2));
    let e = err(&out);
    assert!(
        e.starts_with("error:") && e.contains("metrics.jsonl") && e.contains("line 3"),
        "{e}"
    );
    assert!(!run.join("reward-signals.png").exists());
    // no run directory
    let out = reward_signals(&run.join("nope"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(err(&out).contains("does not exist"), "{}", err(&out));
    // a directory without metrics.jsonl
    let empty = tempfile::tempdir().unwrap();
    let out = reward_signals(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(err(&out).contains("metrics.jsonl"), "{}", err(&out));
    // iterations, but none with reward terms
    let first = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/reward-signals/clean/metrics.jsonl"),
    )
    .unwrap();
    let first = first.lines().next().unwrap();
    std::fs::write(empty.path().join("metrics.jsonl"), format!("{first}\n")).unwrap();
    let out = reward_signals(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(err(&out).contains("nothing to analyse"), "{}", err(&out));
    // thresholds out of their domain
    let (_tmp, run) = synthetic_run("clean");
    let out = reward_signals(&run, &["--window", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(err(&out).contains("window"), "{}", err(&out));
    let out = reward_signals(&run, &["--dominance", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(err(&out).contains("dominance"), "{}", err(&out));
}
