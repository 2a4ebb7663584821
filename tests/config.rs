//! The configuration's `[agent]` and `[ppo]` sections: derived fields, section defaults, `--set`
//! overrides, and errors that name the field.

use std::io::Write;

use marl_trade::Config;

fn parse(text: &str) -> marl_trade::Result<Config> {
    Config::from_toml_str(text, "test.toml")
}

#[test]
fn derived_sizes_are_not_file_fields() {
    // The PPO batch follows env.scenarios: 16 scenarios x 128 steps, 4 minibatches.
    let c = parse("[env]\nscenarios = 16\n[data.synthetic]\nsymbols = 9\n").unwrap();
    assert_eq!(c.ppo.batch_size(c.env.scenarios), 16 * 128);
    // A file that still names a derived size (an older config or checkpoint) is refused with an
    // error naming the field and saying where its value comes from, consistent or not.
    for (text, field) in [
        (
            "[env]\nscenarios = 16\n[ppo]\nnum_envs = 16\n",
            "ppo.num_envs",
        ),
        (
            "[env]\nscenarios = 16\n[ppo]\nnum_envs = 4\n",
            "ppo.num_envs",
        ),
        (
            "[data.synthetic]\nsymbols = 9\n[agent]\nsymbols = 8\n",
            "agent.symbols",
        ),
        ("[agent]\ndyn_obs = 26\n", "agent.dyn_obs"),
        ("[agent]\nnum_actions = 7\n", "agent.num_actions"),
        ("[agent.encoder]\nwindow = 24\n", "agent.encoder.window"),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(e.kind(), marl_trade::ErrorKind::Config);
        assert_eq!(e.field(), Some(field), "{e}");
        let e = e.to_string();
        assert!(
            e.contains(field) && e.contains("test.toml") && e.contains("derived"),
            "{e}"
        );
    }
    // A batch that the minibatches do not divide, across sections: names the field.
    let e = parse("[env]\nscenarios = 3\n[ppo]\nnum_steps = 5\nnum_minibatches = 4\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ppo.num_minibatches") && e.contains("15"), "{e}");
}

#[test]
fn a_partial_section_keeps_the_configuration_defaults() {
    // `hold_prior` and `norm_reward` differ between Config::default() and their section types'
    // own defaults; a section that names other fields must not reset them.
    let d = Config::default();
    assert!(d.agent.hold_prior != 0.0 && d.ppo.norm_reward);
    let c = parse("[agent]\nhead_hidden = 8\n[ppo]\nnum_steps = 16\n").unwrap();
    assert_eq!(c.agent.hold_prior, d.agent.hold_prior);
    assert!(c.ppo.norm_reward);
    assert_eq!((c.agent.head_hidden, c.ppo.num_steps), (8, 16));
    assert_eq!(c.agent.encoder, d.agent.encoder);
}

#[test]
fn bad_agent_and_ppo_values_are_errors_naming_the_field() {
    for (text, field) in [
        ("[ppo]\nnum_minibatches = 3\n", "ppo.num_minibatches"),
        ("[ppo]\nlearning_rate = -1.0\n", "ppo.learning_rate"),
        ("[ppo]\nreward_clip = nan\n", "ppo.reward_clip"),
        ("[agent]\ndyn_obs = 10\n", "agent.dyn_obs"),
        ("[agent.encoder]\nwindow = 12\n", "agent.encoder.window"),
        ("[agent]\nhold_prior = inf\n", "agent.hold_prior"),
        ("[agent.encoder.cnn]\nkernel = 4\n", "cnn.kernel"),
        ("[ppo]\nnum_envz = 3\n", "num_envz"),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(field), "{text:?}: {e}");
    }
}

#[test]
fn overrides_apply_like_lines_of_the_file() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        "[env]\nscenarios = 4\n[ppo]\nnum_steps = 8\ntotal_timesteps = 64"
    )
    .unwrap();
    let sets = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let c = Config::from_file_with_overrides(
        f.path(),
        &sets(&[
            "ppo.num_steps=16",
            "data.synthetic.signal_strength = 0.5",
            "data.synthetic.signal_kind=momentum",
            "agent.encoder.lstm.enabled=false",
        ]),
    )
    .unwrap();
    assert_eq!(c.ppo.num_steps, 16);
    assert_eq!(c.ppo.total_timesteps, 64);
    assert_eq!(c.data.synthetic.signal_strength, 0.5);
    assert!(!c.agent.encoder.lstm.enabled);
    // An override is checked like the file: unknown field, bad value, malformed item.
    for (o, want) in [
        ("ppo.num_stepz=3", "num_stepz"),
        ("ppo.num_steps=0", "ppo.num_steps"),
        ("ppo.num_steps", "section.field=value"),
        ("env.scenarios.x=1", "not a section"),
    ] {
        let e = Config::from_file_with_overrides(f.path(), &sets(&[o]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{o}: {e}");
    }
}

#[test]
fn bad_sl_values_are_errors_naming_the_field() {
    for (text, field) in [
        ("[sl]\nhorizon = 0\n", "sl.horizon"),
        ("[sl]\ndead_zone = -1.0\n", "sl.dead_zone"),
        ("[sl]\nlstm_hidden = 0\n", "sl.lstm_hidden"),
        ("[sl]\nval_fraction = 0.7\n", "sl.val_fraction"),
        ("[sl]\nlearning_rate = 0.0\n", "sl.learning_rate"),
        ("[sl]\nmodels = \" \"\n", "sl.models"),
        ("[env]\nsl_cache = \"\"\n", "env.sl_cache"),
        ("[sl]\nhidden = 3\n", "hidden"),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(field), "{text:?}: {e}");
    }
    // A cache file that does not exist, with the models named: an error naming the field.
    let e = parse("[env]\nsl_cache = \"/nonexistent/p.slc\"\n[sl]\nmodels = \"/nonexistent\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("env.sl_cache") && e.contains("p.slc"), "{e}");
}
