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
    if cfg!(cuda_env) && out.status.success() {
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
    if !cfg!(cuda_env) {
        assert!(last.contains("feature"), "{stderr}");
    }
}

/// `--device`: a bad name is a usage error; `cuda` in a build without the `gpu` feature (or a
/// machine without a GPU) is a clear error before anything is written.
#[test]
fn device_flag_refuses_bad_names_and_missing_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let o = out_dir.to_str().unwrap();
    let base = [
        "train",
        "--config",
        "configs/small.toml",
        "--out",
        o,
        "--iterations",
        "1",
    ];
    let out = bin(&[&base[..], &["--device", "tpu"]].concat());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("expected `cpu`, `cuda` or `cuda:<ordinal>`"),
        "{stderr}"
    );
    let out = bin(&[&base[..], &["--device", "cuda:0", "--quiet"]].concat());
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if cfg!(feature = "gpu") && out.status.success() {
        return; // a GPU machine: it trained there
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("cuda"),
        "{stderr}"
    );
    if !cfg!(feature = "gpu") {
        assert!(last.contains("--features gpu"), "{stderr}");
    }
    assert!(!out_dir.join("config.toml").exists(), "a run was written");
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
    // One line per measured loop: step, step + dyn_obs, step + gather_obs (f32 and f16).
    for name in [
        "step:",
        "step + dyn_obs:",
        "step + gather_obs:",
        "step + gather_obs_f16:",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("symbol-steps/s")),
            "{name}\n{stdout}"
        );
    }
    assert_eq!(stdout.matches("symbol-steps/s").count(), 4, "{stdout}");
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

/// Metrics lines without the wall-clock fields and the env's telemetry (not restored on resume).
fn metrics_without_clock(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("sps");
            o.remove("agent_sps");
            o.remove("env");
            o.remove("timing");
            // The correlation graphs cached before a cut are not in a resumed run's cache (a
            // cache, not state): its size differs, the results do not.
            if let Some(p) = o.get_mut("policy").and_then(|p| p.as_object_mut()) {
                p.remove("cache.bytes");
            }
            v
        })
        .collect()
}

/// `train` writes a run directory; a run cut after one iteration and resumed equals an
/// uninterrupted one; a second fresh `train` into the same directory is refused; `eval` plays the
/// checkpoint next to the baselines; a checkpoint of the wrong shape is refused by name.
#[test]
fn train_resume_eval_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let cut = dir.path().join("cut");
    let sets = ["--set", "ppo.total_timesteps=256", "--quiet"];
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--config", "configs/small.toml", "--out"];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(&sets);
        args.extend_from_slice(extra);
        bin(&args)
    };

    let out = train(&full, &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("symbol transitions/s"), "{stdout}");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "metrics.csv",
        "checkpoints/latest",
    ] {
        assert!(full.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(full.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("iteration,global_step,"), "{csv}");
    assert!(
        csv.lines().next().unwrap().ends_with("reward_share.divers"),
        "{csv}"
    );
    // Episodes (64 steps) end in iteration 2 (2 x 32 steps): its reward terms are logged.
    let jsonl = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    let it2: serde_json::Value = serde_json::from_str(jsonl.lines().nth(1).unwrap()).unwrap();
    assert!(it2["env"]["reward.pnl"].is_number(), "{it2}");
    assert!(
        it2["env"]["reward_share.util"].as_f64().unwrap() >= 0.0,
        "{it2}"
    );
    let latest = std::fs::read_to_string(full.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "iter-000002");

    // Refused: a fresh run into an existing run directory.
    let again = train(&full, &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already holds a run"));
    // ... unless --force, which replaces it with the same (deterministic) run.
    let before = metrics_without_clock(&full.join("metrics.jsonl"));
    let forced = train(&full, &["--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_eq!(metrics_without_clock(&full.join("metrics.jsonl")), before);

    // One iteration, then resume to the end: the same metrics as the uninterrupted run.
    let first = train(&cut, &["--iterations", "1"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let resumed = train(&cut, &["--resume"]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert_eq!(
        metrics_without_clock(&cut.join("metrics.jsonl")),
        metrics_without_clock(&full.join("metrics.jsonl"))
    );
    // The turnover (env telemetry, logged every iteration) is restored exactly on resume.
    let turnover = |p: &Path| -> Vec<f64> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["env"]["turnover"].as_f64().expect("turnover logged")
            })
            .collect()
    };
    let full_turnover = turnover(&full.join("metrics.jsonl"));
    assert_eq!(full_turnover.len(), 2);
    assert!(
        full_turnover.iter().all(|t| t.is_finite() && *t >= 0.0),
        "{full_turnover:?}"
    );
    assert_eq!(turnover(&cut.join("metrics.jsonl")), full_turnover);
    assert_eq!(
        std::fs::read(cut.join("checkpoints/iter-000002/model.safetensors")).unwrap(),
        std::fs::read(full.join("checkpoints/iter-000002/model.safetensors")).unwrap()
    );
    // Resuming with another configuration is refused.
    let other = train(&cut, &["--resume", "--set", "ppo.learning_rate=0.5"]);
    assert_eq!(other.status.code(), Some(2));
    assert!(text(&other.stderr).contains("configuration differs"));

    // eval: the policy row, the baselines and the paired comparisons; JSON beside.
    let json = dir.path().join("eval.json");
    let ev = bin(&[
        "eval",
        "--checkpoint",
        full.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = text(&ev.stdout);
    assert!(ev.status.success(), "{stdout}\n{}", text(&ev.stderr));
    for name in ["ppo", "hold", "random", "equal-weight", "spy"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name}:\n{stdout}"
        );
    }
    assert!(stdout.contains("ppo vs spy: Sharpe"), "{stdout}");
    assert!(stdout.contains("decision IC: corr("), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["comparisons"].as_array().unwrap().len(), 4);
    assert!(doc["decision_ic"]["n"].as_u64().unwrap() > 0, "{doc}");
    // Deterministic: the same table twice (the greedy policy, and the sampled one with a seed).
    let again = bin(&["eval", "--checkpoint", full.to_str().unwrap()]);
    assert_eq!(text(&again.stdout), stdout);
    let s1 = bin(&["eval", "--checkpoint", full.to_str().unwrap(), "--sample"]);
    let s2 = bin(&["eval", "--checkpoint", full.to_str().unwrap(), "--sample"]);
    assert!(s1.status.success() && text(&s1.stdout).contains("ppo-sampled"));
    assert_eq!(text(&s1.stdout), text(&s2.stdout));

    // A checkpoint whose stored agent does not match its tensors: refused, naming the tensor.
    let ck = full.join("checkpoints/iter-000002");
    let state_path = ck.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["policy"]["config"]["head_hidden"] = serde_json::json!(12);
    std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();
    let bad = bin(&["eval", "--checkpoint", ck.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    let err = text(&bad.stderr);
    assert!(err.contains("actor") && err.contains("16"), "{err}");

    // Not a checkpoint at all.
    let none = bin(&["eval", "--checkpoint", dir.path().to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(text(&none.stderr).contains("not a checkpoint"));
}

#[test]
fn bench_policy_reports_per_scenario_times() {
    let out = bin(&[
        "bench",
        "policy",
        "--config",
        "configs/small.toml",
        "--scenarios",
        "4",
        "--reps",
        "1",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for case in ["1 scenario", "N scenarios, one bar", "N scenarios, N bars"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("{case}:\n{stdout}"));
        assert!(
            line.contains("ms per scenario") && line.contains("symbol-forwards/s"),
            "{line}"
        );
    }
}

#[test]
fn ablate_refuses_bad_terms_and_seed_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("abl");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (&["--terms", "sharpe,sharp"][..], "`sharp`"),
        (&["--seeds", "0"][..], "--seeds"),
        (&["--iterations", "0"][..], "--iterations"),
    ] {
        let mut all = vec!["ablate", "--config", "configs/small.toml", "--out", o];
        all.extend_from_slice(args);
        let res = bin(&all);
        let stderr = text(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!out.exists(), "nothing is written for bad input");
}

/// `bench sl` times the three supervised models; `sl cache` with a missing models directory and
/// `train` with a cache file that does not exist fail with the file named and exit status 2.
#[test]
fn sl_commands_bench_and_clean_errors() {
    let out = bin(&[
        "bench",
        "sl",
        "--config",
        "configs/small.toml",
        "--batch",
        "16",
        "--reps",
        "1",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for model in ["mlp", "lstm", "gru"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(model) && l.contains("us/sample")),
            "{model} missing:\n{stdout}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-models");
    let out = bin(&[
        "sl",
        "cache",
        "--config",
        "configs/small.toml",
        "--models",
        missing.to_str().unwrap(),
        "--out",
        dir.path().join("p.slc").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-models"),
        "{}",
        text(&out.stderr)
    );
    let out = bin(&[
        "backtest",
        "--config",
        "configs/small.toml",
        "--set",
        "env.sl_cache=no-such-cache.slc",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-cache.slc"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn validation_commands_refuse_bad_arguments_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("wf");
    let o = out_dir.to_str().unwrap();
    // configs/small.toml has 1200 bars.
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "walkforward",
                "--config",
                "configs/small.toml",
                "--train-bars",
                "1100",
                "--test-bars",
                "200",
                "--out",
                o,
            ],
            "--train-bars 1100 + --embargo 0 + --test-bars 200 + 1 = 1301 bars, but the data has 1200",
        ),
        (
            &[
                "walkforward",
                "--config",
                "configs/small.toml",
                "--train-bars",
                "500",
                "--test-bars",
                "200",
                "--step",
                "100",
                "--out",
                o,
            ],
            "--step 100 is smaller than --test-bars 200",
        ),
        (
            &["stress", "--checkpoint", dir.path().to_str().unwrap()],
            "not a checkpoint",
        ),
        (
            &["report", dir.path().to_str().unwrap(), "--out", o],
            "not a checkpoint",
        ),
    ];
    for (args, want) in cases {
        let out = bin(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    // Nothing was written for the refused walk-forwards.
    assert!(!out_dir.join("walkforward.toml").exists());
}
