//! Tokenizers: text <-> token ids (DESIGN §2).
//!
//! # Map
//! - [`Tokenizer`] — the trait samplers, demonstrations and the trainer use (`&dyn Tokenizer`).
//! - [`ByteTokenizer`] — the default: 256 byte tokens + `<pad>`, `<bos>`, `<eos>`, no files.
//! - [`HfTokenizer`] — a Hugging Face `tokenizer.json` (through the `tokenizers` crate) with the
//!   model's special tokens; [`crate::hf::load_model_dir`] builds one from a model directory.
//!
//! # Decoding while tokens stream
//! Samplers never parse partial text: an action's tokens are collected as they are sampled, and
//! the action text handed to the environment is `decode(all tokens of the action)` once the
//! action ended (end-of-sequence token or length cap). Byte-level BPE tokens may hold half a
//! UTF-8 character, so decoding a prefix can end in U+FFFD; decoding the whole list never
//! splits a character. Rollout-tree nodes cut an action into pieces only before tokens where
//! [`Tokenizer::can_split_before`] holds, so the node texts still add up to the action text.

/// Maps text to token ids and back. The default is [`ByteTokenizer`]; [`HfTokenizer`] reads a
/// Hugging Face `tokenizer.json`.
pub trait Tokenizer: Send + Sync {
    /// Number of token ids (the model's vocabulary size must be at least this).
    fn vocab_size(&self) -> usize;
    /// Beginning-of-sequence token.
    fn bos(&self) -> u32;
    /// Whether a transcript starts with [`Tokenizer::bos`]: the tokenizer's own setting
    /// (SmolLM2 adds none). Default: true.
    fn add_bos(&self) -> bool {
        true
    }
    /// The prompt's tokens as the policy sees them: [`Tokenizer::bos`] where the tokenizer
    /// adds one, then the encoded text.
    fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut tokens = if self.add_bos() {
            vec![self.bos()]
        } else {
            Vec::new()
        };
        tokens.extend(self.encode(text));
        tokens
    }
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

/// Special token ids of an [`HfTokenizer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence: the first token of every transcript.
    pub bos: u32,
    /// End of action: the policy ends an action by sampling it.
    pub eos: u32,
    /// Padding (never sampled, never trained on).
    pub pad: u32,
}

/// How the tokenizer's decoder turns tokens into text, as far as cutting a token list matters
/// (see [`HfTokenizer::can_split_before`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeScheme {
    /// GPT-2 byte-level decoding (Llama 3, Qwen2, SmolLM2, Mistral Nemo): every token is a run
    /// of bytes, the whole list's bytes are decoded as UTF-8, invalid sequences lossily.
    ByteLevel,
    /// SentencePiece-style decoding (Llama 2, Mistral 7B): `▁` stands for a space and a leading
    /// space of the text is dropped, `<0xNN>` tokens are bytes (byte fallback).
    SentencePiece,
    /// Any other decoder (or none): no rule is known, so no token is a safe cut.
    Opaque,
}

/// A Hugging Face `tokenizer.json` tokenizer behind the [`Tokenizer`] trait.
///
/// - `encode` is `tokenizer.encode(text, add_special_tokens = false)` (like Python's
///   `tokenizer(text, add_special_tokens=False)`): no BOS/EOS or template is added, and the
///   text of a registered special token (e.g. `<|im_start|>`) in the input becomes that token.
/// - `decode` drops special tokens (those the tokenizer marks special, plus the BOS, EOS and
///   padding ids) and ids the tokenizer does not know, then runs the tokenizer's decoder; byte
///   sequences that are not UTF-8 come out as U+FFFD, so any sampled sequence decodes.
/// - `vocab_size` is the largest token id plus one; the model's embedding may be larger
///   (Qwen2 pads it), and ids beyond the tokenizer's decode to nothing.
/// - `can_split_before` follows the [`DecodeScheme`] of the decoder, computed once per token
///   when the tokenizer is built; see [`HfTokenizer::can_split_before`].
///
/// Cloning is cheap (the tokenizer is shared).
#[derive(Clone)]
pub struct HfTokenizer {
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    /// The `tokenizer.json` text it was built from (written back verbatim by
    /// [`crate::hf::save_model_dir`]).
    json: std::sync::Arc<str>,
    special: SpecialTokens,
    vocab_size: usize,
    scheme: DecodeScheme,
    /// `boundary[id]`: whether a cut before `id` keeps decoding concatenative (the BOS, EOS and
    /// padding ids are excluded separately).
    boundary: std::sync::Arc<[bool]>,
    /// [`Tokenizer::add_bos`].
    add_bos: bool,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("special", &self.special)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl HfTokenizer {
    /// The same tokenizer with [`Tokenizer::add_bos`] set to `add_bos` (a GGUF file's
    /// `tokenizer.ggml.add_bos_token`).
    pub fn with_add_bos(mut self, add_bos: bool) -> Self {
        self.add_bos = add_bos;
        self
    }

    /// Builds a tokenizer from the text of a `tokenizer.json` file with the given special ids.
    /// `origin` names the file in errors. Fails ([`crate::Error::Tokenizer`]) when the
    /// text is not a tokenizer the `tokenizers` crate reads.
    pub fn from_json(
        json: &str,
        special: SpecialTokens,
        origin: &std::path::Path,
    ) -> Result<Self, crate::Error> {
        let fail = |reason: String| crate::Error::Tokenizer {
            path: origin.to_path_buf(),
            reason,
        };
        let inner =
            tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| fail(e.to_string()))?;
        // The decoder section decides where cuts are safe; read it from the JSON itself
        // (serde skips the rest of the file without building it).
        #[derive(serde::Deserialize)]
        struct DecoderSection {
            #[serde(default)]
            decoder: serde_json::Value,
        }
        let section: DecoderSection =
            serde_json::from_str(json).map_err(|e| fail(e.to_string()))?;
        let scheme = decode_scheme(&section.decoder);
        let replacement = metaspace_replacement(&section.decoder);
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let added = inner.get_added_vocabulary();
        let alphabet = byte_level_alphabet();
        let boundary: Vec<bool> = (0..vocab_size as u32)
            .map(|id| {
                let Some(token) = inner.id_to_token(id) else {
                    return false;
                };
                if added.is_special_token(&token) {
                    return false;
                }
                match scheme {
                    DecodeScheme::ByteLevel => match byte_level_first_byte(&token, &alphabet) {
                        Some(b) => !is_utf8_continuation(b),
                        None => false,
                    },
                    DecodeScheme::SentencePiece => {
                        !token.is_empty()
                            && !token.starts_with(replacement)
                            && !token.starts_with(' ')
                            && !is_byte_fallback_token(&token)
                    }
                    DecodeScheme::Opaque => false,
                }
            })
            .collect();
        Ok(HfTokenizer {
            inner: std::sync::Arc::new(inner),
            json: json.into(),
            special,
            vocab_size,
            scheme,
            boundary: boundary.into(),
            add_bos: true,
        })
    }

    /// Reads `path` (a `tokenizer.json`) and builds the tokenizer ([`HfTokenizer::from_json`]).
    pub fn from_file(path: &std::path::Path, special: SpecialTokens) -> Result<Self, crate::Error> {
        let json =
            std::fs::read_to_string(path).map_err(|source| crate::Error::io(path, source))?;
        Self::from_json(&json, special, path)
    }

    /// The special token ids.
    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    /// The same tokenizer with other special token ids (cheap: the tokenizer is shared).
    pub fn with_special_tokens(mut self, special: SpecialTokens) -> Self {
        self.special = special;
        self
    }

    /// How the decoder was classified (what [`HfTokenizer::can_split_before`] follows).
    pub fn decode_scheme(&self) -> DecodeScheme {
        self.scheme
    }

    /// The id of a token given by its text in the vocabulary (e.g. `"<|endoftext|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of token `id` in the vocabulary (e.g. `"<|im_end|>"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The `tokenizer.json` text this tokenizer was built from.
    pub fn json(&self) -> &str {
        &self.json
    }

    fn is_dropped(&self, id: u32) -> bool {
        id == self.special.bos || id == self.special.eos || id == self.special.pad
    }
}

impl Tokenizer for HfTokenizer {
    fn add_bos(&self) -> bool {
        self.add_bos
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn bos(&self) -> u32 {
        self.special.bos
    }
    fn eos(&self) -> u32 {
        self.special.eos
    }
    fn pad(&self) -> u32 {
        self.special.pad
    }
    /// Never panics: should the tokenizer fail on the whole text (a model without an unknown
    /// token meeting an unknown character), each character is encoded on its own and those it
    /// cannot encode are left out.
    fn encode(&self, text: &str) -> Vec<u32> {
        match self.inner.encode(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(_) => {
                let mut buf = [0u8; 4];
                text.chars()
                    .filter_map(|c| self.inner.encode(&*c.encode_utf8(&mut buf), false).ok())
                    .flat_map(|enc| enc.get_ids().to_vec())
                    .collect()
            }
        }
    }
    /// Never panics: should the decoder fail on the whole list, tokens are decoded one by one
    /// and those that fail are left out.
    fn decode(&self, tokens: &[u32]) -> String {
        let kept: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&t| !self.is_dropped(t))
            .collect();
        match self.inner.decode(&kept, true) {
            Ok(text) => text,
            Err(_) => kept
                .iter()
                .filter_map(|&t| self.inner.decode(&[t], true).ok())
                .collect(),
        }
    }
    /// Whether a cut before `token` keeps decoding concatenative, by [`DecodeScheme`]:
    /// - byte-level: the token's first byte is not a UTF-8 continuation byte (`0x80..=0xBF`).
    ///   Lossy UTF-8 decoding restarts at every other byte, so the text before and after the
    ///   cut decode independently. A token continuing a character (`"©"` after `"Ã"`) is not a
    ///   boundary.
    /// - SentencePiece: the token neither starts a word (`▁…`: its space would be dropped at
    ///   the start of a decode call) nor is a byte-fallback token (`<0xNN>`: runs of byte tokens
    ///   are decoded together). Word-continuation pieces are the safe cuts here.
    /// - opaque decoders: never.
    ///
    /// Special tokens (dropped when decoding) and unknown ids are never boundaries.
    fn can_split_before(&self, token: u32) -> bool {
        !self.is_dropped(token) && self.boundary.get(token as usize).copied().unwrap_or(false)
    }
}

/// Whether `b` continues a UTF-8 sequence (`0b10xx_xxxx`).
fn is_utf8_continuation(b: u8) -> bool {
    (0x80..=0xBF).contains(&b)
}

/// `<0xNN>`: a byte-fallback token.
fn is_byte_fallback_token(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && u8::from_str_radix(&token[3..5], 16).is_ok()
}

/// GPT-2's byte-level alphabet, from character code to byte: printable Latin-1 bytes
/// (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves, the other 68 bytes are written as
/// U+0100 onwards, in increasing byte order. Indexed by character code (`0..0x144`).
fn byte_level_alphabet() -> Vec<Option<u8>> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut table = vec![None; 0x144];
    let mut next = 0x100;
    for b in 0u32..0x100 {
        if printable(b) {
            table[b as usize] = Some(b as u8);
        } else {
            table[next] = Some(b as u8);
            next += 1;
        }
    }
    table
}

/// GPT-2's byte-level alphabet from byte to character (the inverse of
/// [`byte_level_alphabet`]).
#[cfg(any(test, feature = "test-util"))]
pub(crate) fn byte_level_chars() -> [char; 256] {
    let mut chars = ['\0'; 256];
    for (code, byte) in byte_level_alphabet().into_iter().enumerate() {
        if let Some(b) = byte {
            chars[b as usize] = char::from_u32(code as u32).expect("codes below 0x144 are chars");
        }
    }
    chars
}

/// The first byte the byte-level decoder produces for `token`: its alphabet characters mapped
/// back to bytes, or (for tokens with other characters, such as added tokens) the token's own
/// UTF-8, as the `tokenizers` decoder does. `None` for an empty token.
fn byte_level_first_byte(token: &str, alphabet: &[Option<u8>]) -> Option<u8> {
    let mapped = |c: char| alphabet.get(c as usize).copied().flatten();
    if token.chars().all(|c| mapped(c).is_some()) {
        token.chars().next().and_then(mapped)
    } else {
        token.bytes().next()
    }
}

/// The Metaspace replacement character declared in a `decoder` section (default `▁`).
fn metaspace_replacement(decoder: &serde_json::Value) -> char {
    let parts: Vec<&serde_json::Value> = match decoder.get("decoders") {
        Some(serde_json::Value::Array(items)) => items.iter().collect(),
        _ => vec![decoder],
    };
    parts
        .iter()
        .filter(|d| d.get("type").and_then(|t| t.as_str()) == Some("Metaspace"))
        .find_map(|d| d.get("replacement").and_then(|r| r.as_str()))
        .and_then(|r| r.chars().next())
        .unwrap_or('\u{2581}')
}

/// Classifies a `tokenizer.json` `decoder` section (see [`DecodeScheme`]).
///
/// Byte-level: `ByteLevel`, alone or as the only kind in a `Sequence`. SentencePiece:
/// `Metaspace`, or a `Sequence` of `Replace("▁" → " ")`, `ByteFallback`, `Fuse`,
/// `Strip(" ", start, stop = 0)` and `Metaspace` holding a `Replace("▁" → " ")` or a
/// `Metaspace`. Anything else is opaque.
pub fn decode_scheme(decoder: &serde_json::Value) -> DecodeScheme {
    let kind = |d: &serde_json::Value| d.get("type").and_then(|t| t.as_str()).map(str::to_owned);
    let parts: Vec<&serde_json::Value> = match kind(decoder).as_deref() {
        Some("Sequence") => match decoder.get("decoders") {
            Some(serde_json::Value::Array(items)) if !items.is_empty() => items.iter().collect(),
            _ => return DecodeScheme::Opaque,
        },
        Some(_) => vec![decoder],
        None => return DecodeScheme::Opaque,
    };
    if parts
        .iter()
        .all(|d| kind(d).as_deref() == Some("ByteLevel"))
    {
        return DecodeScheme::ByteLevel;
    }
    let space_replace = |d: &serde_json::Value| {
        kind(d).as_deref() == Some("Replace")
            && d.pointer("/pattern/String").and_then(|p| p.as_str()) == Some("\u{2581}")
            && d.get("content").and_then(|c| c.as_str()) == Some(" ")
    };
    let mut marks_spaces = false;
    for d in &parts {
        match kind(d).as_deref() {
            Some("Metaspace") => marks_spaces = true,
            Some("Replace") if space_replace(d) => marks_spaces = true,
            Some("ByteFallback") | Some("Fuse") => {}
            Some("Strip")
                if d.get("content").and_then(|c| c.as_str()) == Some(" ")
                    && d.get("stop").and_then(|s| s.as_u64()) == Some(0) => {}
            _ => return DecodeScheme::Opaque,
        }
    }
    if marks_spaces {
        DecodeScheme::SentencePiece
    } else {
        DecodeScheme::Opaque
    }
}

/// A tokenized transcript with its training loss mask (an SFT demonstration): what crosses
/// from `datasets` (which builds it) to `trainer` (which trains on it).
///
/// # Shapes
/// `tokens: [len]`, `loss_mask: [len]` (aligned: `loss_mask[t]` says whether `tokens[t]` is a
/// training target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `<bos>` (where the tokenizer adds one), prompt, then actions each closed by `<eos>` and
    /// followed by their observation (except the last).
    pub tokens: Vec<u32>,
    /// True exactly on action tokens and their closing `<eos>`.
    pub loss_mask: Vec<bool>,
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

#[cfg(test)]
mod hf_tests {
    use super::*;
    use crate::hf::fixture::{byte_level_bpe_json, sentencepiece_json};
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use std::path::Path;

    fn byte_level() -> HfTokenizer {
        let (json, special) = byte_level_bpe_json();
        HfTokenizer::from_json(&json, special, Path::new("byte-level.json")).unwrap()
    }

    fn sentencepiece() -> HfTokenizer {
        let (json, special) = sentencepiece_json();
        HfTokenizer::from_json(&json, special, Path::new("sentencepiece.json")).unwrap()
    }

    const TEXTS: [&str; 6] = [
        "search[Kelda Morr]",
        "answer[Tovin] the end\n",
        "  two leading spaces, tabs\tand\nnewlines ",
        "caf\u{e9} a\u{e9}b 5\u{20ac} \u{1F333} \u{4e2d}\u{6587}",
        "move[up] move[left]",
        "",
    ];

    #[test]
    fn gpt2_byte_alphabet() {
        let chars = byte_level_chars();
        let distinct: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(chars[b' ' as usize], '\u{120}'); // Ġ
        assert_eq!(chars[b'\n' as usize], '\u{10A}'); // Ċ
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[0xAD], '\u{143}'); // the soft hyphen is the last remapped byte
        let alphabet = byte_level_alphabet();
        for (b, c) in chars.iter().enumerate() {
            assert_eq!(alphabet[*c as usize], Some(b as u8));
        }
    }

    #[test]
    fn hf_tokenizers_round_trip_text_and_drop_specials() {
        for tok in [byte_level(), sentencepiece()] {
            for text in TEXTS {
                let ids = tok.encode(text);
                assert_eq!(tok.decode(&ids), text, "{:?}", tok.decode_scheme());
                let mut framed = vec![tok.bos()];
                framed.extend(&ids);
                framed.push(tok.eos());
                framed.push(tok.pad());
                assert_eq!(tok.decode(&framed), text);
            }
            // Ids beyond the vocabulary decode to nothing; lone bytes decode lossily.
            assert_eq!(tok.decode(&[tok.vocab_size() as u32 + 5]), "");
        }
        let bl = byte_level();
        assert!(bl.encode("search").len() < "search".len(), "merges apply");
        assert_eq!(bl.decode(&[0xC3]), "\u{FFFD}");
        let sp = sentencepiece();
        assert_eq!(sp.decode(&[3 + 0xC3]), "\u{FFFD}");
        // The text of a special token in the input becomes that token (as in Python's
        // `tokenizer(text, add_special_tokens=False)`).
        assert_eq!(bl.encode("<|end_of_text|>"), vec![bl.eos()]);
    }

    /// Cuts before tokens where `can_split_before` holds keep decoding concatenative, on random
    /// id sequences over the whole vocabulary (bytes, merges, specials, unknown ids) and on
    /// encoded text; and the rule is not vacuous either way.
    #[test]
    fn hf_cuts_at_boundaries_keep_text_concatenative() {
        for tok in [byte_level(), sentencepiece()] {
            let n = tok.vocab_size() as u32;
            let (allowed, refused) = (0..n + 2).fold((0, 0), |(a, r), t| {
                if tok.can_split_before(t) {
                    (a + 1, r)
                } else {
                    (a, r + 1)
                }
            });
            assert!(
                allowed > 50 && refused > 50,
                "{allowed} allowed, {refused} refused"
            );
            let mut rng = StdRng::seed_from_u64(7);
            let mut cases: Vec<Vec<u32>> = TEXTS.iter().map(|t| tok.encode(t)).collect();
            for _ in 0..3000 {
                let len = rng.random_range(1..12);
                cases.push((0..len).map(|_| rng.random_range(0..n + 2)).collect());
            }
            let mut checked = 0;
            for tokens in &cases {
                let whole = tok.decode(tokens);
                for cut in 1..tokens.len() {
                    if tok.can_split_before(tokens[cut]) {
                        let joined = tok.decode(&tokens[..cut]) + &tok.decode(&tokens[cut..]);
                        assert_eq!(
                            joined,
                            whole,
                            "{:?}: {tokens:?} cut at {cut}",
                            tok.decode_scheme()
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > 1000, "{checked}");
        }
    }

    #[test]
    fn boundary_rules_by_scheme() {
        let bl = byte_level();
        let id = |t: &HfTokenizer, s: &str| t.token_to_id(s).unwrap();
        assert!(bl.can_split_before(id(&bl, "search")));
        assert!(bl.can_split_before(id(&bl, "\u{120}the"))); // Ġthe
        assert!(bl.can_split_before(id(&bl, "a\u{c3}"))); // "a" + first byte of é
        assert!(!bl.can_split_before(id(&bl, "\u{a9}b"))); // second byte of é + "b"
        assert!(!bl.can_split_before(id(&bl, "\u{a9}")));
        assert!(!bl.can_split_before(bl.eos()));
        let sp = sentencepiece();
        assert!(sp.can_split_before(id(&sp, "ing")));
        assert!(sp.can_split_before(id(&sp, "x")));
        assert!(!sp.can_split_before(id(&sp, "\u{2581}search")));
        assert!(!sp.can_split_before(id(&sp, "<0x41>")));
        assert!(!sp.can_split_before(sp.bos()));
    }

    #[test]
    fn decoders_are_classified() {
        use serde_json::json;
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true});
        assert_eq!(decode_scheme(&byte_level), DecodeScheme::ByteLevel);
        let seq = json!({"type": "Sequence", "decoders": [byte_level]});
        assert_eq!(decode_scheme(&seq), DecodeScheme::ByteLevel);
        let meta =
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always"});
        assert_eq!(decode_scheme(&meta), DecodeScheme::SentencePiece);
        let strip_end = json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "Strip", "content": " ", "start": 0, "stop": 1}
        ]});
        assert_eq!(decode_scheme(&strip_end), DecodeScheme::Opaque);
        let other_replace = json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "ab"}, "content": "x"}, {"type": "Fuse"}
        ]});
        assert_eq!(decode_scheme(&other_replace), DecodeScheme::Opaque);
        assert_eq!(
            decode_scheme(&json!({"type": "WordPiece", "prefix": "##"})),
            DecodeScheme::Opaque
        );
        assert_eq!(
            decode_scheme(&serde_json::Value::Null),
            DecodeScheme::Opaque
        );
    }

    #[test]
    fn opaque_tokenizers_never_allow_a_cut() {
        // WordLevel without a decoder: tokenizers joins tokens with spaces, not concatenative.
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "<s>": 1, "hello": 2, "world": 3},
                      "unk_token": "[UNK]"}
        })
        .to_string();
        let special = SpecialTokens {
            bos: 1,
            eos: 1,
            pad: 1,
        };
        let tok = HfTokenizer::from_json(&json, special, Path::new("wordlevel.json")).unwrap();
        assert_eq!(tok.decode_scheme(), DecodeScheme::Opaque);
        assert_eq!(tok.encode("hello world"), vec![2, 3]);
        assert_eq!(tok.decode(&[2, 3]), "hello world");
        assert!((0..5).all(|t| !tok.can_split_before(t)));
        // Not a tokenizer at all.
        let err = HfTokenizer::from_json("{}", special, Path::new("x.json")).unwrap_err();
        assert!(matches!(err, crate::Error::Tokenizer { .. }), "{err}");
    }
}
