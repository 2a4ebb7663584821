//! Smoke tests of the `marl-trade` binary.

use std::path::Path;
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marl-trade"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn backtest_small_prints_the_four_baselines() {
    let out = bin(&["backtest", "--config", "configs/small.toml"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("policy") && stdout.contains("sharpe"),
        "{stdout}"
    );
    for name in ["hold", "random", "equal-weight", "spy"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "no row `{name}` in\n{stdout}"
        );
    }
}

#[test]
fn backtest_single_policy_on_train() {
    let out = bin(&[
        "backtest",
        "--config",
        "configs/small.toml",
        "--policy",
        "equal-weight",
        "--period",
        "train",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.lines().any(|l| l.starts_with("equal-weight")));
    assert!(!stdout.lines().any(|l| l.starts_with("hold")));
}

#[test]
fn malformed_config_exits_2_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[env]\nscenarioz = 4\n").unwrap();
    let p = path.to_str().unwrap();
    let out = bin(&["backtest", "--config", p]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(p) && stderr.contains("scenarioz"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // an out-of-range value names its field too
    std::fs::write(&path, "[risk]\nkill_drawdown = 2.0\n").unwrap();
    let out = bin(&["backtest", "--config", p]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(p) && stderr.contains("risk.kill_drawdown"),
        "{stderr}"
    );

    // a missing file
    let out = bin(&["backtest", "--config", "configs/no-such-file.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no-such-file.toml"));
}

/// Without the `cuda` feature, or with it but without a usable GPU, `--backend cuda` fails with the
/// backend's message and exit status 2, never a panic. With a GPU it runs.
#[test]
fn bench_cuda_errors_cleanly_without_feature_or_gpu() {
    let out = bin(&[
        "bench",
        "env",
        "--config",
        "configs/small.toml",
        "--backend",
        "cuda",
        "--envs",
        "2",
        "--symbols",
        "4",
        "--steps",
        "2",
    ]);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if cfg!(feature = "cuda") && out.status.success() {
        assert_eq!(text(&out.stdout).matches("symbol-steps/s").count(), 2);
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // the message is the last line (other modules may log progress to stderr before it)
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("cuda"),
        "{stderr}"
    );
    if !cfg!(feature = "cuda") {
        assert!(last.contains("feature"), "{stderr}");
    }
}

#[test]
fn bench_cpu_tiny_reports_throughput() {
    let out = bin(&[
        "bench",
        "env",
        "--config",
        "configs/small.toml",
        "--backend",
        "cpu",
        "--envs",
        "2",
        "--symbols",
        "4",
        "--steps",
        "8",
        "--threads",
        "1",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(stdout.matches("symbol-steps/s").count(), 2, "{stdout}");
    assert!(
        stdout.contains("machine:") && stdout.contains("rayon threads: 1"),
        "{stdout}"
    );
}

#[test]
fn data_synth_writes_a_parquet_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("sub").join("synth.parquet");
    let out = bin(&[
        "data",
        "synth",
        "--config",
        "configs/small.toml",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(Path::new(&out_path).metadata().unwrap().len() > 1000);
}

#[test]
fn bad_arguments_exit_2() {
    let out = bin(&[
        "backtest",
        "--config",
        "configs/small.toml",
        "--policy",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = bin(&[
        "bench",
        "env",
        "--config",
        "configs/small.toml",
        "--envs",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: "));
}
