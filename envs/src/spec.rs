//! Named environment families and the enum of all environments.

use crate::countdown::{Countdown, CountdownConfig};
use crate::maze::{Maze, MazeConfig};
use crate::multihop::{Multihop, MultihopConfig};
use std::sync::Arc;

use crate::knobs::{KnobInfo, Knobs, apply};
use crate::qa::{QaConfig, QaTask};
use crate::registry::{DynEnv, Family};
use crate::{Env, EnvError, Expert, Step};

/// A configured family of tasks: an environment name plus its knobs. `make(task_id)` builds one
/// task deterministically from its id.
#[derive(Debug, Clone)]
pub enum EnvSpec {
    /// k-hop questions over a synthetic knowledge graph.
    Multihop(MultihopConfig),
    /// Reach a target number with + - * /.
    Countdown(CountdownConfig),
    /// Grid navigation.
    Maze(MazeConfig),
    /// User question/answer pairs (loaded by the `datasets` crate).
    QaFile(QaConfig),
    /// A registered environment ([`crate::registry`]).
    Custom(Arc<dyn Family>),
}

impl PartialEq for EnvSpec {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (EnvSpec::Multihop(a), EnvSpec::Multihop(b)) => a == b,
            (EnvSpec::Countdown(a), EnvSpec::Countdown(b)) => a == b,
            (EnvSpec::Maze(a), EnvSpec::Maze(b)) => a == b,
            (EnvSpec::QaFile(a), EnvSpec::QaFile(b)) => a == b,
            (EnvSpec::Custom(a), EnvSpec::Custom(b)) => {
                a.name() == b.name() && a.knob_values() == b.knob_values()
            }
            _ => false,
        }
    }
}

impl EnvSpec {
    /// Builds a spec from an environment name and `(knob, value)` pairs; unspecified knobs keep
    /// their defaults. `qa-file` cannot be built here: it needs its task file (see the `datasets`
    /// crate), and asking for it returns [`EnvError::NeedsTaskFile`].
    pub fn from_name(name: &str, knobs: &[(&str, &str)]) -> Result<EnvSpec, EnvError> {
        match name {
            "multihop" => Ok(EnvSpec::Multihop(apply(name, knobs)?)),
            "countdown" => Ok(EnvSpec::Countdown(apply(name, knobs)?)),
            "maze" => Ok(EnvSpec::Maze(apply(name, knobs)?)),
            "qa-file" => Err(EnvError::NeedsTaskFile),
            _ => match crate::registry::lookup(name) {
                Some(reg) => Ok(EnvSpec::Custom(reg.build(knobs)?)),
                None => Err(EnvError::UnknownEnv {
                    name: name.to_string(),
                    known: crate::registry::all_names().join(", "),
                }),
            },
        }
    }

    /// The knobs of the environment called `name` (`None` for an unknown name).
    pub fn knobs_of(name: &str) -> Option<&'static [KnobInfo]> {
        match name {
            "multihop" => Some(MultihopConfig::KNOBS),
            "countdown" => Some(CountdownConfig::KNOBS),
            "maze" => Some(MazeConfig::KNOBS),
            "qa-file" => Some(QaConfig::KNOBS),
            _ => crate::registry::lookup(name).map(|r| r.knobs),
        }
    }

    /// The environment's name.
    pub fn name(&self) -> &'static str {
        match self {
            EnvSpec::Multihop(_) => "multihop",
            EnvSpec::Countdown(_) => "countdown",
            EnvSpec::Maze(_) => "maze",
            EnvSpec::QaFile(_) => "qa-file",
            EnvSpec::Custom(f) => f.name(),
        }
    }

    /// Current knob values (for the resolved config of a run).
    pub fn knob_values(&self) -> Vec<(&'static str, String)> {
        match self {
            EnvSpec::Multihop(c) => c.knob_values(),
            EnvSpec::Countdown(c) => c.knob_values(),
            EnvSpec::Maze(c) => c.knob_values(),
            EnvSpec::QaFile(c) => c.knob_values(),
            EnvSpec::Custom(f) => f.knob_values(),
        }
    }

    /// How many distinct tasks exist: `None` for generated environments (any `u64` id is a task),
    /// the number of rows for `qa-file`.
    pub fn task_count(&self) -> Option<u64> {
        match self {
            EnvSpec::QaFile(c) => Some(c.len() as u64),
            EnvSpec::Custom(f) => f.task_count(),
            _ => None,
        }
    }

    /// Builds task `task_id`. Deterministic: the same spec and id give the same task. For
    /// `qa-file`, ids wrap around the number of rows.
    pub fn make(&self, task_id: u64) -> AnyEnv {
        match self {
            EnvSpec::Multihop(c) => AnyEnv::Multihop(Multihop::generate(c, task_id)),
            EnvSpec::Countdown(c) => AnyEnv::Countdown(Countdown::generate(c, task_id)),
            EnvSpec::Maze(c) => AnyEnv::Maze(Maze::generate(c, task_id)),
            EnvSpec::QaFile(c) => AnyEnv::QaFile(c.task(task_id)),
            EnvSpec::Custom(f) => AnyEnv::Custom(f.make(task_id)),
        }
    }
}

/// Any of arbor's environments; what samplers and trainers hold.
#[derive(Debug, Clone)]
pub enum AnyEnv {
    /// See [`crate::multihop`].
    Multihop(Multihop),
    /// See [`crate::countdown`].
    Countdown(Countdown),
    /// See [`crate::maze`].
    Maze(Maze),
    /// See [`crate::qa`].
    QaFile(QaTask),
    /// A registered environment's task ([`crate::registry`]).
    Custom(Box<dyn DynEnv>),
}

/// Calls `$trait::$method` on a built-in environment, or the [`DynEnv`] method of a
/// registered one.
macro_rules! each {
    ($self:expr, $trait:ident :: $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyEnv::Multihop(e) => $trait::$method(e, $($arg),*),
            AnyEnv::Countdown(e) => $trait::$method(e, $($arg),*),
            AnyEnv::Maze(e) => $trait::$method(e, $($arg),*),
            AnyEnv::QaFile(e) => $trait::$method(e, $($arg),*),
            AnyEnv::Custom(e) => (**e).$method($($arg),*),
        }
    };
}

impl Env for AnyEnv {
    fn prompt(&self) -> &str {
        each!(self, Env::prompt())
    }
    fn step(&mut self, action: &str) -> Step {
        each!(self, Env::step(action))
    }
    fn max_turns(&self) -> usize {
        each!(self, Env::max_turns())
    }
}

impl Expert for AnyEnv {
    fn expert_action(&self) -> String {
        each!(self, Expert::expert_action())
    }
    fn mistake_action(&self, seed: u64) -> Option<String> {
        each!(self, Expert::mistake_action(seed))
    }
    fn guess_action(&self) -> Option<String> {
        each!(self, Expert::guess_action())
    }
}
