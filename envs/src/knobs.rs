//! Difficulty knobs: a config type whose fields are settable by name, and their docs.

use crate::EnvError;

/// Documentation of one difficulty knob, for `arbor envs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnobInfo {
    /// Knob name as written in configs and on the command line.
    pub name: &'static str,
    /// Default value, as text.
    pub default: &'static str,
    /// What it controls and which values it accepts.
    pub doc: &'static str,
}

/// A configuration type whose fields are difficulty knobs settable by name.
pub trait Knobs: Default {
    /// The knobs with their defaults and docs.
    const KNOBS: &'static [KnobInfo];
    /// Sets one knob from text; `Err(reason)` says what the knob accepts.
    fn set_knob(&mut self, name: &str, value: &str) -> Result<(), String>;
    /// Current values of every knob, in [`Knobs::KNOBS`] order.
    fn knob_values(&self) -> Vec<(&'static str, String)>;
}

/// A `K` with its defaults and the given `(knob, value)` pairs set; unknown knobs and bad values
/// are errors naming them.
pub(crate) fn apply<K: Knobs>(env: &str, knobs: &[(&str, &str)]) -> Result<K, EnvError> {
    let mut cfg = K::default();
    for &(knob, value) in knobs {
        if !K::KNOBS.iter().any(|k| k.name == knob) {
            return Err(EnvError::UnknownKnob {
                env: env.to_string(),
                knob: knob.to_string(),
                known: K::KNOBS
                    .iter()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        cfg.set_knob(knob, value)
            .map_err(|reason| EnvError::BadKnob {
                env: env.to_string(),
                knob: knob.to_string(),
                value: value.to_string(),
                reason,
            })?;
    }
    Ok(cfg)
}
