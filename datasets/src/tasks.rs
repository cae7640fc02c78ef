//! Task sets and train/eval splits.
//!
//! A task is named by a `u64` id; [`EnvSpec::make`] builds it deterministically. A [`TaskSet`] is
//! one [`Split`] of an environment family and answers two questions: which tasks go into the next
//! training batch ([`TaskSet::sample`]) and which fixed tasks every run is evaluated on
//! ([`TaskSet::eval_ids`]).
//!
//! # How ids are split
//! - **Generated environments** (`multihop`, `countdown`, `maze`; any id is a task): train ids are
//!   [`TRAIN_IDS`] = `[0, 2^32)` and eval ids are [`EVAL_IDS`] = `[2^32, 2^33)`. The splits are
//!   disjoint by range, so no seed, batch size or eval size can leak an eval task into training.
//! - **`qa-file`** (finite rows): ids are row indices. Row `i` goes to eval when
//!   `envs::rng::uniform(&[SPLIT_SALT, i]) < eval_fraction` (default
//!   [`DEFAULT_EVAL_FRACTION`] = 0.1), so a row's split depends only on its index, never on the run
//!   seed. Then, when there are at least 2 rows, each split is made non-empty: if no row hashed into
//!   eval, the train row with the smallest hash moves to eval; if every row hashed into eval, the
//!   eval row with the largest hash moves to train. A file with a single row puts it in train and
//!   leaves eval empty.
//!
//! Eval ids are seed-independent: [`TaskSet::eval_ids`]`(n)` is always the first `n` eval tasks
//! (lowest ids first), so runs with different seeds are compared on the same held-out tasks.

use std::collections::HashSet;
use std::ops::Range;

use envs::EnvSpec;
use envs::rng::{rng_for, uniform};
use rand::RngExt;
use rand::seq::SliceRandom;

use crate::DatasetError;

/// Train task ids of generated environments: `[0, 2^32)`.
pub const TRAIN_IDS: Range<u64> = 0..1 << 32;
/// Eval task ids of generated environments: `[2^32, 2^33)`, disjoint from [`TRAIN_IDS`].
pub const EVAL_IDS: Range<u64> = 1 << 32..1 << 33;
/// Share of `qa-file` rows held out for evaluation unless told otherwise.
pub const DEFAULT_EVAL_FRACTION: f64 = 0.1;
/// Domain tag hashed with a row index to place a `qa-file` row in a split (ASCII "SPLIT").
pub const SPLIT_SALT: u64 = 0x53_50_4C_49_54;
/// Domain tag of the draws made by [`TaskSet::sample`] (ASCII "SAMPLE").
const SAMPLE_SALT: u64 = 0x53_41_4D_50_4C_45;

/// Which side of the train/eval split a task set covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Tasks the policy is trained on.
    Train,
    /// Held-out tasks the policy is evaluated on.
    Eval,
}

impl Split {
    fn tag(self) -> u64 {
        match self {
            Split::Train => 0,
            Split::Eval => 1,
        }
    }
}

/// Row indices of each split of a finite task family, ascending.
#[derive(Debug, Clone, PartialEq)]
struct Rows {
    train: Vec<u64>,
    eval: Vec<u64>,
}

impl Rows {
    fn of(&self, split: Split) -> &[u64] {
        match split {
            Split::Train => &self.train,
            Split::Eval => &self.eval,
        }
    }
}

/// One split of an environment family: the ids it contains, seeded training batches and fixed
/// evaluation tasks. See the [module docs](self) for the split rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSet {
    spec: EnvSpec,
    split: Split,
    /// `None` for generated environments (ids split by range).
    rows: Option<Rows>,
}

impl TaskSet {
    /// The `split` side of `spec`, holding out [`DEFAULT_EVAL_FRACTION`] of `qa-file` rows.
    pub fn new(spec: EnvSpec, split: Split) -> TaskSet {
        TaskSet::build(spec, split, DEFAULT_EVAL_FRACTION)
    }

    /// Like [`TaskSet::new`] with another share of `qa-file` rows held out (it does not affect
    /// generated environments, whose splits are id ranges). Errors unless `0 < fraction < 1`.
    pub fn with_eval_fraction(
        spec: EnvSpec,
        split: Split,
        fraction: f64,
    ) -> Result<TaskSet, DatasetError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DatasetError::BadEvalFraction { fraction });
        }
        Ok(TaskSet::build(spec, split, fraction))
    }

    fn build(spec: EnvSpec, split: Split, fraction: f64) -> TaskSet {
        let rows = spec.task_count().map(|n| split_rows(n, fraction));
        TaskSet { spec, split, rows }
    }

    /// The environment family.
    pub fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    /// The side of the split this set covers.
    pub fn split(&self) -> Split {
        self.split
    }

    /// Number of tasks in this split: `2^32` for generated environments, the number of rows in
    /// this split for `qa-file`.
    pub fn len(&self) -> u64 {
        match &self.rows {
            None => TRAIN_IDS.end - TRAIN_IDS.start,
            Some(rows) => rows.of(self.split).len() as u64,
        }
    }

    /// Whether this split has no tasks (only an eval split of a one-row `qa-file`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which split task `id` belongs to in this family, or `None` when it is no task of it (a
    /// generated id at or above `2^33`, or a row index past the end of the file).
    pub fn split_of(&self, id: u64) -> Option<Split> {
        match &self.rows {
            None if TRAIN_IDS.contains(&id) => Some(Split::Train),
            None if EVAL_IDS.contains(&id) => Some(Split::Eval),
            None => None,
            Some(rows) if rows.train.binary_search(&id).is_ok() => Some(Split::Train),
            Some(rows) if rows.eval.binary_search(&id).is_ok() => Some(Split::Eval),
            Some(_) => None,
        }
    }

    /// Whether task `id` is in this set's split.
    pub fn contains(&self, id: u64) -> bool {
        self.split_of(id) == Some(self.split)
    }

    /// The first `n` tasks of this split, lowest ids first; fewer when the split is smaller.
    /// Independent of any seed.
    pub fn first(&self, n: usize) -> Vec<u64> {
        self.first_of(self.split, n)
    }

    /// The first `n` eval tasks of this family (whichever split this set covers), lowest ids
    /// first; fewer when the eval split is smaller. Independent of any seed, so every run is
    /// evaluated on the same held-out tasks.
    pub fn eval_ids(&self, n: usize) -> Vec<u64> {
        self.first_of(Split::Eval, n)
    }

    fn first_of(&self, split: Split, n: usize) -> Vec<u64> {
        match &self.rows {
            None => {
                let range = match split {
                    Split::Train => TRAIN_IDS,
                    Split::Eval => EVAL_IDS,
                };
                let n = (n as u64).min(range.end - range.start);
                (range.start..range.start + n).collect()
            }
            Some(rows) => rows.of(split).iter().take(n).copied().collect(),
        }
    }

    /// `count` task ids of this split for training step `step`, a pure function of
    /// `(split, step, count, seed)`.
    ///
    /// - Generated environments: `count` distinct ids drawn uniformly from the split's range with
    ///   `rng_for(&[seed, step, SAMPLE_SALT, split])` (at most `2^32`); a smaller `count` gives a
    ///   prefix of a larger one.
    /// - `qa-file`: the batches walk through shuffles of the split's rows, one shuffle per epoch
    ///   (seeded by `(seed, epoch)`); step `s` takes stream positions `s * count .. (s + 1) *
    ///   count` (its rows are distinct: where a batch straddles two epochs, a row the new epoch
    ///   repeats is skipped for the next one in that epoch's order). With a fixed `count` every
    ///   row is seen once per epoch; a `count` above the number of rows gives every row once.
    ///
    /// An empty split gives an empty batch.
    pub fn sample(&self, step: u64, count: usize, seed: u64) -> Vec<u64> {
        match &self.rows {
            None => {
                let range = match self.split {
                    Split::Train => TRAIN_IDS,
                    Split::Eval => EVAL_IDS,
                };
                let count = (count as u64).min(range.end - range.start) as usize;
                let mut rng = rng_for(&[seed, step, SAMPLE_SALT, self.split.tag()]);
                let mut seen = HashSet::with_capacity(count);
                let mut ids = Vec::with_capacity(count);
                while ids.len() < count {
                    let id = rng.random_range(range.clone());
                    if seen.insert(id) {
                        ids.push(id);
                    }
                }
                ids
            }
            Some(rows) => {
                let rows = rows.of(self.split);
                if rows.is_empty() {
                    return Vec::new();
                }
                let n = rows.len() as u128;
                let count = count.min(rows.len());
                let mut pos = u128::from(step) * count as u128;
                let mut epoch = None;
                let mut order = Vec::new();
                let mut seen = HashSet::with_capacity(count);
                let mut ids = Vec::with_capacity(count);
                while ids.len() < count {
                    let e = (pos / n) as u64;
                    if epoch != Some(e) {
                        order = rows.to_vec();
                        order.shuffle(&mut rng_for(&[seed, SAMPLE_SALT, self.split.tag(), e]));
                        epoch = Some(e);
                    }
                    let id = order[(pos % n) as usize];
                    pos += 1;
                    if seen.insert(id) {
                        ids.push(id);
                    }
                }
                ids
            }
        }
    }
}

/// Splits row indices `0..rows` by the hash rule of the [module docs](self).
fn split_rows(rows: u64, fraction: f64) -> Rows {
    let hash = |row: u64| uniform(&[SPLIT_SALT, row]);
    let (mut eval, mut train): (Vec<u64>, Vec<u64>) = (0..rows).partition(|&r| hash(r) < fraction);
    if rows == 1 {
        train = vec![0];
        eval.clear();
    } else if rows >= 2 && eval.is_empty() {
        let (i, _) = train
            .iter()
            .enumerate()
            .min_by(|a, b| hash(*a.1).total_cmp(&hash(*b.1)))
            .expect("rows >= 2, so train is not empty");
        eval.push(train.remove(i));
    } else if rows >= 2 && train.is_empty() {
        let (i, _) = eval
            .iter()
            .enumerate()
            .max_by(|a, b| hash(*a.1).total_cmp(&hash(*b.1)))
            .expect("rows >= 2, so eval is not empty");
        train.push(eval.remove(i));
    }
    Rows { train, eval }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envs::qa::{QaConfig, QaPair, Verifier};

    fn qa_spec(rows: usize) -> EnvSpec {
        let pairs = (0..rows)
            .map(|i| QaPair {
                prompt: format!("What is {i} + 1?"),
                answer: (i + 1).to_string(),
                ..Default::default()
            })
            .collect();
        EnvSpec::QaFile(QaConfig::new(pairs, Verifier::Numeric).unwrap())
    }

    fn multihop() -> EnvSpec {
        EnvSpec::from_name("multihop", &[]).unwrap()
    }

    #[test]
    fn generated_splits_are_disjoint_ranges() {
        let train = TaskSet::new(multihop(), Split::Train);
        let eval = TaskSet::new(multihop(), Split::Eval);
        for seed in 0..5 {
            for step in 0..20 {
                for id in train.sample(step, 16, seed) {
                    assert!(TRAIN_IDS.contains(&id));
                    assert!(train.contains(id) && !eval.contains(id));
                }
                for id in eval.sample(step, 16, seed) {
                    assert!(EVAL_IDS.contains(&id));
                    assert!(eval.contains(id) && !train.contains(id));
                }
            }
        }
        let eval_ids = train.eval_ids(100);
        assert_eq!(eval_ids, eval.first(100));
        assert_eq!(eval_ids[0], 1 << 32);
        assert_eq!(eval_ids[99], (1 << 32) + 99);
        assert!(
            eval_ids
                .iter()
                .all(|&id| eval.contains(id) && !train.contains(id))
        );
        assert_eq!(train.first(3), vec![0, 1, 2]);
        assert_eq!(train.split_of(1 << 33), None);
    }

    #[test]
    fn generated_sampling_is_deterministic_and_distinct() {
        let train = TaskSet::new(multihop(), Split::Train);
        let a = train.sample(3, 64, 11);
        assert_eq!(a, train.sample(3, 64, 11));
        assert_eq!(a.len(), 64);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 64);
        assert_ne!(a, train.sample(4, 64, 11));
        assert_ne!(a, train.sample(3, 64, 12));
        assert_eq!(train.sample(3, 8, 11), a[..8]);
        // Eval ids do not depend on the seed or the split the set was built for.
        let eval = TaskSet::new(multihop(), Split::Eval);
        assert_eq!(eval.eval_ids(10), train.eval_ids(10));
    }

    #[test]
    fn qa_split_is_disjoint_complete_and_fixed() {
        for rows in [2usize, 3, 10, 57, 1000] {
            let train = TaskSet::new(qa_spec(rows), Split::Train);
            let eval = TaskSet::new(qa_spec(rows), Split::Eval);
            assert_eq!(train, TaskSet::new(qa_spec(rows), Split::Train));
            let t = train.first(usize::MAX);
            let e = eval.first(usize::MAX);
            assert!(!t.is_empty() && !e.is_empty(), "rows {rows}");
            assert_eq!(t.len() + e.len(), rows);
            assert!(t.iter().all(|id| !e.contains(id)));
            let mut all: Vec<u64> = t.iter().chain(&e).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..rows as u64).collect::<Vec<_>>());
            assert_eq!(train.eval_ids(usize::MAX), e);
            for seed in 0..3 {
                for step in 0..10 {
                    assert!(
                        train
                            .sample(step, 7, seed)
                            .iter()
                            .all(|&id| !e.contains(&id))
                    );
                    assert!(
                        eval.sample(step, 7, seed)
                            .iter()
                            .all(|&id| !t.contains(&id))
                    );
                }
            }
        }
        // About a tenth of a large file is held out.
        let eval = TaskSet::new(qa_spec(1000), Split::Eval);
        assert!((70..=130).contains(&eval.len()), "{}", eval.len());
    }

    #[test]
    fn qa_split_keeps_a_row_on_each_side() {
        let tiny = TaskSet::with_eval_fraction(qa_spec(2), Split::Train, 0.001).unwrap();
        assert_eq!((tiny.len(), tiny.eval_ids(9).len()), (1, 1));
        let huge = TaskSet::with_eval_fraction(qa_spec(2), Split::Train, 0.999).unwrap();
        assert_eq!((huge.len(), huge.eval_ids(9).len()), (1, 1));
        let one = TaskSet::new(qa_spec(1), Split::Train);
        assert_eq!(one.first(5), vec![0]);
        assert!(one.eval_ids(5).is_empty());
        let one_eval = TaskSet::new(qa_spec(1), Split::Eval);
        assert!(one_eval.is_empty());
        assert!(one_eval.sample(0, 4, 0).is_empty());
    }

    #[test]
    fn qa_sampling_walks_epochs() {
        let train = TaskSet::new(qa_spec(50), Split::Train);
        let n = train.len() as usize;
        let count = 4;
        let steps = n.div_ceil(count) * 3;
        let stream: Vec<u64> = (0..steps as u64)
            .flat_map(|s| train.sample(s, count, 5))
            .collect();
        let mut first_epoch = stream[..n].to_vec();
        first_epoch.sort_unstable();
        assert_eq!(first_epoch, train.first(usize::MAX));
        assert_ne!(stream[..n], stream[n..2 * n], "each epoch is reshuffled");
        assert_eq!(train.sample(2, count, 5), stream[2 * count..3 * count]);
        assert_ne!(train.sample(2, count, 6), train.sample(2, count, 5));
    }

    /// A batch never repeats a row, also where it straddles two epochs or asks for more rows
    /// than the split has (then it has every row once).
    #[test]
    fn qa_batches_are_distinct() {
        let mut straddled = 0;
        for rows in [3usize, 10, 23] {
            let train = TaskSet::new(qa_spec(rows), Split::Train);
            let n = train.len() as usize;
            for count in [2, 3, 7, n, n + 5] {
                for step in 0..12 {
                    let ids = train.sample(step, count, 1);
                    assert_eq!(ids.len(), count.min(n));
                    let distinct: HashSet<_> = ids.iter().collect();
                    assert_eq!(distinct.len(), ids.len(), "rows {rows} count {count}");
                    let start = step as usize * count;
                    straddled += usize::from(start / n != (start + count - 1) / n);
                }
            }
        }
        assert!(straddled > 10, "the cases cover epoch boundaries");
    }

    #[test]
    fn bad_eval_fraction_is_rejected() {
        for f in [0.0, 1.0, -0.5, f64::NAN] {
            let err = TaskSet::with_eval_fraction(multihop(), Split::Train, f).unwrap_err();
            assert!(matches!(err, DatasetError::BadEvalFraction { .. }));
        }
    }
}
