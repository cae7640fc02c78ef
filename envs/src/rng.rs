//! Seed derivation: every random draw in arbor comes from an RNG seeded by [`derive()`] over the
//! identifiers of what is being drawn (run seed, step, task, node, position, ...), so results do not
//! depend on batch composition, scheduling order or thread count.

use rand::SeedableRng;
use rand::rngs::StdRng;

/// SplitMix64 finaliser: a bijective 64-bit mixer with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the draw identified by `parts` (order matters): `derive(&[seed, step, task])`.
pub fn derive(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x6A09_E667_F3BC_C909, |h, &p| mix64(h ^ mix64(p)))
}

/// A seeded RNG for the draw identified by `parts`.
pub fn rng_for(parts: &[u64]) -> StdRng {
    StdRng::seed_from_u64(derive(parts))
}

/// A uniform float in `[0, 1)` for the draw identified by `parts`, without building an RNG.
pub fn uniform(parts: &[u64]) -> f64 {
    (derive(parts) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_depends_on_every_part_and_order() {
        let a = derive(&[1, 2, 3]);
        assert_eq!(a, derive(&[1, 2, 3]));
        assert_ne!(a, derive(&[1, 2, 4]));
        assert_ne!(a, derive(&[3, 2, 1]));
        assert_ne!(derive(&[0]), derive(&[0, 0]));
    }

    #[test]
    fn uniform_is_in_unit_interval() {
        for i in 0..10_000u64 {
            let u = uniform(&[i]);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
