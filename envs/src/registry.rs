//! Open environments: an environment defined outside this crate joins arbor by registering a
//! family under a name, with its knobs; every command then builds it by that name like the
//! built-in ones (`--env NAME`, `[env] name = "NAME"`), lists it in `arbor envs`, samples it,
//! trains on it and exports it.
//!
//! # Adding an environment
//! One file: a task type implementing [`Env`] and [`Expert`] (the expert writes the SFT
//! demonstrations; an environment without one can return any action and train without SFT),
//! a config type implementing [`Knobs`], and a [`Family`] that builds task `id` from the
//! config. Then, before the command line is parsed:
//! ```
//! # use envs::{Env, Expert, Step, Outcome, Knobs, KnobInfo, registry};
//! # #[derive(Debug, Clone)] struct Coin { prompt: String, heads: bool, done: bool }
//! # impl Env for Coin {
//! #     fn prompt(&self) -> &str { &self.prompt }
//! #     fn step(&mut self, a: &str) -> Step {
//! #         let ok = a.trim() == if self.heads { "answer[heads]" } else { "answer[tails]" };
//! #         self.done = true;
//! #         Step { observation: String::new(), reward: if ok { 1.0 } else { 0.0 }, done: true,
//! #                outcome: if ok { Outcome::Solved } else { Outcome::Failed } }
//! #     }
//! #     fn max_turns(&self) -> usize { 1 }
//! # }
//! # impl Expert for Coin {
//! #     fn expert_action(&self) -> String { format!("answer[{}]", if self.heads { "heads" } else { "tails" }) }
//! #     fn mistake_action(&self, _: u64) -> Option<String> { None }
//! # }
//! # #[derive(Debug, Clone, Default)] struct CoinConfig;
//! # impl Knobs for CoinConfig {
//! #     const KNOBS: &'static [KnobInfo] = &[];
//! #     fn set_knob(&mut self, _: &str, _: &str) -> Result<(), String> { Err("none".into()) }
//! #     fn knob_values(&self) -> Vec<(&'static str, String)> { Vec::new() }
//! # }
//! registry::register::<CoinConfig, _>("coin", "say which side the coin shows", |_cfg, id| Coin {
//!     prompt: format!("The coin shows {}. Tools: answer.\n", if id % 2 == 0 { "heads" } else { "tails" }),
//!     heads: id % 2 == 0,
//!     done: false,
//! });
//! let spec = envs::EnvSpec::from_name("coin", &[]).unwrap();
//! assert_eq!(spec.name(), "coin");
//! let mut task = spec.make(4);
//! assert!(task.step(&task.expert_action()).outcome.is_success());
//! ```
//! `experiments/examples/custom_env.rs` is a complete one: an `arbor` binary with one more
//! environment.
//!
//! # Decisions
//! - Built-in environments stay variants of [`AnyEnv`] and [`EnvSpec`] (no dynamic dispatch
//!   on their hot path); registered ones are the `Custom` variants, behind a trait object.
//! - Registration is an explicit call (Rust has no portable life-before-main); a name can be
//!   registered once, and built-in names are taken.

use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use crate::knobs::apply;
use crate::{Env, EnvError, Expert, KnobInfo, Knobs, Step};

/// An environment task behind a trait object: [`Env`] and [`Expert`] without `Clone` (so that
/// it can be boxed). Every `Expert + Debug` type is one.
pub trait DynEnv: Send + Sync + Debug {
    /// See [`Env::prompt`].
    fn prompt(&self) -> &str;
    /// See [`Env::step`].
    fn step(&mut self, action: &str) -> Step;
    /// See [`Env::max_turns`].
    fn max_turns(&self) -> usize;
    /// See [`Expert::expert_action`].
    fn expert_action(&self) -> String;
    /// See [`Expert::mistake_action`].
    fn mistake_action(&self, seed: u64) -> Option<String>;
    /// See [`Expert::guess_action`].
    fn guess_action(&self) -> Option<String>;
    /// A boxed clone (a tree branches by cloning the environment).
    fn clone_box(&self) -> Box<dyn DynEnv>;
}

impl<T: Expert + Debug + 'static> DynEnv for T {
    fn prompt(&self) -> &str {
        Env::prompt(self)
    }
    fn step(&mut self, action: &str) -> Step {
        Env::step(self, action)
    }
    fn max_turns(&self) -> usize {
        Env::max_turns(self)
    }
    fn expert_action(&self) -> String {
        Expert::expert_action(self)
    }
    fn mistake_action(&self, seed: u64) -> Option<String> {
        Expert::mistake_action(self, seed)
    }
    fn guess_action(&self) -> Option<String> {
        Expert::guess_action(self)
    }
    fn clone_box(&self) -> Box<dyn DynEnv> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn DynEnv> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A configured family of registered tasks (the registered counterpart of an [`crate::EnvSpec`]
/// variant).
pub trait Family: Send + Sync + Debug {
    /// The registered name.
    fn name(&self) -> &'static str;
    /// Current knob values, in the order the registration lists the knobs.
    fn knob_values(&self) -> Vec<(&'static str, String)>;
    /// Task `id`, deterministically.
    fn make(&self, id: u64) -> Box<dyn DynEnv>;
    /// How many distinct tasks exist (`None`: any `u64` id is a task).
    fn task_count(&self) -> Option<u64> {
        None
    }
}

/// A registered environment: its name, one-line description, knobs and builder.
#[derive(Clone)]
pub struct Registration {
    /// The name commands and configs use.
    pub name: &'static str,
    /// One line for `arbor envs`.
    pub about: &'static str,
    /// Its knobs (for `arbor envs` and validation).
    pub knobs: &'static [KnobInfo],
    build: Arc<BuildFn>,
}

type BuildFn = dyn Fn(&[(&str, &str)]) -> Result<Arc<dyn Family>, EnvError> + Send + Sync;

impl Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("knobs", &self.knobs.len())
            .finish()
    }
}

impl Registration {
    /// Builds the family from `(knob, value)` pairs (unknown knobs and bad values are errors).
    pub fn build(&self, knobs: &[(&str, &str)]) -> Result<Arc<dyn Family>, EnvError> {
        (self.build)(knobs)
    }
}

/// A family from a [`Knobs`] config and a task builder.
struct FnFamily<C, F> {
    name: &'static str,
    config: C,
    make: Arc<F>,
}

impl<C: Debug, F> Debug for FnFamily<C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.name, self.config)
    }
}

impl<C, F, E> Family for FnFamily<C, F>
where
    C: Knobs + Debug + Send + Sync,
    F: Fn(&C, u64) -> E + Send + Sync,
    E: Expert + Debug + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn knob_values(&self) -> Vec<(&'static str, String)> {
        self.config.knob_values()
    }
    fn make(&self, id: u64) -> Box<dyn DynEnv> {
        Box::new((self.make)(&self.config, id))
    }
}

static REGISTRY: RwLock<Vec<Registration>> = RwLock::new(Vec::new());

/// Names of the built-in environments (always present, not in the registry).
pub const BUILT_IN: [&str; 4] = ["multihop", "countdown", "maze", "qa-file"];

/// Registers the environment `name`: its knobs are `C`'s ([`Knobs`]), and `make(config, id)`
/// builds task `id`. Returns `false` (and changes nothing) when the name is taken.
pub fn register<C, E>(
    name: &'static str,
    about: &'static str,
    make: impl Fn(&C, u64) -> E + Send + Sync + 'static,
) -> bool
where
    C: Knobs + Debug + Send + Sync + 'static,
    E: Expert + Debug + 'static,
{
    let make = Arc::new(make);
    let build = move |knobs: &[(&str, &str)]| -> Result<Arc<dyn Family>, EnvError> {
        let config: C = apply(name, knobs)?;
        Ok(Arc::new(FnFamily {
            name,
            config,
            make: make.clone(),
        }))
    };
    let mut all = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if BUILT_IN.contains(&name) || all.iter().any(|r| r.name == name) {
        return false;
    }
    all.push(Registration {
        name,
        about,
        knobs: C::KNOBS,
        build: Arc::new(build),
    });
    true
}

/// The registration of `name`, if any.
pub fn lookup(name: &str) -> Option<Registration> {
    let all = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    all.iter().find(|r| r.name == name).cloned()
}

/// Every registered environment, in registration order (built-ins not included).
pub fn registered() -> Vec<Registration> {
    REGISTRY.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Built-in and registered names, in listing order.
pub fn all_names() -> Vec<&'static str> {
    let mut names = BUILT_IN.to_vec();
    names.extend(registered().iter().map(|r| r.name));
    names
}
