//! Tokenizers: text <-> token ids (DESIGN §2).

/// Maps text to token ids and back. The default is [`ByteTokenizer`]; the trait leaves room for a
/// Hugging Face `tokenizer.json` tokenizer.
pub trait Tokenizer: Send + Sync {
    /// Number of token ids (the model's vocabulary size must be at least this).
    fn vocab_size(&self) -> usize;
    /// Beginning-of-sequence token.
    fn bos(&self) -> u32;
    /// End-of-action token: the policy ends an action by sampling it.
    fn eos(&self) -> u32;
    /// Padding token (never sampled, never trained on).
    fn pad(&self) -> u32;
    /// Encodes text (no special tokens added).
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Decodes ids to text; special tokens are dropped and invalid UTF-8 is replaced (lossy), so
    /// any sampled sequence decodes.
    fn decode(&self, tokens: &[u32]) -> String;
    /// Whether a text piece may start at `token`: decoding two runs cut before such a token and
    /// concatenating gives the same text as decoding them together. Samplers cut rollout-tree
    /// nodes only before such tokens, so node texts always add up to the trajectory text.
    /// By default every token is a boundary.
    fn can_split_before(&self, token: u32) -> bool {
        let _ = token;
        true
    }
}

/// Byte-level tokenizer: ids 0..=255 are bytes, then `<pad>` = 256, `<bos>` = 257, `<eos>` = 258.
/// Deterministic and file-free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// `<pad>`.
    pub const PAD: u32 = 256;
    /// `<bos>`.
    pub const BOS: u32 = 257;
    /// `<eos>`.
    pub const EOS: u32 = 258;
    /// Vocabulary size (259).
    pub const VOCAB: usize = 259;
}

impl Tokenizer for ByteTokenizer {
    fn vocab_size(&self) -> usize {
        Self::VOCAB
    }
    fn bos(&self) -> u32 {
        Self::BOS
    }
    fn eos(&self) -> u32 {
        Self::EOS
    }
    fn pad(&self) -> u32 {
        Self::PAD
    }
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }
    fn decode(&self, tokens: &[u32]) -> String {
        let bytes: Vec<u8> = tokens
            .iter()
            .filter(|&&t| t < 256)
            .map(|&t| t as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    /// UTF-8 continuation bytes (`0x80..=0xBF`) are not boundaries: cutting before one could
    /// split a character.
    fn can_split_before(&self, token: u32) -> bool {
        !(0x80..=0xBF).contains(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip_and_specials() {
        let t = ByteTokenizer;
        let ids = t.encode("search[Kelda é]");
        assert_eq!(ids.len(), "search[Kelda é]".len());
        let mut with_specials = vec![t.bos()];
        with_specials.extend(&ids);
        with_specials.push(t.eos());
        assert_eq!(t.decode(&with_specials), "search[Kelda é]");
        // A lone continuation byte decodes lossily instead of failing.
        assert_eq!(t.decode(&[0x80]), "\u{FFFD}");
    }

    #[test]
    fn cuts_at_boundaries_keep_text_concatenative() {
        let t = ByteTokenizer;
        // Valid, truncated and invalid UTF-8 runs, cut at every allowed position.
        let cases: [&[u32]; 4] = [
            &[0xC3, 0xA9, b'a' as u32, 0xE2, 0x82, 0xAC],
            &[0xE2, 0x82, b'a' as u32, 0xC3],
            &[0x80, 0x80, b'x' as u32, 0xFF, 0xC3, b'y' as u32],
            &[0xF0, 0x9F, 0x8C, 0xB3, b'!' as u32],
        ];
        for tokens in cases {
            let whole = t.decode(tokens);
            for cut in 1..tokens.len() {
                if t.can_split_before(tokens[cut]) {
                    let joined = t.decode(&tokens[..cut]) + &t.decode(&tokens[cut..]);
                    assert_eq!(joined, whole, "{tokens:?} cut at {cut}");
                }
            }
        }
    }
}
