//! `arbor export`: a run's checkpoint as a Hugging Face model directory that other tools load
//! (`config.json` in the Hugging Face schema, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` with the chat template, `generation_config.json`).
//!
//! The run must have started from a model that has a Hugging Face form: a GGUF file or a model
//! directory (`model.dir`). A preset's byte tokenizer has none, so exporting a preset run is a
//! one-line error. The architecture is the source model's (its full context length, not the
//! run's `model.max_seq_len` cap); the weights are the checkpoint's.

use anyhow::{Context, bail};
use trainer::checkpoint;

use crate::cli::ExportArgs;
use crate::run::resolve_checkpoint;

/// Runs `arbor export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let resolved = resolve_checkpoint(&args.checkpoint)?;
    let Some(cfg) = resolved.run_config else {
        bail!(
            "{} is not inside a run: export needs the run's config.toml to find its model",
            args.checkpoint.display()
        );
    };
    let Some(source) = cfg.model.dir.clone() else {
        bail!(
            "the run uses the {} preset, whose byte tokenizer has no Hugging Face form: export \
             needs a run started from a GGUF file or a model directory",
            cfg.model.preset
        );
    };
    let out = &args.out;
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("--out {} is not a readable directory", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "--out {} exists and is not empty; choose a new directory",
            out.display()
        );
    }
    let ckpt = checkpoint::load(&resolved.checkpoint)
        .with_context(|| format!("cannot load checkpoint {}", resolved.checkpoint.display()))?;
    let same_architecture = |full: &rollout::engine::ModelConfig| {
        rollout::engine::ModelConfig {
            max_seq_len: ckpt.model_config.max_seq_len,
            ..full.clone()
        } == ckpt.model_config
    };
    let is_gguf = source
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_gguf {
        let g = rollout::gguf::load_gguf(&source)
            .with_context(|| format!("cannot load model file {}", source.display()))?;
        if !same_architecture(&g.config) {
            bail!(
                "checkpoint and {} hold different architectures",
                source.display()
            );
        }
        g.save_hf(out, &ckpt.weights)?;
    } else {
        let hf = rollout::hf::load_model_dir(&source)
            .with_context(|| format!("cannot load model directory {}", source.display()))?;
        if !same_architecture(&hf.config) {
            bail!(
                "checkpoint and {} hold different architectures",
                source.display()
            );
        }
        hf.save_with_weights(out, &ckpt.weights)?;
    }
    println!(
        "{} -> {} (Hugging Face model directory)",
        resolved.checkpoint.display(),
        out.display()
    );
    Ok(())
}
