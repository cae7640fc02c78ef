//! `countdown` — single turn: reach a target number from given numbers with `+ - * /`.
//!
//! ```text
//! Use 3 7 12 to make 33 (+ - * /, each number at most once). Reply answer[expr].
//! ```
//!
//! Each task id draws `numbers` numbers in `1..=max_number` and builds a random expression over
//! two or more of them, in which every intermediate value is a positive integer, every division is
//! exact and every product is at most 1000; its value is the target (redrawn while the target is
//! one of the given numbers). So every task is solvable.
//!
//! # Actions
//! `answer[expression]` — integers, `+ - * /`, parentheses and spaces. Reward 1 and
//! [`Outcome::Solved`] if the expression parses, uses only the given numbers and each at most as
//! often as it is given, every division is exact (no remainder, no division by zero) and its value
//! equals the target; otherwise [`Outcome::Failed`] with the reason in the observation. There is no
//! unary minus; negative intermediate values are allowed. Text that does not parse as an action,
//! or another tool, is [`Outcome::Malformed`]; both end the episode.
//!
//! `max_turns` is 1.
//!
//! # Knobs
//! - `numbers` (default 3, 2..=6) — how many numbers are given.
//! - `max_number` (default 20, 2..=1000) — largest given number.
//!
//! # Expert
//! Answers the construction expression (parenthesised only where precedence needs it). There is
//! no recoverable mistake: any wrong answer ends the episode.

use std::fmt;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::grammar::clip;
use crate::knobs::{KnobInfo, Knobs};
use crate::rng::derive;
use crate::{Env, Expert, Outcome, Step, parse_action};

/// Seed tag for countdown tasks ("countdwn" in ASCII).
const SEED_TAG: u64 = 0x636f_756e_7464_776e;
/// Largest product the construction allows.
const MAX_PRODUCT: i64 = 1000;
/// Longest expression the parser reads, in bytes.
const MAX_EXPR_LEN: usize = 256;
/// Deepest parenthesis nesting the parser reads.
const MAX_DEPTH: usize = 32;

/// Configuration of the `countdown` environment; see the module docs for each knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountdownConfig {
    /// How many numbers are given (2..=6). Default 3.
    pub numbers: usize,
    /// Largest given number (2..=1000). Default 20.
    pub max_number: u32,
}

impl Default for CountdownConfig {
    fn default() -> Self {
        CountdownConfig {
            numbers: 3,
            max_number: 20,
        }
    }
}

impl Knobs for CountdownConfig {
    const KNOBS: &'static [KnobInfo] = &[
        KnobInfo {
            name: "numbers",
            default: "3",
            doc: "how many numbers are given, 2..=6",
        },
        KnobInfo {
            name: "max_number",
            default: "20",
            doc: "largest given number, 2..=1000",
        },
    ];

    fn set_knob(&mut self, name: &str, value: &str) -> Result<(), String> {
        let v = value.trim().parse::<u32>().ok();
        match name {
            "numbers" => match v {
                Some(n @ 2..=6) => self.numbers = n as usize,
                _ => return Err("an integer in 2..=6".to_string()),
            },
            "max_number" => match v {
                Some(n @ 2..=1000) => self.max_number = n,
                _ => return Err("an integer in 2..=1000".to_string()),
            },
            _ => return Err(format!("unknown knob '{name}'")),
        }
        Ok(())
    }

    fn knob_values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("numbers", self.numbers.to_string()),
            ("max_number", self.max_number.to_string()),
        ]
    }
}

/// The static part of a task.
#[derive(Debug)]
struct Task {
    numbers: Vec<i64>,
    target: i64,
    solution: String,
    prompt: String,
}

/// A partial expression during construction: value, text, precedence of its top operator
/// (1 for `+ -`, 2 for `* /`, 3 for a number).
struct Part {
    value: i64,
    text: String,
    prec: u8,
}

fn combine(a: &Part, op: u8, b: &Part) -> Part {
    let (prec, value) = match op {
        b'+' => (1, a.value + b.value),
        b'-' => (1, a.value - b.value),
        b'*' => (2, a.value * b.value),
        _ => (2, a.value / b.value),
    };
    let left = if a.prec < prec {
        format!("({})", a.text)
    } else {
        a.text.clone()
    };
    // `a - (b + c)` and `a / (b * c)` need the parentheses, `a + (b - c)` and `a * (b / c)` do not
    // (the latter stays exact: c divides b, hence a * b).
    let right = if b.prec < prec || (b.prec == prec && (op == b'-' || op == b'/')) {
        format!("({})", b.text)
    } else {
        b.text.clone()
    };
    Part {
        value,
        text: format!("{left}{}{right}", op as char),
        prec,
    }
}

fn construct(rng: &mut StdRng, numbers: &[i64]) -> Part {
    let n = numbers.len();
    let k = if n == 2 || rng.random_bool(0.5) {
        n
    } else {
        rng.random_range(2..=n)
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut parts: Vec<Part> = order[..k]
        .iter()
        .map(|&i| Part {
            value: numbers[i],
            text: numbers[i].to_string(),
            prec: 3,
        })
        .collect();
    while parts.len() > 1 {
        let i = rng.random_range(0..parts.len());
        let a = parts.swap_remove(i);
        let j = rng.random_range(0..parts.len());
        let b = parts.swap_remove(j);
        let mut ops = vec![b'+'];
        if a.value > b.value {
            ops.push(b'-');
        }
        if a.value * b.value <= MAX_PRODUCT && a.value > 1 && b.value > 1 {
            ops.push(b'*');
        }
        if b.value > 1 && a.value % b.value == 0 {
            ops.push(b'/');
        }
        let op = ops[rng.random_range(0..ops.len())];
        parts.push(combine(&a, op, &b));
    }
    parts.pop().unwrap_or(Part {
        value: 0,
        text: String::new(),
        prec: 3,
    })
}

impl Task {
    fn generate(cfg: &CountdownConfig, task_id: u64) -> Task {
        let n = cfg.numbers.clamp(2, 6);
        let max = i64::from(cfg.max_number.clamp(2, 1000));
        let mut rng = StdRng::seed_from_u64(derive(&[SEED_TAG, task_id, n as u64, max as u64]));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let numbers: Vec<i64> = (0..n).map(|_| rng.random_range(1..=max)).collect();
            let part = construct(&mut rng, &numbers);
            if !numbers.contains(&part.value) || attempt >= 100 {
                let list = numbers
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                let prompt = format!(
                    "Use {list} to make {} (+ - * /, each number at most once). Reply \
                     answer[expr].\n",
                    part.value
                );
                return Task {
                    numbers,
                    target: part.value,
                    solution: part.text,
                    prompt,
                };
            }
        }
    }
}

/// Why an expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ExprError {
    TooLong,
    TooDeep,
    BadChar(char),
    Expected(&'static str),
    Trailing,
    Overflow,
    DivByZero,
    Inexact(i64, i64),
    NotGiven(i64),
    Reused(i64),
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExprError::TooLong => write!(f, "expression too long"),
            ExprError::TooDeep => write!(f, "too many nested parentheses"),
            ExprError::BadChar(c) => write!(f, "unexpected '{}'", c.escape_default()),
            ExprError::Expected(what) => write!(f, "expected {what}"),
            ExprError::Trailing => write!(f, "unexpected text after the expression"),
            ExprError::Overflow => write!(f, "number too large"),
            ExprError::DivByZero => write!(f, "division by zero"),
            ExprError::Inexact(a, b) => write!(f, "{a}/{b} is not exact"),
            ExprError::NotGiven(v) => write!(f, "{v} is not a given number"),
            ExprError::Reused(v) => write!(f, "{v} used too often"),
        }
    }
}

/// A recursive-descent parser and evaluator over the bytes of an expression.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    used: Vec<i64>,
}

impl Parser<'_> {
    fn peek(&mut self) -> Option<char> {
        let rest = &self.text[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        trimmed.chars().next()
    }

    fn bump(&mut self, c: char) {
        self.pos += c.len_utf8();
    }

    /// expr = term (('+' | '-') term)*
    fn expr(&mut self) -> Result<i64, ExprError> {
        let mut v = self.term()?;
        while let Some(c @ ('+' | '-')) = self.peek() {
            self.bump(c);
            let r = self.term()?;
            v = if c == '+' {
                v.checked_add(r)
            } else {
                v.checked_sub(r)
            }
            .ok_or(ExprError::Overflow)?;
        }
        Ok(v)
    }

    /// term = factor (('*' | '/') factor)*
    fn term(&mut self) -> Result<i64, ExprError> {
        let mut v = self.factor()?;
        while let Some(c @ ('*' | '/')) = self.peek() {
            self.bump(c);
            let r = self.factor()?;
            v = if c == '*' {
                v.checked_mul(r).ok_or(ExprError::Overflow)?
            } else if r == 0 {
                return Err(ExprError::DivByZero);
            } else if v.checked_rem(r) != Some(0) {
                return Err(ExprError::Inexact(v, r));
            } else {
                v.checked_div(r).ok_or(ExprError::Overflow)?
            };
        }
        Ok(v)
    }

    /// factor = number | '(' expr ')'
    fn factor(&mut self) -> Result<i64, ExprError> {
        match self.peek() {
            Some('(') => {
                self.bump('(');
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(ExprError::TooDeep);
                }
                let v = self.expr()?;
                if self.peek() != Some(')') {
                    return Err(ExprError::Expected("')'"));
                }
                self.bump(')');
                self.depth -= 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() => {
                let mut v: i64 = 0;
                while let Some(d) = self.text[self.pos..]
                    .chars()
                    .next()
                    .filter(char::is_ascii_digit)
                {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(i64::from(d as u8 - b'0')))
                        .ok_or(ExprError::Overflow)?;
                    self.bump(d);
                }
                self.used.push(v);
                Ok(v)
            }
            Some(c) => Err(ExprError::BadChar(c)),
            None => Err(ExprError::Expected("a number")),
        }
    }
}

/// Evaluates `text` using only `numbers` (each at most as often as given).
fn evaluate(text: &str, numbers: &[i64]) -> Result<i64, ExprError> {
    if text.len() > MAX_EXPR_LEN {
        return Err(ExprError::TooLong);
    }
    let mut p = Parser {
        text,
        pos: 0,
        depth: 0,
        used: Vec::new(),
    };
    let v = p.expr()?;
    if p.peek().is_some() {
        return Err(ExprError::Trailing);
    }
    for &u in &p.used {
        let given = numbers.iter().filter(|&&n| n == u).count();
        if given == 0 {
            return Err(ExprError::NotGiven(u));
        }
        if p.used.iter().filter(|&&x| x == u).count() > given {
            return Err(ExprError::Reused(u));
        }
    }
    Ok(v)
}

/// One `countdown` task.
#[derive(Debug, Clone)]
pub struct Countdown {
    task: Arc<Task>,
    done: bool,
}

impl Countdown {
    /// Builds task `task_id` of the family `cfg`, deterministically.
    pub fn generate(cfg: &CountdownConfig, task_id: u64) -> Countdown {
        Countdown {
            task: Arc::new(Task::generate(cfg, task_id)),
            done: false,
        }
    }

    /// The given numbers, in prompt order.
    pub fn numbers(&self) -> &[i64] {
        &self.task.numbers
    }

    /// The target.
    pub fn target(&self) -> i64 {
        self.task.target
    }
}

const USAGE: &str = "Reply answer[expr], e.g. answer[(2+3)*4].";

impl Env for Countdown {
    fn prompt(&self) -> &str {
        &self.task.prompt
    }

    fn step(&mut self, action: &str) -> Step {
        let (observation, reward, outcome) = if self.done {
            (
                "\nThe episode is over.\n".to_string(),
                0.0,
                Outcome::Finished,
            )
        } else {
            match parse_action(action) {
                Err(reason) => (format!("\n{reason}. {USAGE}\n"), 0.0, Outcome::Malformed),
                Ok(p) if p.name != "answer" => (
                    format!("\nUnknown tool '{}'. {USAGE}\n", clip(p.name)),
                    0.0,
                    Outcome::Malformed,
                ),
                Ok(p) => match evaluate(p.arg, &self.task.numbers) {
                    Ok(v) if v == self.task.target => {
                        ("\nCorrect.\n".to_string(), 1.0, Outcome::Solved)
                    }
                    Ok(v) => (
                        format!("\nWrong: it makes {v}, not {}.\n", self.task.target),
                        0.0,
                        Outcome::Failed,
                    ),
                    Err(e) => (
                        format!("\nInvalid expression: {e}.\n"),
                        0.0,
                        Outcome::Failed,
                    ),
                },
            }
        };
        self.done = true;
        Step {
            observation,
            reward,
            done: true,
            outcome,
        }
    }

    fn max_turns(&self) -> usize {
        1
    }
}

impl Expert for Countdown {
    fn expert_action(&self) -> String {
        format!("answer[{}]", self.task.solution)
    }

    fn mistake_action(&self, _seed: u64) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUMS: [i64; 5] = [2, 3, 4, 6, 7];

    fn eval(s: &str) -> Result<i64, ExprError> {
        evaluate(s, &NUMS)
    }

    #[test]
    fn precedence_and_parentheses() {
        assert_eq!(eval("2+3*4"), Ok(14));
        assert_eq!(eval("(2+3)*4"), Ok(20));
        assert_eq!(eval("7-3-2"), Ok(2));
        assert_eq!(eval("7-(3-2)"), Ok(6));
        assert_eq!(eval("6/3*2"), Ok(4));
        assert_eq!(eval(" ( ( 7 ) ) "), Ok(7));
        assert_eq!(eval("2-7"), Ok(-5));
        assert_eq!(eval("4*(7+3)/2-6"), Ok(14));
    }

    #[test]
    fn reuse_and_unknown_numbers_are_rejected() {
        assert_eq!(eval("2+2"), Err(ExprError::Reused(2)));
        assert_eq!(eval("5+2"), Err(ExprError::NotGiven(5)));
        assert_eq!(eval("02+3"), Ok(5));
        assert_eq!(evaluate("2+2", &[2, 2]), Ok(4));
        assert_eq!(evaluate("2+2+2", &[2, 2]), Err(ExprError::Reused(2)));
    }

    #[test]
    fn inexact_division_and_division_by_zero_are_rejected() {
        assert_eq!(eval("7/2"), Err(ExprError::Inexact(7, 2)));
        assert_eq!(eval("(3+4)/7"), Ok(1));
        assert_eq!(evaluate("3/(2-2)", &[3, 2, 2]), Err(ExprError::DivByZero));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for bad in [
            "",
            "+",
            "2+",
            "2 3",
            "(2+3",
            "2+3)",
            "-2",
            "2**3",
            "2^3",
            "x",
            "2+é",
            "()",
            "7/",
            "99999999999999999999999",
            "2 = 2",
        ] {
            assert!(eval(bad).is_err(), "{bad}");
        }
        let deep = "(".repeat(10_000) + "2" + &")".repeat(10_000);
        assert!(eval(&deep).is_err());
        let deep = "(".repeat(100) + "2" + &")".repeat(100);
        assert_eq!(evaluate(&deep, &[2]), Err(ExprError::TooDeep));
        let huge = ["999999"; 6].join("*");
        assert_eq!(evaluate(&huge, &[999_999; 6]), Err(ExprError::Overflow));
    }

    #[test]
    fn construction_is_valid_and_minimal_in_parentheses() {
        for n in 2..=6 {
            let cfg = CountdownConfig {
                numbers: n,
                max_number: 20,
            };
            for id in 0..300 {
                let t = Task::generate(&cfg, id);
                assert_eq!(evaluate(&t.solution, &t.numbers), Ok(t.target), "{t:?}");
                assert!(t.target > 0);
                assert!(t.prompt.len() <= 120, "{}", t.prompt);
            }
        }
    }
}
