//! The reward ablation service (`marl_trade::ablate`, `marl-trade ablate`): the variants of a term
//! selection, bad input, and one CI-sized ablation end to end (`configs/small.toml`, two PPO
//! iterations per run, 2 terms x 2 seeds = 10 runs): the table, its files, resuming (nothing is
//! trained again; an interrupted run continues from its checkpoint), refusal of another
//! configuration or plan in the same directory, and `force`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marl_trade::ablate::{
    self, AblationOptions, AblationPlan, PLAN_FILE, RESULT_FILE, TABLE_CSV, TABLE_JSON, parse_terms,
};
use marl_trade::market::Market;
use marl_trade::reward::RewardConfig;
use marl_trade::run::{CHECKPOINTS_DIR, LATEST_FILE};
use marl_trade::{Config, ErrorKind};

fn small(overrides: &[&str]) -> Config {
    let root = env!("CARGO_MANIFEST_DIR");
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::from_file_with_overrides(format!("{root}/configs/small.toml"), &o).unwrap()
}

fn plan(reward: &RewardConfig, terms: &str, seeds: usize, cap: Option<usize>) -> AblationPlan {
    AblationPlan::new(reward, &parse_terms(terms).unwrap(), seeds, cap).unwrap()
}

#[test]
fn the_variants_of_a_selection() {
    let cases: &[(&str, &[&str])] = &[
        (
            "sharpe,divers",
            &["all", "no-sharpe", "no-divers", "pnl+sharpe", "pnl+divers"],
        ),
        // Order and repeats of the selection do not matter.
        (
            "divers, sharpe,divers",
            &["all", "no-sharpe", "no-divers", "pnl+sharpe", "pnl+divers"],
        ),
        // pnl alone is one variant (not also "pnl+pnl").
        ("pnl", &["all", "no-pnl", "pnl-only"]),
        (
            "pnl,util",
            &["all", "no-pnl", "no-util", "pnl-only", "pnl+util"],
        ),
        (
            "all",
            &[
                "all",
                "no-pnl",
                "no-cost",
                "no-timing",
                "no-sharpe",
                "no-drawdown",
                "no-util",
                "no-divers",
                "pnl-only",
                "pnl+cost",
                "pnl+timing",
                "pnl+sharpe",
                "pnl+drawdown",
                "pnl+util",
                "pnl+divers",
            ],
        ),
    ];
    let reward = RewardConfig::default();
    for (terms, want) in cases {
        let p = plan(&reward, terms, 2, None);
        assert_eq!(p.variant_names(), *want, "--terms {terms}");
        let mut seen = Vec::new();
        for v in &p.variants {
            assert!(!seen.contains(&v.weights), "{terms}: duplicate weights");
            seen.push(v.weights.clone());
        }
    }

    // Weights: a term the config switches off (signal.toml: sharpe, util, divers) is on at its
    // default weight; seeds vary ppo.seed from the config's; nothing else changes.
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = Config::from_file(format!("{root}/configs/signal.toml")).unwrap();
    let p = plan(&cfg.reward, "sharpe,divers", 3, Some(5));
    let w = |name: &str| p.variants.iter().find(|v| v.name == name).unwrap().clone();
    assert_eq!(w("all").weights, [10.0, 5.0, 2.0, 3.0, 5.0, 0.5, 1.0]);
    assert_eq!(w("no-sharpe").weights, [10.0, 5.0, 2.0, 0.0, 5.0, 0.5, 1.0]);
    assert_eq!(
        w("pnl+divers").weights,
        [10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    );
    let rc = p.run_config(&cfg, &w("pnl+divers"), 2);
    assert_eq!((rc.reward.w_pnl, rc.reward.w_cost), (10.0, 0.0));
    assert_eq!((rc.reward.w_divers, rc.reward.w_sharpe), (1.0, 0.0));
    assert_eq!(rc.ppo.seed, cfg.ppo.seed + 2);
    assert_eq!((rc.data, rc.agent, rc.env), (cfg.data, cfg.agent, cfg.env));
    assert_eq!(p.n_runs(), 15);
}

#[test]
fn bad_input_is_a_clear_error() {
    let e = parse_terms("sharpe,sharp").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let msg = e.to_string();
    assert!(msg.contains("`sharp`") && msg.contains("divers"), "{msg}");
    assert!(parse_terms("").is_err());
    assert!(parse_terms("sharpe,").is_err());

    let r = RewardConfig::default();
    let t = parse_terms("sharpe").unwrap();
    let e = AblationPlan::new(&r, &t, 0, None).unwrap_err();
    assert!(e.to_string().contains("--seeds"), "{e}");
    let e = AblationPlan::new(&r, &t, 1, Some(0)).unwrap_err();
    assert!(e.to_string().contains("--iterations"), "{e}");
    assert!(AblationPlan::new(&r, &[], 1, None).is_err());

    // A directory that holds variant directories but no plan is not taken over silently.
    let cfg = small(&["ppo.total_timesteps=128"]);
    let market = Market::load(&cfg.data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("all")).unwrap();
    let p = plan(&cfg.reward, "sharpe", 1, None);
    let e =
        ablate::ablate(&cfg, &market, &p, &AblationOptions::new(dir.path()), |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunExists, "{e}");
}

/// Every file under the runs' checkpoint directories, with its bytes.
fn checkpoint_files(out: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(d: &Path, inside: bool, acc: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let inside = inside || p.file_name().is_some_and(|n| n == CHECKPOINTS_DIR);
            if p.is_dir() {
                walk(&p, inside, acc);
            } else if inside {
                acc.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut acc = BTreeMap::new();
    walk(out, false, &mut acc);
    acc
}

#[test]
fn an_ablation_runs_resumes_and_refuses_another_plan() {
    // 4 scenarios x 32 steps = 128 scenario steps per iteration: 2 iterations per run.
    let cfg = small(&["ppo.total_timesteps=256"]);
    let market = Market::load(&cfg.data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("abl");
    let p = plan(&cfg.reward, "sharpe,divers", 2, None);
    let opts = AblationOptions {
        save_every: 1,
        ..AblationOptions::new(&out)
    };
    let mut lines = Vec::new();
    let r = ablate::ablate(&cfg, &market, &p, &opts, |o| lines.push(o.line())).unwrap();
    assert_eq!(
        (r.trained, r.resumed, r.evaluated, r.skipped),
        (10, 0, 10, 0)
    );
    assert_eq!(r.iterations_run, 20);
    assert_eq!(lines.len(), 10);

    // One row per variant, n = seeds in every column.
    let t = &r.table;
    assert_eq!(
        t.rows
            .iter()
            .map(|r| r.variant.as_str())
            .collect::<Vec<_>>(),
        p.variant_names()
    );
    assert_eq!((t.runs_done, t.runs_total, t.capped), (10, 10, false));
    for row in &t.rows {
        assert_eq!(row.n, 2, "{}", row.variant);
        for key in [
            "total_return",
            "sharpe",
            "max_drawdown",
            "turnover",
            "costs_paid",
        ] {
            let s = row.stat(key).unwrap();
            assert_eq!(s.n, 2, "{} {key}", row.variant);
            assert!(
                s.mean.is_finite() && s.std >= 0.0,
                "{} {key}: {s:?}",
                row.variant
            );
        }
        assert_eq!(row.stat("sharpe_z_vs_equal_weight").unwrap().n, 2);
        assert_eq!(row.stat("reward_share.pnl").unwrap().n, 2);
    }
    // A dropped term has no share.
    let no_sharpe = t.row("no-sharpe").unwrap();
    assert_eq!(no_sharpe.stat("reward_share.sharpe").unwrap().mean, 0.0);
    let text = t.text();
    for v in p.variant_names() {
        assert!(text.lines().any(|l| l.starts_with(v)), "{v}:\n{text}");
    }

    // The files: JSON and CSV parse, one row per variant.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(TABLE_JSON)).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["n"] == 2));
    assert_eq!(
        rows[0]["metrics"].as_array().unwrap().len(),
        ablate::COLUMNS.len()
    );
    let csv = std::fs::read_to_string(out.join(TABLE_CSV)).unwrap();
    let lines_csv: Vec<&str> = csv.lines().collect();
    assert_eq!(lines_csv.len(), 6, "{csv}");
    let width = lines_csv[0].split(',').count();
    assert!(lines_csv[0].starts_with("variant,n,total_return_mean,"));
    for (l, v) in lines_csv[1..].iter().zip(p.variant_names()) {
        assert_eq!(l.split(',').count(), width, "{l}");
        assert!(l.starts_with(&format!("{v},2,")), "{l}");
    }
    assert!(out.join(PLAN_FILE).is_file());
    let run0 = AblationPlan::run_dir(&out, "all", 0);
    assert!(run0.join(RESULT_FILE).is_file());
    assert!(marl_trade::run::latest_checkpoint(&run0).is_ok());

    // Again: nothing is trained or evaluated, no checkpoint file changes, same table.
    let before = checkpoint_files(&out);
    assert!(before.len() > 10);
    let again = ablate::ablate(&cfg, &market, &p, &opts, |_| {}).unwrap();
    assert_eq!(
        (again.trained, again.resumed, again.evaluated, again.skipped),
        (0, 0, 0, 10)
    );
    assert_eq!(again.iterations_run, 0);
    assert_eq!(checkpoint_files(&out), before);
    assert_eq!(again.table, r.table);

    // Interrupted: one run lost its last checkpoint and result (it resumes from iteration 1),
    // another only its result (it is evaluated again).
    let cut = AblationPlan::run_dir(&out, "no-divers", 1);
    let ck = cut.join(CHECKPOINTS_DIR);
    std::fs::remove_dir_all(ck.join("iter-000002")).unwrap();
    std::fs::write(ck.join(LATEST_FILE), "iter-000001\n").unwrap();
    std::fs::remove_file(cut.join(RESULT_FILE)).unwrap();
    std::fs::remove_file(run0.join(RESULT_FILE)).unwrap();
    let resumed = ablate::ablate(&cfg, &market, &p, &opts, |_| {}).unwrap();
    assert_eq!(
        (
            resumed.trained,
            resumed.resumed,
            resumed.evaluated,
            resumed.skipped
        ),
        (0, 1, 2, 8)
    );
    assert_eq!(resumed.iterations_run, 1);
    assert!(cut.join(RESULT_FILE).is_file());
    assert_eq!(resumed.table.rows.len(), 5);
    assert!(resumed.table.rows.iter().all(|r| r.n == 2));

    // Another configuration, or another plan, into the same directory is refused ...
    let other = small(&["ppo.total_timesteps=256", "ppo.learning_rate=0.002"]);
    let e = ablate::ablate(&other, &market, &p, &opts, |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunMismatch, "{e}");
    assert!(e.to_string().contains("ppo.learning_rate"), "{e}");
    let p3 = plan(&cfg.reward, "sharpe,divers", 3, None);
    let e = ablate::ablate(&cfg, &market, &p3, &opts, |_| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RunMismatch, "{e}");
    assert!(e.to_string().contains("seed count"), "{e}");

    // ... unless forced: the old ablation is replaced (a smaller one, one iteration per run).
    let small_plan = plan(&other.reward, "pnl", 1, Some(1));
    let forced = AblationOptions {
        force: true,
        ..opts.clone()
    };
    let f = ablate::ablate(&other, &market, &small_plan, &forced, |_| {}).unwrap();
    assert_eq!((f.trained, f.skipped), (3, 0));
    assert!(!out.join("no-sharpe").exists());
    assert_eq!(f.table.rows.len(), 3);
    assert!(f.table.capped);
    assert!(
        f.table.text().contains("capped at 1 of 2"),
        "{}",
        f.table.text()
    );
    let plan_text = std::fs::read_to_string(out.join(PLAN_FILE)).unwrap();
    assert!(plan_text.contains("pnl-only"), "{plan_text}");
}
