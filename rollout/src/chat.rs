//! Chat templates: an instruct model sees an environment as a conversation in its own format.
//!
//! A [`ChatFormat`] is made once from the model's Jinja chat template (GGUF
//! `tokenizer.chat_template`, or `chat_template` of `tokenizer_config.json`), rendered with
//! `minijinja` the way `transformers` renders it (`messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`). It cuts three renderings at sentinel texts to learn:
//! - the **prompt**: a system message that describes the action grammar ([`SYSTEM`]), the task
//!   as the user turn, and the start of the assistant turn;
//! - the **end of turn**: the text right after an assistant message, which must begin with the
//!   tokenizer's EOS token (so an action ends exactly where the policy samples EOS, as without a
//!   template);
//! - the **observation**: what follows that EOS up to the next assistant turn, with the
//!   environment's answer as a user turn.
//!
//! [`chat_spec`] wraps an environment family so that every task renders its prompt and its
//! observations this way: samplers, SFT demonstrations, evaluation and the exports all see the
//! same text, and `prompt + node texts` is still the trajectory text (the EOS that closes an
//! action is a special token, dropped from decoded text as before). Byte-tokenizer presets
//! have no template and keep plain transcripts.

use std::fmt::Debug;
use std::sync::Arc;

// `DynEnv` is named by path, not imported: in scope, its methods would shadow `Env`'s.
use crate::Error;
use envs::registry::Family;
use envs::{AnyEnv, Env, EnvSpec, Expert, Step};

/// The system message: the action grammar the environments parse.
pub const SYSTEM: &str = "You act in a text environment. Reply with exactly one action per \
turn, written as name[argument] with a tool named in the task, for example search[Kelda Morr] \
or answer[42]. The environment answers each action.";

/// A chat template's rendering of prompts and observations (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatFormat {
    prompt: (String, String),
    observation: (String, String),
}

const TASK: &str = "\u{1}TASK\u{1}";
const ACTION: &str = "\u{2}ACTION\u{2}";
const OBSERVATION: &str = "\u{3}OBS\u{3}";

impl ChatFormat {
    /// Learns the format from `template`; `bos` and `eos` are the tokenizer's special token
    /// texts (`eos` ends an assistant turn).
    pub fn new(template: &str, bos: &str, eos: &str) -> Result<ChatFormat, Error> {
        let mut env = minijinja::Environment::new();
        // Hugging Face templates reject unsupported conversations with this function.
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let tmpl = env.get_template("chat").expect("just added");
        let msg =
            |role: &str, content: &str| minijinja::context! { role => role, content => content };
        let render = |messages: Vec<minijinja::Value>, generation: bool| {
            tmpl.render(minijinja::context! {
                messages => messages,
                add_generation_prompt => generation,
                bos_token => bos,
                eos_token => eos,
            })
            .map_err(|e| Error::ChatTemplate(e.to_string()))
        };
        let split = |text: &str, at: &str| -> Result<(String, String), Error> {
            let (a, b) = text
                .split_once(at)
                .ok_or_else(|| Error::ChatTemplate("it drops message contents".into()))?;
            Ok((a.to_string(), b.to_string()))
        };
        let prompt = split(
            &render(vec![msg("system", SYSTEM), msg("user", TASK)], true)?,
            TASK,
        )?;
        let turn = render(
            vec![
                msg("system", SYSTEM),
                msg("user", TASK),
                msg("assistant", ACTION),
            ],
            false,
        )?;
        let with_obs = render(
            vec![
                msg("system", SYSTEM),
                msg("user", TASK),
                msg("assistant", ACTION),
                msg("user", OBSERVATION),
            ],
            true,
        )?;
        let (before, _) = split(&turn, ACTION)?;
        if !with_obs.starts_with(&before) {
            return Err(Error::ChatTemplate(
                "a later turn changes the earlier ones".into(),
            ));
        }
        let (_, after_action) = split(&with_obs, ACTION)?;
        let Some(rest) = after_action.strip_prefix(eos) else {
            return Err(Error::ChatTemplate(format!(
                "an assistant turn does not end with the EOS token {eos:?}"
            )));
        };
        let observation = split(rest, OBSERVATION)?;
        Ok(ChatFormat {
            prompt,
            observation,
        })
    }

    /// The format without a leading `text` in its prompts: templates that render `bos_token`
    /// themselves (Llama 3) would otherwise give two BOS tokens with a tokenizer that adds one.
    pub fn without_leading(mut self, text: &str) -> Self {
        if !text.is_empty()
            && let Some(rest) = self.prompt.0.strip_prefix(text)
        {
            self.prompt.0 = rest.to_string();
        }
        self
    }

    /// The prompt of a task: system message, the task as the user turn, the assistant's start.
    pub fn prompt(&self, task: &str) -> String {
        format!("{}{task}{}", self.prompt.0, self.prompt.1)
    }

    /// The text after an action's EOS: the observation as a user turn, then the assistant's
    /// start.
    pub fn observation(&self, observation: &str) -> String {
        format!("{}{observation}{}", self.observation.0, self.observation.1)
    }
}

/// `spec` with every task rendered through `format` (module docs). The family keeps the
/// environment's name, knobs and task count.
pub fn chat_spec(spec: EnvSpec, format: ChatFormat) -> EnvSpec {
    EnvSpec::Custom(Arc::new(ChatFamily {
        inner: spec,
        format: Arc::new(format),
    }))
}

#[derive(Debug)]
struct ChatFamily {
    inner: EnvSpec,
    format: Arc<ChatFormat>,
}

impl Family for ChatFamily {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn knob_values(&self) -> Vec<(&'static str, String)> {
        self.inner.knob_values()
    }
    fn make(&self, id: u64) -> Box<dyn envs::registry::DynEnv> {
        let inner = self.inner.make(id);
        Box::new(ChatEnv {
            prompt: self.format.prompt(Env::prompt(&inner)),
            inner,
            format: self.format.clone(),
        })
    }
    fn task_count(&self) -> Option<u64> {
        self.inner.task_count()
    }
}

/// A task whose prompt and observations are chat turns.
#[derive(Debug, Clone)]
struct ChatEnv {
    inner: AnyEnv,
    prompt: String,
    format: Arc<ChatFormat>,
}

impl Env for ChatEnv {
    fn prompt(&self) -> &str {
        &self.prompt
    }
    fn step(&mut self, action: &str) -> Step {
        let step = Env::step(&mut self.inner, action);
        Step {
            observation: self.format.observation(&step.observation),
            ..step
        }
    }
    fn max_turns(&self) -> usize {
        Env::max_turns(&self.inner)
    }
}

impl Expert for ChatEnv {
    fn expert_action(&self) -> String {
        Expert::expert_action(&self.inner)
    }
    fn mistake_action(&self, seed: u64) -> Option<String> {
        Expert::mistake_action(&self.inner, seed)
    }
    fn guess_action(&self) -> Option<String> {
        Expert::guess_action(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's template (ChatML with a default system message).
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_prompts_and_observations() {
        let f = ChatFormat::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        assert_eq!(
            f.prompt("Who is X? Tools: search, answer.\n"),
            format!(
                "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWho is X? Tools: \
                 search, answer.\n<|im_end|>\n<|im_start|>assistant\n"
            )
        );
        assert_eq!(
            f.observation("X: head [Y].\n"),
            "\n<|im_start|>user\nX: head [Y].\n<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// Templates that reject conversations they do not support (Hugging Face's
    /// `raise_exception`) render the ones they do.
    #[test]
    fn raise_exception_is_known() {
        let t = "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let f = ChatFormat::new(t, "<s>", "</s>").unwrap();
        assert_eq!(
            f.prompt("T"),
            format!("<system>{SYSTEM}</s><user>T</s><assistant>")
        );
        assert_eq!(f.observation("O"), "<user>O</s><assistant>");
        let bad = "{{ raise_exception('never') }}";
        let err = ChatFormat::new(bad, "<s>", "</s>").unwrap_err().to_string();
        assert!(err.contains("never"), "{err}");
    }

    /// A template that renders the BOS itself loses it when the tokenizer adds one.
    #[test]
    fn a_rendered_bos_is_not_doubled() {
        let t = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let f = ChatFormat::new(t, "<s>", "</s>").unwrap();
        assert!(f.prompt("T").starts_with("<s><system>"));
        let f = f.without_leading("<s>");
        assert!(f.prompt("T").starts_with("<system>"));
    }

    #[test]
    fn unusable_templates_are_errors() {
        assert!(ChatFormat::new("{% for", "<s>", "</s>").is_err());
        assert!(
            ChatFormat::new("hello", "<s>", "</s>").is_err(),
            "drops the contents"
        );
        let err = ChatFormat::new(CHATML, "<s>", "</s>")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not end with the EOS"), "{err}");
    }

    /// Wrapped tasks keep their name and answers, and their transcripts are chat turns.
    #[test]
    fn wrapped_environments_speak_in_turns() {
        let f = ChatFormat::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let spec = chat_spec(
            EnvSpec::from_name("multihop", &[("hops", "1")]).unwrap(),
            f.clone(),
        );
        assert_eq!(spec.name(), "multihop");
        let mut env = spec.make(5);
        let plain = EnvSpec::from_name("multihop", &[("hops", "1")])
            .unwrap()
            .make(5);
        assert_eq!(env.prompt(), f.prompt(plain.prompt()));
        let action = env.expert_action();
        let step = env.step(&action);
        assert!(step.observation.starts_with("\n<|im_start|>user\n"));
        assert!(step.observation.ends_with("<|im_start|>assistant\n"));
        let last = env.step(&env.expert_action());
        assert!(last.outcome.is_success());
    }
}
