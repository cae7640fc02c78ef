//! `maze` — multi-turn grid navigation with walls and a text view.
//!
//! ```text
//! Move A to G (# is wall). Use move[up|down|left|right].
//! A.#..
//! .#...
//! ...#.
//! #...G
//! .....
//! ```
//!
//! Each task id draws a `size` × `size` grid whose cells are walls with probability `walls`, a
//! start and a goal at Manhattan distance at least `size - 1`. If the goal is not reachable the
//! grid is redrawn (up to 20 times), then a path is carved. The grid edge acts as a wall.
//!
//! # Actions
//! `move[up|down|left|right]` (direction case-insensitive). Every observation shows the whole grid
//! again, rows of `#` (wall), `.` (free), `A` (agent) and `G` (goal). A move into a wall or off the
//! grid is a valid call that does nothing ([`Outcome::Continue`], "Blocked."). Reaching `G` gives
//! reward 1 and [`Outcome::Solved`]. Text that does not parse, another tool or an unknown
//! direction is [`Outcome::Malformed`] and costs a turn. The step that uses the last turn ends the
//! episode: [`Outcome::OutOfTurns`] for a move, [`Outcome::Malformed`] (with `done = true`) for a
//! malformed action.
//!
//! # Knobs
//! - `size` (default 5, 3..=12) — grid side (the horizon grows with it).
//! - `walls` (default 0.25, 0.0..=0.4) — wall density.
//! - `max_turns` (default 0 = auto: twice the shortest path plus 2) — the turn limit.
//!
//! # Expert
//! Follows a shortest path (BFS distances from the goal, ties broken up, down, left, right). Its
//! mistake is a move into a wall or away from the goal, offered only if the expert can still reach
//! the goal in the turns left after it.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::grammar::clip;
use crate::knobs::{KnobInfo, Knobs};
use crate::rng::derive;
use crate::{Env, Expert, Outcome, Step, parse_action};

/// Seed tag for maze tasks ("mazegrid" in ASCII).
const SEED_TAG: u64 = 0x6d61_7a65_6772_6964;
/// Distance of a cell from which the goal cannot be reached.
const UNREACHABLE: u32 = u32::MAX;

/// Configuration of the `maze` environment; see the module docs for each knob.
#[derive(Debug, Clone, PartialEq)]
pub struct MazeConfig {
    /// Grid side (3..=12). Default 5.
    pub size: usize,
    /// Wall density (0.0..=0.4). Default 0.25.
    pub walls: f64,
    /// Turn limit; 0 means auto (twice the shortest path plus 2). Default 0.
    pub max_turns: usize,
}

impl Default for MazeConfig {
    fn default() -> Self {
        MazeConfig {
            size: 5,
            walls: 0.25,
            max_turns: 0,
        }
    }
}

impl Knobs for MazeConfig {
    const KNOBS: &'static [KnobInfo] = &[
        KnobInfo {
            name: "size",
            default: "5",
            doc: "grid side, 3..=12 (the horizon)",
        },
        KnobInfo {
            name: "walls",
            default: "0.25",
            doc: "wall density, 0.0..=0.4",
        },
        KnobInfo {
            name: "max_turns",
            default: "0",
            doc: "turn limit, 0..=512; 0 = auto (2 x shortest path + 2)",
        },
    ];

    fn set_knob(&mut self, name: &str, value: &str) -> Result<(), String> {
        let value = value.trim();
        match name {
            "size" => match value.parse::<usize>() {
                Ok(v @ 3..=12) => self.size = v,
                _ => return Err("an integer in 3..=12".to_string()),
            },
            "walls" => match value.parse::<f64>() {
                Ok(v) if (0.0..=0.4).contains(&v) => self.walls = v,
                _ => return Err("a number in 0.0..=0.4".to_string()),
            },
            "max_turns" => match value.parse::<usize>() {
                Ok(v @ 0..=512) => self.max_turns = v,
                _ => return Err("an integer in 0..=512".to_string()),
            },
            _ => return Err(format!("unknown knob '{name}'")),
        }
        Ok(())
    }

    fn knob_values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("size", self.size.to_string()),
            ("walls", self.walls.to_string()),
            ("max_turns", self.max_turns.to_string()),
        ]
    }
}

/// A move direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
    Left,
    Right,
}

const DIRS: [Dir; 4] = [Dir::Up, Dir::Down, Dir::Left, Dir::Right];

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
            Dir::Left => "left",
            Dir::Right => "right",
        }
    }

    fn parse(text: &str) -> Option<Dir> {
        DIRS.into_iter()
            .find(|d| text.eq_ignore_ascii_case(d.name()))
    }
}

/// The cell one step from `cell` in `dir` on a `size` × `size` grid, if it is on the grid.
fn neighbour(size: usize, cell: usize, dir: Dir) -> Option<usize> {
    let (r, c) = (cell / size, cell % size);
    match dir {
        Dir::Up if r > 0 => Some(cell - size),
        Dir::Down if r + 1 < size => Some(cell + size),
        Dir::Left if c > 0 => Some(cell - 1),
        Dir::Right if c + 1 < size => Some(cell + 1),
        _ => None,
    }
}

/// The static part of a task.
#[derive(Debug)]
struct Grid {
    size: usize,
    wall: Vec<bool>,
    start: usize,
    goal: usize,
    /// BFS distance of each cell to the goal ([`UNREACHABLE`] for walls and cut-off cells).
    dist: Vec<u32>,
    prompt: String,
    max_turns: usize,
}

impl Grid {
    /// Where a move from `cell` in `dir` ends (`None`: blocked by a wall or the edge).
    fn target(&self, cell: usize, dir: Dir) -> Option<usize> {
        neighbour(self.size, cell, dir).filter(|&n| !self.wall[n])
    }

    fn distances(size: usize, wall: &[bool], goal: usize) -> Vec<u32> {
        let mut dist = vec![UNREACHABLE; size * size];
        let mut queue = VecDeque::from([goal]);
        dist[goal] = 0;
        while let Some(cell) = queue.pop_front() {
            for d in DIRS {
                if let Some(n) = neighbour(size, cell, d)
                    && !wall[n]
                    && dist[n] == UNREACHABLE
                {
                    dist[n] = dist[cell] + 1;
                    queue.push_back(n);
                }
            }
        }
        dist
    }

    fn generate(cfg: &MazeConfig, task_id: u64) -> Grid {
        let size = cfg.size.clamp(3, 12);
        let density = if cfg.walls.is_finite() {
            cfg.walls.clamp(0.0, 0.4)
        } else {
            0.0
        };
        let mut rng =
            StdRng::seed_from_u64(derive(&[SEED_TAG, task_id, size as u64, density.to_bits()]));
        let cells = size * size;
        let manhattan =
            |a: usize, b: usize| (a / size).abs_diff(b / size) + (a % size).abs_diff(b % size);
        let mut attempt = 0;
        let (wall, start, goal, dist) = loop {
            attempt += 1;
            let mut wall: Vec<bool> = (0..cells).map(|_| rng.random_bool(density)).collect();
            let start = rng.random_range(0..cells);
            // Rejection sampling over far cells; the opposite corner of the start's quadrant is
            // always far enough, so fall back to it.
            let goal = (0..50)
                .map(|_| rng.random_range(0..cells))
                .find(|&g| manhattan(start, g) + 1 >= size)
                .unwrap_or_else(|| {
                    let r = if start / size < size / 2 { size - 1 } else { 0 };
                    let c = if start % size < size / 2 { size - 1 } else { 0 };
                    r * size + c
                });
            wall[start] = false;
            wall[goal] = false;
            let dist = Grid::distances(size, &wall, goal);
            if dist[start] != UNREACHABLE {
                break (wall, start, goal, dist);
            }
            if attempt >= 20 {
                // Carve an L-shaped corridor: along the start's row, then the goal's column.
                let (sr, sc) = (start / size, start % size);
                let (gr, gc) = (goal / size, goal % size);
                for c in sc.min(gc)..=sc.max(gc) {
                    wall[sr * size + c] = false;
                }
                for r in sr.min(gr)..=sr.max(gr) {
                    wall[r * size + gc] = false;
                }
                let dist = Grid::distances(size, &wall, goal);
                break (wall, start, goal, dist);
            }
        };
        let max_turns = if cfg.max_turns == 0 {
            2 * dist[start] as usize + 2
        } else {
            cfg.max_turns
        };
        let mut grid = Grid {
            size,
            wall,
            start,
            goal,
            dist,
            prompt: String::new(),
            max_turns,
        };
        grid.prompt = format!(
            "Move A to G (# is wall). Use move[up|down|left|right].\n{}",
            grid.render(start)
        );
        grid
    }

    /// The grid as text, one line per row, with the agent at `agent`.
    fn render(&self, agent: usize) -> String {
        let mut s = String::with_capacity(self.size * (self.size + 1));
        for r in 0..self.size {
            for c in 0..self.size {
                let cell = r * self.size + c;
                s.push(if cell == agent {
                    'A'
                } else if cell == self.goal {
                    'G'
                } else if self.wall[cell] {
                    '#'
                } else {
                    '.'
                });
            }
            s.push('\n');
        }
        s
    }
}

/// One `maze` task: a shared grid plus the episode state (position, turns).
#[derive(Debug, Clone)]
pub struct Maze {
    grid: Arc<Grid>,
    pos: usize,
    turn: usize,
    done: bool,
}

impl Maze {
    /// Builds task `task_id` of the family `cfg`, deterministically.
    pub fn generate(cfg: &MazeConfig, task_id: u64) -> Maze {
        let grid = Grid::generate(cfg, task_id);
        Maze {
            pos: grid.start,
            grid: Arc::new(grid),
            turn: 0,
            done: false,
        }
    }

    /// Length of the shortest path from the agent's position to the goal.
    pub fn distance_to_goal(&self) -> usize {
        self.grid.dist[self.pos] as usize
    }

    /// Turns taken so far.
    pub fn turns_taken(&self) -> usize {
        self.turn
    }

    fn turns_left(&self) -> usize {
        self.grid.max_turns.saturating_sub(self.turn)
    }

    /// Counts the turn of an action that did not reach the goal; the last turn ends the episode.
    fn go_on(&mut self, mut observation: String, outcome: Outcome) -> Step {
        self.turn += 1;
        if self.turn >= self.grid.max_turns {
            self.done = true;
            observation.push_str("Out of turns.\n");
            let outcome = if outcome == Outcome::Malformed {
                Outcome::Malformed
            } else {
                Outcome::OutOfTurns
            };
            return Step {
                observation,
                reward: 0.0,
                done: true,
                outcome,
            };
        }
        Step {
            observation,
            reward: 0.0,
            done: false,
            outcome,
        }
    }
}

const USAGE: &str = "Use move[up|down|left|right].";

impl Env for Maze {
    fn prompt(&self) -> &str {
        &self.grid.prompt
    }

    fn step(&mut self, action: &str) -> Step {
        if self.done {
            return Step {
                observation: "\nThe episode is over.\n".to_string(),
                reward: 0.0,
                done: true,
                outcome: Outcome::Finished,
            };
        }
        let dir = match parse_action(action) {
            Err(reason) => {
                return self.go_on(format!("\n{reason}. {USAGE}\n"), Outcome::Malformed);
            }
            Ok(p) if p.name != "move" => {
                let obs = format!("\nUnknown tool '{}'. {USAGE}\n", clip(p.name));
                return self.go_on(obs, Outcome::Malformed);
            }
            Ok(p) => match Dir::parse(p.arg) {
                Some(d) => d,
                None => {
                    let obs = format!("\nUnknown direction '{}'. {USAGE}\n", clip(p.arg));
                    return self.go_on(obs, Outcome::Malformed);
                }
            },
        };
        match self.grid.target(self.pos, dir) {
            Some(next) if next == self.grid.goal => {
                self.pos = next;
                self.turn += 1;
                self.done = true;
                Step {
                    observation: "\nReached G.\n".to_string(),
                    reward: 1.0,
                    done: true,
                    outcome: Outcome::Solved,
                }
            }
            Some(next) => {
                self.pos = next;
                let obs = format!("\n{}", self.grid.render(self.pos));
                self.go_on(obs, Outcome::Continue)
            }
            None => {
                let obs = format!("\nBlocked.\n{}", self.grid.render(self.pos));
                self.go_on(obs, Outcome::Continue)
            }
        }
    }

    fn max_turns(&self) -> usize {
        self.grid.max_turns
    }
}

impl Expert for Maze {
    fn expert_action(&self) -> String {
        let d = self.grid.dist[self.pos];
        let best = DIRS
            .into_iter()
            .find(|&dir| {
                self.grid
                    .target(self.pos, dir)
                    .is_some_and(|n| d != UNREACHABLE && self.grid.dist[n] + 1 == d)
            })
            .unwrap_or(Dir::Up);
        format!("move[{}]", best.name())
    }

    fn mistake_action(&self, seed: u64) -> Option<String> {
        let d = self.grid.dist[self.pos];
        if self.done || d == 0 || d == UNREACHABLE {
            return None;
        }
        let left_after = self.turns_left().checked_sub(1)?;
        let candidates: Vec<Dir> = DIRS
            .into_iter()
            .filter(|&dir| {
                let after = match self.grid.target(self.pos, dir) {
                    Some(n) => self.grid.dist[n],
                    None => d,
                };
                after > d - 1 && after as usize <= left_after
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let pick =
            candidates[(derive(&[seed, self.turn as u64]) % candidates.len() as u64) as usize];
        Some(format!("move[{}]", pick.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_connected_and_rendered() {
        for size in 3..=12 {
            let cfg = MazeConfig {
                size,
                walls: 0.4,
                max_turns: 0,
            };
            for id in 0..100 {
                let m = Maze::generate(&cfg, id);
                assert!(
                    m.distance_to_goal() >= size - 1 && m.distance_to_goal() < UNREACHABLE as usize
                );
                let p = m.prompt();
                assert!(p.ends_with('\n'));
                let view = p.split_once('\n').map_or("", |(_, v)| v);
                assert_eq!(view.lines().count(), size);
                assert!(view.lines().all(|l| l.len() == size));
                assert_eq!(view.matches('A').count(), 1);
                assert_eq!(view.matches('G').count(), 1);
                assert_eq!(m.max_turns(), 2 * m.distance_to_goal() + 2);
            }
        }
    }

    #[test]
    fn walls_and_edges_block() {
        let cfg = MazeConfig {
            size: 3,
            walls: 0.0,
            max_turns: 0,
        };
        // A task whose start is on the edge (most are: only the centre is not).
        let (mut m, d) = (0..)
            .find_map(|id| {
                let m = Maze::generate(&cfg, id);
                let d = DIRS
                    .into_iter()
                    .find(|&d| neighbour(3, m.pos, d).is_none())?;
                Some((m, d))
            })
            .unwrap();
        let before = m.pos;
        let s = m.step(&format!("move[{}]", d.name()));
        assert_eq!(s.outcome, Outcome::Continue);
        assert!(s.observation.starts_with("\nBlocked.\n"));
        assert_eq!(m.pos, before);
        let s = m.step("move[north]");
        assert_eq!(s.outcome, Outcome::Malformed);
    }

    #[test]
    fn a_mistake_is_offered_unless_every_move_is_optimal() {
        let cfg = MazeConfig::default();
        for id in 0..500 {
            let m = Maze::generate(&cfg, id);
            let d = m.grid.dist[m.pos];
            let all_optimal = DIRS.into_iter().all(|dir| {
                m.grid
                    .target(m.pos, dir)
                    .is_some_and(|n| m.grid.dist[n] + 1 == d)
            });
            assert_eq!(
                m.mistake_action(id).is_none(),
                all_optimal,
                "{}",
                m.prompt()
            );
            if let Some(a) = m.mistake_action(id) {
                let mut after = m.clone();
                after.step(&a);
                assert!(after.distance_to_goal() >= m.distance_to_goal());
            }
        }
        // No mistake when the turns left are exactly what the expert needs.
        let cfg = MazeConfig {
            max_turns: 4,
            walls: 0.0,
            size: 3,
        };
        let m = (0..)
            .map(|id| Maze::generate(&cfg, id))
            .find(|m| m.distance_to_goal() == 4);
        assert_eq!(m.unwrap().mistake_action(0), None);
    }
}
